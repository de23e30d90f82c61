"""Reading pi0 and pi0.5 checkpoints: this suite's own, LeRobot's released PI0/PI05 layouts and openpi's PyTorch
conversion. Each holds one variant, "pi0" or "pi05" (the `policy.name` it needs):

- suite:   config.json {"policy": {...}, "env_spec": {...}} + model.safetensors of the whole policy (heads too).
- lerobot: config.json is LeRobot's PI0Config or PI05Config ("type": "pi0" / "pi05", Gemma variant names,
           chunk_size, normalization_mapping, ...); model.safetensors names start with
           `model.paligemma_with_expert.*`, `model.state_proj` (pi0) or `model.time_mlp_in` (pi0.5), ...
           Older releases (transformers 4.4x) name `paligemma.language_model.model.*` and
           `paligemma.vision_tower.*`; both are read.
- openpi:  config.json {"action_dim", "action_horizon", "paligemma_variant", "action_expert_variant", ...}
           (openpi's convert_jax_model_to_pytorch.py; it does not say which variant: pi0.5 is told by its
           `time_mlp_in` weights); names without the leading `model.`.

A `tiny_overrides.json` next to config.json (test fixtures; also written by `convert_jax` for non-standard
sizes) replaces the sizes of the named variants. The language-model head (`lm_head`, a copy of the token
embedding) and the expert's unused head are not part of this model; an embedding stored only as `lm_head`
(tied weights saved once) is read from there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from policies.base import load_state_dict_strict
from policies.pi0.configuration_pi0 import (
    ARCHITECTURE_FIELDS,
    GEMMA_VARIANTS,
    PALIGEMMA_VOCAB_SIZE,
    SIGLIP_SO400M_224,
    GemmaSize,
    Pi0Config,
    SiglipSize,
)

CONFIG_NAME, WEIGHTS_NAME, OVERRIDES_NAME = "config.json", "model.safetensors", "tiny_overrides.json"
CheckpointKind = Literal["suite", "lerobot", "openpi"]
VARIANTS = ("pi0", "pi05")  # LeRobot's config "type" = this suite's policy name
# prompt tokens of the released models (openpi's max_token_len): the pi0.5 prompt also holds the state
RELEASED_PROMPT_LENGTH = {"pi0": 48, "pi05": 200}
# LeRobot's normalization_mapping modes -> policy.normalization
NORMALIZATION_MODES = {"MEAN_STD": "mean_std", "QUANTILES": "quantile"}

_PG = "paligemma_with_expert.paligemma."
# Older transformers (4.4x) PaliGemma layout -> the current one.
_RENAMES = (
    (_PG + "language_model.model.", _PG + "model.language_model."),
    (_PG + "language_model.lm_head.", _PG + "lm_head."),
    (_PG + "vision_tower.", _PG + "model.vision_tower."),
    (_PG + "multi_modal_projector.", _PG + "model.multi_modal_projector."),
)
_EMBED = _PG + "model.language_model.embed_tokens.weight"
_LM_HEAD = _PG + "lm_head.weight"
_UNUSED = (
    _LM_HEAD,
    "paligemma_with_expert.gemma_expert.lm_head.weight",
    "paligemma_with_expert.gemma_expert.model.embed_tokens.weight",
)


@dataclass(frozen=True)
class CheckpointInfo:
    kind: CheckpointKind
    variant: str  # "pi0" or "pi05"
    architecture: dict[
        str, Any
    ]  # config fields (ARCHITECTURE_FIELDS, tokenizer_max_length, maybe normalization)


def read_checkpoint_info(directory: str | Path, expected: str = "pi0") -> CheckpointInfo:
    """Which layout and variant `directory` holds and the architecture its config describes; a checkpoint of the
    other variant than `expected` (the policy name being built) is refused with the name to use."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file() or not (directory / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(
            f"{directory} lacks {CONFIG_NAME} or {WEIGHTS_NAME}; policy.pretrained must point at a {expected} "
            "checkpoint folder (LeRobot's or openpi's PyTorch release, or one saved by this suite)"
        )
    cfg = json.loads(path.read_text())
    overrides = (
        json.loads((directory / OVERRIDES_NAME).read_text()) if (directory / OVERRIDES_NAME).is_file() else {}
    )
    if "policy" in cfg and "env_spec" in cfg:
        info = _suite_info(cfg["policy"], path)
    elif cfg.get("type") in VARIANTS:
        info = CheckpointInfo("lerobot", cfg["type"], _lerobot_architecture(cfg, overrides, path))
    elif "paligemma_variant" in cfg and "action_horizon" in cfg:
        variant = "pi05" if _has_time_mlp(directory / WEIGHTS_NAME) else "pi0"
        info = CheckpointInfo("openpi", variant, _openpi_architecture(cfg, overrides, variant, path))
    else:
        kind = cfg.get("type", "unknown")
        raise ValueError(
            f"{path} is not a pi0 or pi0.5 config (type {kind!r}); expected LeRobot's PI0Config / PI05Config, "
            "openpi's converted config or this suite's saved policy config. pi0-FAST checkpoints are not supported"
        )
    if info.variant != expected:
        raise ValueError(
            f"{directory} holds a {info.variant} checkpoint ({info.kind} layout) but policy.name={expected}; "
            f"set policy.name={info.variant}"
        )
    return info


