"""The math env backend: each episode is one prompt, its one step is the policy's whole response.

Actions are the response's token ids, [M, L] per step ([N, 1, L] chunks through `VectorEnv.chunk_step`), in any
numeric dtype, with -1 after the response's end (token ids up to 2**24 are exact in float32). The env decodes
them with the tokenizer `env.tokenizer` names and checks the answer (`algorithms.math_reward`).

Initial-state ids are indices into the data file, so a GRPO group (`group_size` consecutive envs) shares one
prompt, and a fixed evaluation list is `initial_state_ids=range(N)`. Observations: `task_descriptions` (the
prompts, after `prompt_template`) and an empty `states` [M, 0].

Per step: reward 1.0 for a correct answer, else 0.0; the episode terminates; `success` = correct.
"""

from __future__ import annotations

import numpy as np
import torch

from algorithms.math_reward import AnswerChecker
from envs.base import EnvBatch, EnvSpec, Obs, register_env
from envs.math.config import MathEnvConfig
from envs.math.dataset import MathProblem, load_problems

PAD_ACTION = -1


def math_env_spec(num_problems: int, max_response_tokens: int, vocab_size: int) -> EnvSpec:
    """The spec of a math env: actions are L token ids in [-1, vocab_size - 1]; one step per episode."""
    return EnvSpec(
        action_dim=max_response_tokens,
        action_low=(float(PAD_ACTION),) * max_response_tokens,
        action_high=(float(vocab_size - 1),) * max_response_tokens,
        state_dim=0,
        image_size=None,
        has_wrist_image=False,
        max_episode_steps=1,
        num_initial_states=num_problems,
    )


def load_tokenizer(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


class MathBatch(EnvBatch):
    """M prompt slots; `reset_envs` puts problems in them, `step` grades one response per slot."""

    def __init__(self, config: MathEnvConfig, env_ids: list[int]) -> None:
        self.config = config
        self.num_envs = len(env_ids)
        self.problems: list[MathProblem] = load_problems(
            config.resolved_data_file(), config.prompt_key, config.answer_key
        )
        self.tokenizer = load_tokenizer(config.resolved_tokenizer())
        self.checker = AnswerChecker(config.reward_timeout_s, config.max_response_chars)
        self.current = np.zeros(self.num_envs, np.int64)
        self.last_responses: list[str] = [""] * self.num_envs
        self.spec = math_env_spec(len(self.problems), config.max_response_tokens, len(self.tokenizer))

    def prompt(self, problem_index: int) -> str:
        return self.config.prompt_template.replace("{prompt}", self.problems[problem_index].prompt)

    def _obs(self) -> Obs:
        return {
            "states": torch.zeros(self.num_envs, 0),
            "task_descriptions": [self.prompt(i) for i in self.current],
        }

    def reset_envs(self, env_ids: np.ndarray, initial_state_ids: np.ndarray) -> Obs:
        self.current[env_ids] = initial_state_ids
        return self._obs()

    def decode(self, actions: torch.Tensor) -> list[str]:
        """Response texts of token-id actions [M, L]: each row up to its first -1 or EOS, special tokens skipped."""
        ids = torch.as_tensor(actions).detach().cpu().round().long()
        eos = self.tokenizer.eos_token_id
        ended = (ids <= PAD_ACTION) | (
            ids == eos if eos is not None else torch.zeros_like(ids, dtype=torch.bool)
        )
        lengths = torch.where(ended.any(1), ended.int().argmax(1), ids.shape[1])
        rows = [row[:n].tolist() for row, n in zip(ids, lengths.tolist())]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True)

    def step(
        self, actions: torch.Tensor, active: np.ndarray
    ) -> tuple[Obs, np.ndarray, np.ndarray, np.ndarray]:
        rows = np.flatnonzero(active)
        texts = self.decode(torch.as_tensor(actions)[torch.as_tensor(rows)])
        golds = [self.problems[self.current[i]].answer for i in rows]
        correct = np.zeros(self.num_envs, bool)
        correct[rows] = self.checker.check(texts, golds)
        for i, text in zip(rows, texts):
            self.last_responses[i] = text
        return self._obs(), correct.astype(np.float32), np.ones(self.num_envs, bool), correct

    def close(self) -> None:
        self.checker.close()


register_env("math", MathEnvConfig, processes=False)(MathBatch)
