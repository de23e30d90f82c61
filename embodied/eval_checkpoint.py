"""What `ckpt=` names for an evaluation, and whether its weights fit the policy config, checked before any
simulator or worker starts.

`ckpt=` accepts:
    a training checkpoint   runs/<name>/<time>/checkpoints/iter_N    (its policy/ folder is evaluated)
    a training run folder   runs/<name>/<time>  (or its checkpoints/)  (its newest complete checkpoint)
    a policy folder         config.json + model.safetensors (the Hugging Face layout every policy saves)
    latest                  the newest checkpoint of the runs of run.name (<output_dir>/<run.name>/*)
    none                    a freshly initialised policy (smoke tests of the evaluation itself)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from algorithms.schema import ConfigError
from embodied.checkpoint import (
    CONFIG_FILE,
    CheckpointError,
    find_resume,
    is_complete,
    latest_checkpoint,
    read_counters,
)
from envs.base import EnvSpec
from policies.base import CONFIG_NAME, WEIGHTS_NAME, PolicyConfig, make_policy, read_saved_config

ACCEPTED = (
    "a training checkpoint (runs/<name>/<time>/checkpoints/iter_N), a run folder, a policy folder with "
    f"{CONFIG_NAME} + {WEIGHTS_NAME}, `latest` (the newest checkpoint of run.name) or `none` (a fresh policy)"
)


@dataclass(frozen=True)
class PolicySource:
    """Where the evaluated weights come from."""

    policy_dir: Path | None  # config.json + model.safetensors; None: a freshly initialised policy
    checkpoint: Path | None  # the training checkpoint folder holding policy_dir, if any
    env_steps: int  # the training env steps of the checkpoint (the step the eval metrics are logged at)

    @property
    def config_file(self) -> Path | None:
        """The training run's resolved config (stored in every checkpoint), if there is one."""
        return self.checkpoint / CONFIG_FILE if self.checkpoint is not None else None

    def describe(self) -> str:
        if self.policy_dir is None:
            return "none (a freshly initialised policy)"
        return str(self.checkpoint if self.checkpoint is not None else self.policy_dir)


def resolve_checkpoint(ckpt: str, runs_of_name: Path | None) -> PolicySource:
    """The `PolicySource` that `ckpt` names (see the module docstring), or a CheckpointError saying why not.
    `runs_of_name` (<output_dir>/<run.name>) is where `latest` looks."""
    if ckpt == "none":
        return PolicySource(None, None, 0)
    if ckpt == "latest":
        if runs_of_name is None:
            raise CheckpointError("ckpt=latest needs a CONFIG (its run.name says which runs to look in)")
        found = find_resume("auto", runs_of_name)
        if found is None:
            raise CheckpointError(f"ckpt=latest: no complete checkpoint in the runs under {runs_of_name}")
        return _from_checkpoint(found[1])
    path = Path(ckpt).expanduser().resolve()
    if not path.exists():
        raise CheckpointError(f"ckpt={ckpt}: {path} does not exist. Give {ACCEPTED}.")
    if _is_policy_folder(path):
        parent = path.parent
        return _from_checkpoint(parent) if is_complete(parent) else PolicySource(path, None, 0)
    if is_complete(path):
        return _from_checkpoint(path)
    run_dir = path.parent if path.name == "checkpoints" else path
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise CheckpointError(
            f"ckpt={ckpt}: {path} holds no policy weights ({CONFIG_NAME} + {WEIGHTS_NAME}) and no complete "
            f"checkpoint (checkpoints/iter_N/ with state.json). Give {ACCEPTED}."
        )
    return _from_checkpoint(checkpoint)


def _is_policy_folder(path: Path) -> bool:
    return (path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()


def _from_checkpoint(checkpoint: Path) -> PolicySource:
    policy_dir = checkpoint / "policy"
    if not _is_policy_folder(policy_dir):
        raise CheckpointError(
            f"checkpoint {checkpoint} has no policy/{CONFIG_NAME} + policy/{WEIGHTS_NAME}: it was not written by "
            "this suite's training, or is damaged"
        )
    return PolicySource(policy_dir, checkpoint, int(read_counters(checkpoint).get("env_steps", 0)))


EVAL_ADVICE = "evaluate with the config the checkpoint was trained with (omit CONFIG to use the checkpoint's config.yaml)"


def check_policy_matches(
    policy_dir: Path, config: PolicyConfig, advice: str = EVAL_ADVICE
) -> tuple[EnvSpec, list[str]]:
    """Raise CheckpointError unless the weights in `policy_dir` load into the policy `config` describes (same
    policy type, same parameter names and shapes); the policy is built on the meta device, so nothing is
    allocated. Returns the env spec the checkpoint was made for and the config keys that differ without
    changing the weights (e.g. a sampling temperature), as `key: checkpoint value -> config value` lines.
    `advice` ends the error message: what the user should do."""
    saved_dict, spec = read_saved_config(policy_dir)
    if saved_dict.get("name") != config.name:
        raise CheckpointError(
            f"{policy_dir} holds a {saved_dict.get('name')!r} policy but the config's policy is {config.name!r}: "
            f"{advice} or choose policy={saved_dict.get('name')}"
        )
    try:
        saved = type(config).from_dict(saved_dict, path="policy")
    except ConfigError as exc:
        raise CheckpointError(
            f"{policy_dir / CONFIG_NAME} does not describe a policy of this version: {exc}"
        ) from None
    differing = [
        f"policy.{k}: {v!r} -> {config.to_dict()[k]!r}"
        for k, v in saved.to_dict().items()
        if k != "pretrained" and config.to_dict().get(k) != v
    ]
    expected = parameter_shapes(config, spec)
    if expected is None:  # the policy cannot be built without memory: the rollout workers' strict load checks
        return spec, differing
    stored = _stored_shapes(policy_dir / WEIGHTS_NAME)
    problems = [f"{k}: missing in the checkpoint" for k in expected if k not in stored]
    problems += [f"{k}: in the checkpoint but not in the policy" for k in stored if k not in expected]
    problems += [
        f"{k}: shape {stored[k]} in the checkpoint, {expected[k]} in the policy"
        for k in expected
        if k in stored and stored[k] != expected[k]
    ]
    if problems:
        hint = "; the config differs from the checkpoint's in " + ", ".join(differing) if differing else ""
        raise CheckpointError(
            f"the weights in {policy_dir} do not fit the policy config ({len(problems)} parameter(s), e.g. "
            f"{'; '.join(problems[:3])}){hint}. {advice[0].upper()}{advice[1:]} or set the differing policy keys."
        )
    return spec, differing


def parameter_shapes(config: PolicyConfig, spec: EnvSpec) -> dict[str, tuple[int, ...]] | None:
    """Parameter names and shapes of the policy, built on the meta device; None for policies whose
    construction needs real tensors (e.g. pi0 reads values while it initialises)."""
    import torch

    try:
        with torch.device("meta"):
            policy = make_policy(config.replace(pretrained=None), spec)
    except (RuntimeError, NotImplementedError):
        return None
    return {k: tuple(v.shape) for k, v in policy.state_dict().items()}


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
