"""One vectorised env API with ManiSkill3, LIBERO, built-in toy envs and the LLM-math env behind it."""

from envs.base import (
    EnvBatch,
    EnvConfig,
    EnvSpec,
    EpisodeVectorEnv,
    Obs,
    VectorEnv,
    env_registry,
    make_env,
    register_env,
)

# Env types register when their module is imported; announcing them here keeps `import envs` light.
env_registry.register_lazy("maniskill", "envs.maniskill", extra="maniskill")
env_registry.register_lazy("libero", "envs.libero", extra="libero")
env_registry.register_lazy("colour_targets", "envs.colour_targets")
env_registry.register_lazy("math", "envs.math", extra="llm")

__all__ = [
    "EnvBatch",
    "EnvConfig",
    "EnvSpec",
    "EpisodeVectorEnv",
    "Obs",
    "VectorEnv",
    "env_registry",
    "make_env",
    "register_env",
]