def _suite_info(saved: dict[str, Any], path: Path) -> CheckpointInfo:
    from policies.base import policy_registry

    name = saved.get("name")
    if name not in VARIANTS:
        raise ValueError(f"{path} holds a {name!r} policy, not pi0 or pi05")
    config = policy_registry.get(name).config_class.from_dict(saved, path="policy")
    arch = {k: getattr(config, k) for k in (*ARCHITECTURE_FIELDS, "tokenizer_max_length")}
    return CheckpointInfo("suite", name, arch)


def _has_time_mlp(weights: Path) -> bool:
    """pi0.5's weights have `time_mlp_in` (adaRMS conditioning) where pi0's have `action_time_mlp_in`."""
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        return any(k.removeprefix("model.").startswith("time_mlp_in.") for k in f.keys())


def _gemma(role: str, variant: str, overrides: dict[str, Any], path: Path) -> GemmaSize:
    key = f"{role}_{variant}"
    if key in overrides:
        return GemmaSize.from_dict(overrides[key], path=f"{OVERRIDES_NAME}:{key}")
    if variant not in GEMMA_VARIANTS:
        raise ValueError(f"{path}: unknown {role} {variant!r}; known: {', '.join(GEMMA_VARIANTS)}")
    return GEMMA_VARIANTS[variant]


def _vision(overrides: dict[str, Any], image_size: int) -> SiglipSize:
    if "siglip" not in overrides:
        return SIGLIP_SO400M_224.replace(image_size=image_size)
    s = overrides["siglip"]
    return SiglipSize(
        hidden_size=s["hidden_size"],
        num_layers=s["num_hidden_layers"],
        num_heads=s["num_attention_heads"],
        intermediate_size=s["intermediate_size"],
        patch_size=s["patch_size"],
        image_size=overrides.get("siglip_image_size", image_size),
    )


def _common(
    vlm: GemmaSize, expert: GemmaSize, overrides: dict[str, Any], image_size: int, path: Path
) -> dict:
    vision = _vision(overrides, image_size)
    projection = overrides.get("siglip_projection_dim", vlm.width)
    if projection != vlm.width:
        raise ValueError(f"{path}: siglip_projection_dim={projection} must equal the VLM width {vlm.width}")
    vocab = overrides.get("vocab_size", PALIGEMMA_VOCAB_SIZE)
    return {"vlm": vlm, "expert": expert, "vision": vision, "vocab_size": vocab}


