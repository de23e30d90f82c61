"""LoRA adapters (through peft) and gradient checkpointing, shared by the VLA policies.

`apply_lora(model, config)` injects LoRA layers into the model in place (peft's `inject_adapter_in_model`, so
the policy stays the same `nn.Module` with its `predict`/`evaluate`), then freezes every parameter except the
LoRA matrices and the modules named in `config.always_train` (the value head by default: it is new and must
always learn). Parameter names change where LoRA sits (`q_proj.weight` -> `q_proj.base_layer.weight` plus
`q_proj.lora_A.default.weight`, ...); `merged_state_dict` gives the plain names back with the adapters folded
in, which is what checkpoints in the released layout and weight sync to a rollout model without LoRA need.

`set_gradient_checkpointing(model, enabled)` switches activation checkpointing on every Hugging Face model
inside `model` and on every module of this suite that has a `gradient_checkpointing` attribute.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from algorithms.schema import Config, ConfigError, param

ADAPTER = "default"
ALL_LINEAR = "all-linear"
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoraConfig(Config):
    """LoRA settings of a policy (`policy.lora`); rank 0 trains all weights instead."""

    rank: int = param(0, help="LoRA rank; 0: no LoRA, every weight trains", ge=0)
    alpha: float = param(32.0, help="LoRA scaling numerator: updates are scaled by alpha / rank", gt=0)
    dropout: float = param(0.0, help="dropout on the LoRA input", ge=0.0, lt=1.0)
    target_modules: list[str] = param(
        factory=lambda: list(LLAMA_LINEAR),
        help="module name suffixes that get adapters, or ['all-linear'] for every nn.Linear but the heads",
    )
    always_train: list[str] = param(
        factory=lambda: ["value_head"],
        help="name prefixes of modules that train fully next to LoRA (the value head always does)",
    )

    def check(self) -> None:
        if not self.target_modules:
            raise ConfigError(
                "{section}target_modules is empty; name module suffixes such as q_proj, or all-linear"
            )
        if ALL_LINEAR in self.target_modules and len(self.target_modules) > 1:
            raise ConfigError(f"{{section}}target_modules={self.target_modules}: '{ALL_LINEAR}' stands alone")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


# Output heads never get adapters under all-linear: they are trained fully or not at all.
_HEAD_NAMES = ("lm_head", "value_head")


def _linear_targets(model: nn.Module, config: LoraConfig) -> list[str]:
    """Full names of the nn.Linear modules that get adapters."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear):
            continue
        parts = name.split(".")
        if ALL_LINEAR in config.target_modules:
            hit = not any(h in parts for h in _HEAD_NAMES) and not _always_trains(name, config)
        else:
            hit = any(name == t or name.endswith("." + t) for t in config.target_modules)
        if hit:
            names.append(name)
    return names


def _always_trains(name: str, config: LoraConfig) -> bool:
    return any(name == p or name.startswith(p + ".") for p in config.always_train)


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Inject LoRA adapters into `model` in place and freeze everything but them and `config.always_train`.

    Returns `model` itself. Raises ValueError when no module matches `config.target_modules`.
    """
    if not config.enabled:
        raise ValueError("apply_lora needs lora.rank > 0; with rank 0 the whole model trains (no adapters)")
    from peft import LoraConfig as PeftLoraConfig
    from peft import inject_adapter_in_model

    targets = _linear_targets(model, config)
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"lora.target_modules={config.target_modules} matches no nn.Linear of {type(model).__name__}; "
            f"its linear layers end in: {', '.join(linear)}"
        )
    peft_config = PeftLoraConfig(
        r=config.rank,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        bias="none",
    )
    inject_adapter_in_model(peft_config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name or _always_trains(name, config))
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers of `model` by module name (empty without LoRA)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def has_lora(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


@torch.no_grad()
def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict under the names the model has without LoRA, adapters folded into the base weights.

    The model is not changed. Without LoRA this is `model.state_dict()` (detached).
    """
    layers = lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict().items():
        if ".lora_" in key:
            continue
        module_name, _, leaf = key.rpartition(".")
        if module_name.endswith(".base_layer"):
            owner = module_name[: -len(".base_layer")]
            if leaf == "weight" and owner in layers and ADAPTER in layers[owner].lora_A:
                layer = layers[owner]
                value = value + layer.get_delta_weight(ADAPTER).to(value.dtype)
            key = f"{owner}.{leaf}"
        out[key] = value.detach()
    return out


def fold_lora(state: dict[str, torch.Tensor], config: LoraConfig) -> dict[str, torch.Tensor]:
    """A state dict saved from a LoRA model (peft names), under the plain names with the adapters folded in:
    `X.base_layer.weight + (alpha / rank) * X.lora_B.default.weight @ X.lora_A.default.weight` becomes
    `X.weight`. `config` is the LoRA config the state was trained with. A state without LoRA is returned as is.
    """
    if not any(".lora_" in k for k in state):
        return state
    scaling = config.alpha / config.rank
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        module_name, _, leaf = key.rpartition(".")
        if module_name.endswith(".base_layer"):
            owner = module_name[: -len(".base_layer")]
            a, b = (
                state.get(f"{owner}.lora_A.{ADAPTER}.weight"),
                state.get(f"{owner}.lora_B.{ADAPTER}.weight"),
            )
            if leaf == "weight" and a is not None and b is not None:
                value = value + (scaling * (b.float() @ a.float())).to(value.dtype)
            key = f"{owner}.{leaf}"
        out[key] = value
    return out


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the trainable parameters (LoRA matrices and always-trained modules): what a weight sync sends."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def set_gradient_checkpointing(model: nn.Module, enabled: bool) -> None:
    """Turn activation checkpointing on or off everywhere inside `model`.

    Hugging Face models use their own switch (non-reentrant, so frozen inputs under LoRA still get gradients);
    modules of this suite expose a boolean `gradient_checkpointing` attribute that their forward honours.
    """
    from transformers import PreTrainedModel

    for module in model.modules():
        if isinstance(module, PreTrainedModel) and module.supports_gradient_checkpointing:
            _hf_checkpointing(module, enabled)
        elif hasattr(module, "gradient_checkpointing") and isinstance(module.gradient_checkpointing, bool):
            module.gradient_checkpointing = enabled


def _hf_checkpointing(model: nn.Module, enabled: bool) -> None:
    """transformers >= 5 names the switch activation_checkpointing_*; 4.x has gradient_checkpointing_*."""
    if hasattr(model, "activation_checkpointing_enable"):
        if enabled:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif enabled:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()
