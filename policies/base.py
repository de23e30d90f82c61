"""The policy interface the runtime needs, the policy registry, and Hugging Face-layout save/load.

A policy is an `nn.Module` with two methods (../shared/DESIGN.md, "Policies"):
- `predict(obs, mode)` -> `PolicyOutput`: actions [N, C, A] in env units, log-probs, values and
  `forward_inputs` (everything `evaluate` needs to recompute log-probs without repeating preprocessing);
- `evaluate(forward_inputs)` -> `EvaluateOutput`: log-probs, entropy and values under the current weights.

Log-probs and entropy are per token: [N, C, A] for continuous or binned actions (one entry per action
dimension of each chunk step). `algorithms` reduces them to per action or per chunk as configured. Values
are [N] (per chunk) or [N, C] (per step).

Weights are saved as a Hugging Face layout: `config.json` (the policy config) + `model.safetensors`.
"""

from __future__ import annotations

import abc
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from algorithms.registry import Registry
from algorithms.schema import Config, param
from envs.base import EnvSpec, Obs

Mode = Literal["train", "eval"]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


@dataclass(frozen=True)
class PolicyConfig(Config):
    """Fields every policy has; each policy extends this with its own."""

    name: str = param(help="registered policy name, e.g. mlp, cnn, openvla, openvla_oft, pi0")
    pretrained: str | None = param(None, help="directory with config.json + model.safetensors to load")

    @classmethod
    def subclass_for(cls, name: str) -> type[Config]:
        return policy_registry.get(name).config_class


@dataclass
class PolicyOutput:
    """What `predict` returns; every tensor is batch-first over the N envs."""

    actions: torch.Tensor  # [N, C, A] float32, env units
    logprobs: torch.Tensor  # [N, C, A] per token
    values: torch.Tensor | None  # [N] or [N, C]; None for critic-free policies
    forward_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    # bool, logprobs' shape: the entries that are real (a causal LM's response tokens up to EOS); None: all
    logprob_mask: torch.Tensor | None = None


@dataclass
class EvaluateOutput:
    """What `evaluate` returns for a batch of stored `forward_inputs`."""

    logprobs: torch.Tensor  # [B, C, A]
    entropy: torch.Tensor  # [B, C, A]
    values: torch.Tensor | None  # [B] or [B, C]


class Policy(nn.Module, abc.ABC):
    """Base class of every registered policy."""

    config_class: ClassVar[type[PolicyConfig]]

    def __init__(self, config: PolicyConfig, env_spec: EnvSpec) -> None:
        super().__init__()
        self.config = config
        self.env_spec = env_spec

    @abc.abstractmethod
    def predict(self, obs: Obs, mode: Mode = "train") -> PolicyOutput:
        """Actions for the observation batch; `eval` mode is deterministic."""

    @abc.abstractmethod
    def evaluate(self, forward_inputs: dict[str, torch.Tensor]) -> EvaluateOutput:
        """Log-probs, entropy and values of the stored actions under the current weights."""

    # -- supervised fine-tuning (policies/supervised.py) -------------------------------------------------------
    @property
    def action_horizon(self) -> int:
        """C: the consecutive demo actions one supervised sample trains on (the chunk the policy predicts)."""
        raise NotImplementedError(f"policy {type(self).__name__} does not define a supervised action horizon")

    def supervised_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        """The policy's own supervised loss on a demo batch (observations + `actions` [B, C, A] in env units +
        `action_mask` [B, C]; see policies/supervised.py) and metrics to log. Processing and action
        normalisation are those of `predict`, so what is learnt is what the policy does at rollout."""
        raise NotImplementedError(
            f"policy {type(self).__name__} has no supervised loss; supervised fine-tuning supports mlp, cnn, "
            "openvla, openvla_oft and pi0"
        )

    def fit_state_normalization(self, states: torch.Tensor) -> bool:
        """Supervised fine-tuning hands the states of its training frames [N, D] to the policy before the first
        step: a policy that standardises its inputs takes their statistics (kept in its weights) and returns
        True; by default nothing happens (False)."""
        return False

    @classmethod
    def from_config(cls, config: PolicyConfig, env_spec: EnvSpec) -> Policy:
        """Build the policy; load `config.pretrained` when set. VLA policies override this to read the
        released checkpoint layouts."""
        policy = cls(config, env_spec)
        if config.pretrained:
            policy.load_weights(config.pretrained)
        return policy

    def trainable_parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by optimizer group: "value" (the value head) and "policy" (everything else trainable)."""
        value, policy = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (value if name.startswith("value_head.") else policy).append(p)
        return {"policy": policy, "value": value}

    def fsdp_units(self) -> list[nn.Module]:
        """Submodules that FSDP2 shards as units of their own (e.g. each transformer layer), so that only one
        unit's full weights are gathered at a time; the policy itself is always the outer unit."""
        return []

    # -- Hugging Face layout --------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write config.json and model.safetensors, atomically (a crash leaves the old files intact)."""
        write_pretrained(directory, self.config, self.env_spec, self.state_dict())

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load model.safetensors strictly; a mismatch names the first offending parameter."""
        from safetensors.torch import load_file

        path = Path(directory) / WEIGHTS_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {WEIGHTS_NAME} in {directory}: not a checkpoint directory of this suite"
            )
        load_state_dict_strict(self, load_file(str(path)), source=str(path))


def load_state_dict_strict(
    module: nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """`module.load_state_dict(state)` with errors that name the first mismatching parameter and its shapes.

    `assign=True` makes the module take the checkpoint's tensors (needed when it was built on the meta device).
    """
    own = module.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise ValueError(
                f"{source}: parameter {name!r} is not in the model; the checkpoint was made for a "
                "different policy config"
            )
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise ValueError(
                f"{source}: parameter {name!r} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the model; the policy config does not match the checkpoint"
            )
    missing = [k for k in own if k not in state]
    if missing:
        raise ValueError(
            f"{source}: the checkpoint lacks parameter {missing[0]!r} ({len(missing)} missing in all); "
            "the policy config does not match the checkpoint"
        )
    module.load_state_dict(state, strict=True, assign=assign)


def write_pretrained(
    directory: str | os.PathLike, config: PolicyConfig, env_spec: EnvSpec, state: dict[str, torch.Tensor]
) -> None:
    """The layout of `Policy.save_pretrained` from a config and a full state dict (e.g. gathered from FSDP
    shards, where no unsharded module exists to call `save_pretrained` on)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"policy": config.to_dict(), "env_spec": _spec_to_dict(env_spec)}
    state = _unshared({k: v.detach().cpu().contiguous() for k, v in state.items()})
    _atomic_write(directory / WEIGHTS_NAME, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME, lambda p: p.write_text(json.dumps(meta, indent=2)))


