"""LLM reasoning as an env type (`env.name: math`): prompts from a local file, answers graded by a verifiable
reward (`algorithms.math_reward`). See docs/llm.md."""

from envs.math.config import MathEnvConfig
from envs.math.dataset import MathProblem, load_problems
from envs.math.env import PAD_ACTION, MathBatch, math_env_spec

__all__ = ["PAD_ACTION", "MathBatch", "MathEnvConfig", "MathProblem", "load_problems", "math_env_spec"]