def _lerobot_architecture(cfg: dict[str, Any], overrides: dict[str, Any], path: Path) -> dict[str, Any]:
    """The architecture, and the normalisation its processors apply to states and actions."""
    resolution = cfg.get("image_resolution", [224, 224])
    if resolution[0] != resolution[1]:
        raise ValueError(
            f"{path}: image_resolution={resolution} is not square; SigLIP here takes square images"
        )
    vlm = _gemma("paligemma_variant", cfg["paligemma_variant"], overrides, path)
    expert = _gemma("action_expert_variant", cfg["action_expert_variant"], overrides, path)
    arch = {
        **_common(vlm, expert, overrides, resolution[0], path),
        "chunk_size": cfg["chunk_size"],
        "max_state_dim": cfg["max_state_dim"],
        "max_action_dim": cfg["max_action_dim"],
        "min_period": cfg.get("min_period", 4e-3),
        "max_period": cfg.get("max_period", 4.0),
        "tokenizer_max_length": cfg.get("tokenizer_max_length", RELEASED_PROMPT_LENGTH[cfg["type"]]),
    }
    mapping = cfg.get("normalization_mapping", {})
    modes = {NORMALIZATION_MODES.get(mapping[k], mapping[k]) for k in ("STATE", "ACTION") if k in mapping}
    if len(modes) > 1 or not modes <= set(NORMALIZATION_MODES.values()):
        raise ValueError(
            f"{path}: normalization_mapping {mapping} is not supported; states and actions must both use "
            f"one of {sorted(NORMALIZATION_MODES)}"
        )
    if modes:
        arch["normalization"] = modes.pop()
    return arch


def _openpi_architecture(
    cfg: dict[str, Any], overrides: dict[str, Any], variant: str, path: Path
) -> dict[str, Any]:
    vlm = _gemma("paligemma_variant", cfg["paligemma_variant"], overrides, path)
    expert = _gemma("action_expert_variant", cfg["action_expert_variant"], overrides, path)
    return {
        **_common(vlm, expert, overrides, 224, path),
        "chunk_size": cfg["action_horizon"],
        "max_state_dim": cfg["action_dim"],
        "max_action_dim": cfg["action_dim"],
        "min_period": 4e-3,
        "max_period": 4.0,
        "tokenizer_max_length": cfg.get("max_token_len", RELEASED_PROMPT_LENGTH[variant]),
    }


def canonical_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A released state dict under the names of `Pi0FlowModel` / `Pi05FlowModel` (no `model.` prefix, current
    layout, no language-model heads)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = key[len("model.") :] if key.startswith("model.") else key
        for old, new in _RENAMES:
            if name.startswith(old):
                name = new + name[len(old) :]
                break
        out[name] = value
    if _EMBED not in out and _LM_HEAD in out:
        out[_EMBED] = out[_LM_HEAD]
    return {k: v for k, v in out.items() if k not in _UNUSED}


def load_released_weights(model: torch.nn.Module, directory: str | Path) -> None:
    """Load a LeRobot/openpi model.safetensors into a flow model, strictly (names and shapes)."""
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_NAME
    load_state_dict_strict(model, canonical_state_dict(load_file(str(path))), source=str(path))


def check_released_shapes(
    config: Pi0Config, directory: str | Path, model_class: type[torch.nn.Module] | None = None
) -> None:
    """Compare the checkpoint's names and shapes with the model `config` describes (`model_class`, pi0's by
    default), before building it (on the meta device, so a mismatch with a multi-GB model fails at once and
    allocates nothing)."""
    from safetensors import safe_open

    from policies.pi0.modeling_pi0 import Pi0FlowModel

    path = Path(directory) / WEIGHTS_NAME
    with safe_open(str(path), framework="pt") as f:
        state = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    with torch.device("meta"):
        model = (model_class or Pi0FlowModel)(config)
    load_state_dict_strict(model, canonical_state_dict(state), source=str(path))