def _unshared(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` with a copy of every tensor whose memory an earlier one already uses (tied weights, e.g. a
    language model's input and output embeddings): safetensors refuses to save shared memory."""
    seen: set[int] = set()
    out = {}
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if storage in seen and tensor.numel() else tensor
        seen.add(storage)
    return out


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _spec_to_dict(spec: EnvSpec) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(spec)


def read_saved_config(directory: str | os.PathLike) -> tuple[dict[str, Any], EnvSpec]:
    """The policy config dict and env spec stored by `save_pretrained`."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}: not a checkpoint directory of this suite")
    meta = json.loads(path.read_text())
    spec = meta["env_spec"]
    for key in ("action_low", "action_high"):
        spec[key] = tuple(spec[key])
    if spec.get("image_size") is not None:
        spec["image_size"] = tuple(spec["image_size"])
    return meta["policy"], EnvSpec(**spec)


SUPERVISED_KEY = "supervised"


def record_supervised(directory: str | os.PathLike, record: dict[str, Any]) -> None:
    """Note in a policy folder's config.json that supervised fine-tuning wrote it (the demos, the steps, and the
    modules its loss never trained, e.g. the value head), for whoever loads it next (an RL run)."""
    path = Path(directory) / CONFIG_NAME
    meta = json.loads(path.read_text())
    meta[SUPERVISED_KEY] = record
    _atomic_write(path, lambda p: p.write_text(json.dumps(meta, indent=2)))


def supervised_record(directory: str | os.PathLike) -> dict[str, Any] | None:
    """What `record_supervised` noted in a policy folder, or None (not written by supervised fine-tuning)."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(SUPERVISED_KEY)


def supervised_note(directory: str | os.PathLike) -> str | None:
    """One line for a run that starts from `directory`: what supervised fine-tuning trained there and which
    modules start untrained (as initialised: the value head, ...), or None for other checkpoints."""
    record = supervised_record(directory)
    if record is None:
        return None
    untrained = ", ".join(record.get("untrained") or []) or "none"
    return (
        f"note: policy.pretrained={directory} comes from supervised fine-tuning ({record.get('steps')} steps on "
        f"{record.get('demos')}); modules its loss did not train start untrained here: {untrained}"
    )


policy_registry: Registry[type[Policy]] = Registry(
    "policy", hint="VLA policies need an extra: pip install -e .[vla]"
)


def register_policy(name: str):
    """Class decorator: register a `Policy` subclass (with its `config_class`) under `name`."""

    def decorator(cls: type[Policy]) -> type[Policy]:
        if not getattr(cls, "config_class", None):
            raise TypeError(f"policy {cls.__name__} must set config_class")
        return policy_registry.register(name)(cls)

    return decorator


def make_policy(config: PolicyConfig, env_spec: EnvSpec) -> Policy:
    """Build the registered policy a config names, loading `config.pretrained` when set."""
    return policy_registry.get(config.name).from_config(config, env_spec)
