"""OpenVLA configuration: the checkpoint's config.json (`OpenVLACheckpointConfig`) and the policy section
(`OpenVLAConfig`, `policy.*` in the YAML configs).

`OpenVLACheckpointConfig` reads the fields of the released `openvla/openvla-7b` config.json (written by the
official `OpenVLAConfig`, transformers 4.40) with the same defaults, so a released checkpoint and one saved by
this suite are described the same way. Keys it does not interpret (`auto_map`, `architectures`, ...) are kept
and written back unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from algorithms.schema import ConfigError, param
from policies.base import PolicyConfig
from policies.lora import LoraConfig
from policies.openvla.vision import ViTSpec, vit_spec

# The defaults of transformers 4.40's LlamaConfig (Llama-2-7B sizes): the released config.json's text_config
# only names model_type, pad_token_id and vocab_size, so everything else comes from here.
LLAMA_DEFAULTS: dict[str, Any] = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
    hidden_act="silu", max_position_embeddings=2048, rms_norm_eps=1e-6, rope_theta=10000.0,
    attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
)  # fmt: skip
# text_config keys that describe the file rather than the architecture.
_TEXT_CONFIG_META = (
    "model_type",
    "torch_dtype",
    "dtype",
    "_name_or_path",
    "architectures",
    "transformers_version",
)


@dataclass(frozen=True)
class OpenVLACheckpointConfig:
    """The architecture and action statistics a checkpoint's config.json describes."""

    text_config: dict[str, Any]
    timm_model_ids: list[str]
    image_sizes: list[int]
    use_fused_vision_backbone: bool = True
    timm_override_act_layers: list[str | None] = field(default_factory=lambda: [None, None])
    timm_model_kwargs: list[dict[str, Any]] | None = None  # only in test fixtures: tiny towers
    n_action_bins: int = 256
    pad_to_multiple_of: int = 64
    pad_token_id: int = 32000
    norm_stats: dict[str, Any] = field(default_factory=dict)
    # Camera images per input (OFT's `num_images_in_input`: 2 = third-person + wrist). OpenVLA's and OFT's own
    # config.json do not record it (OFT sets it on the vision backbone at load time); this suite's saves do.
    num_images_in_input: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # every other config.json key, kept verbatim

    # -- reading and writing config.json ----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OpenVLACheckpointConfig:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("text_config", "timm_model_ids", "image_sizes") if k not in data]
        if missing:
            raise ValueError(
                f"config.json lacks {missing}: not an OpenVLA checkpoint (openvla/openvla-7b layout)"
            )
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> OpenVLACheckpointConfig:
        path = Path(directory) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{directory} has no config.json; point policy.pretrained at an OpenVLA checkpoint"
            )
        return cls.from_dict(json.loads(path.read_text()))

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        for optional in ("timm_model_kwargs", "num_images_in_input"):
            if out[optional] is None:
                del out[optional]
        return {**self.extra, **out}

    # -- what the model is built from --------------------------------------------------------------------------
    def llama_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of transformers' LlamaConfig for the language model."""
        text = {k: v for k, v in self.text_config.items() if k not in _TEXT_CONFIG_META}
        return {**LLAMA_DEFAULTS, **text}

    def vit_specs(self) -> list[ViTSpec]:
        count = 2 if self.use_fused_vision_backbone else 1
        if len(self.timm_model_ids) < count:
            raise ValueError(
                f"config.json timm_model_ids has {len(self.timm_model_ids)} ids; the fused backbone needs 2"
            )
        kwargs = self.timm_model_kwargs or [{}] * count
        acts = list(self.timm_override_act_layers or []) + [None] * count
        return [
            vit_spec(self.timm_model_ids[i], self.image_sizes[i], kwargs[i], acts[i]) for i in range(count)
        ]

    @property
    def vocab_size(self) -> int:
        return int(self.llama_kwargs()["vocab_size"])

    @property
    def action_vocab_end(self) -> int:
        """One past the last action token id: the tokenizer's vocabulary, before OpenVLA's padding."""
        return self.vocab_size - self.pad_to_multiple_of

    @property
    def action_vocab_start(self) -> int:
        return self.action_vocab_end - self.n_action_bins

    def action_stats(self, unnorm_key: str | None) -> tuple[str, dict[str, list]]:
        """(key, {"q01", "q99", "mask"}) of the dataset statistics actions are un-normalised with."""
        if not self.norm_stats:
            raise ValueError(
                "the checkpoint's config.json has no norm_stats; actions cannot be un-normalised"
            )
        if unnorm_key is None:
            if len(self.norm_stats) != 1:
                raise ConfigError(
                    "policy.unnorm_key is required: the checkpoint has statistics for "
                    f"{len(self.norm_stats)} datasets: {', '.join(sorted(self.norm_stats))}"
                )
            unnorm_key = next(iter(self.norm_stats))
        if unnorm_key not in self.norm_stats:
            raise ConfigError(
                f"policy.unnorm_key={unnorm_key!r} is not in the checkpoint's norm_stats; "
                f"known keys: {', '.join(sorted(self.norm_stats))}"
            )
        stats = dict(self.norm_stats[unnorm_key]["action"])
        stats.setdefault("mask", [True] * len(stats["q01"]))
        return unnorm_key, stats


def tiny_checkpoint_config(
    image_size: int, vocab_size: int, pad_token_id: int, norm_stats: dict[str, Any]
) -> OpenVLACheckpointConfig:
    """OpenVLA's structure with every component shrunk (the towers of the openvla-tiny fixture)."""
    return OpenVLACheckpointConfig(
        text_config=dict(
            model_type="llama",
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=512,
            pad_token_id=pad_token_id,
            # 1/sqrt(width), not Llama's 0.02 (made for widths in the thousands): at 0.02 a 64-wide model starts
            # with uniform attention and learns to pick out the image and state tokens far too slowly.
            initializer_range=64**-0.5,
        ),  # fmt: skip
        timm_model_ids=["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        image_sizes=[image_size, image_size],
        timm_model_kwargs=[
            dict(embed_dim=32, depth=3, num_heads=2),
            dict(embed_dim=48, depth=3, num_heads=3),
        ],
        pad_token_id=pad_token_id,
        norm_stats=norm_stats,
        extra=_OPENVLA_EXTRA,
    )


def openvla_7b_checkpoint_config(image_size: int, norm_stats: dict[str, Any]) -> OpenVLACheckpointConfig:
    """The released openvla/openvla-7b architecture (random weights: for real-size benchmarks)."""
    return OpenVLACheckpointConfig(
        text_config=dict(model_type="llama", vocab_size=32064, pad_token_id=32000),
        timm_model_ids=["vit_large_patch14_reg4_dinov2.lvd142m", "vit_so400m_patch14_siglip_224"],
        image_sizes=[image_size, image_size],
        norm_stats=norm_stats,
        extra=_OPENVLA_EXTRA,
    )


_OPENVLA_EXTRA = {
    "model_type": "openvla",
    "architectures": ["OpenVLAForActionPrediction"],
    "vision_backbone_id": "dinosiglip-vit-so-224px",
    "llm_backbone_id": "llama2-7b-pure",
    "arch_specifier": "no-align+fused-gelu-mlp",
    "image_resize_strategy": "resize-naive",
    "llm_max_length": 2048,
    "output_projector_states": False,
}
ARCHITECTURES = ("tiny", "openvla-7b")


@dataclass(frozen=True)
class OpenVLAConfig(PolicyConfig):
    """OpenVLA: fused DINOv2 + SigLIP, a 3-layer projector and Llama; actions as 256-bin tokens."""

    name: str = param("openvla", help="registered policy name")
    architecture: Literal["tiny", "openvla-7b"] = param(
        "tiny", help="model built when pretrained is null: tiny (tests, CPU) or openvla-7b (random weights)"
    )
    image_size: int | None = param(
        None,
        help="image side of a model built from scratch (multiple of 14); null: 56 tiny, 224 openvla-7b",
        ge=14,
    )
    unnorm_key: str | None = param(
        None, help="dataset key of the checkpoint's norm_stats; null: the only one"
    )
    num_action_chunks: int = param(1, help="action chunk length C: C x A tokens per prediction", ge=1)
    num_images_in_input: int | None = param(
        None,
        help="camera images per input: 1 (main_images) or 2 (main_images then wrist_images, OFT's LIBERO "
        "checkpoints); null: the checkpoint's config.json num_images_in_input when it has one, else 1",
        ge=1,
        le=2,
    )
    center_crop: bool = param(
        False,
        help="crop the central 90% of each image's area and resize it back (OpenVLA's and OFT's evaluation of "
        "checkpoints fine-tuned with random-crop augmentation, e.g. the LIBERO ones)",
    )
    action_bins: int = param(
        256,
        help="action tokens of a model built from scratch (256 as released; a checkpoint brings its own count)",
        ge=3,
    )
    temperature: float = param(1.0, help="sampling temperature of the action tokens (train mode)", gt=0.0)
    top_k: int = param(0, help="sample among the k most likely bins; 0: all bins", ge=0)
    add_value_head: bool = param(True, help="add a value head (PPO); false for critic-free algorithms")
    value_granularity: Literal["chunk", "step"] = param(
        "chunk", help="one value per action chunk ([N]) or one per chunk step ([N, C])"
    )
    value_hidden_size: int = param(256, help="hidden width of the value head MLP", ge=1)
    dtype: Literal["float32", "bfloat16"] = param("float32", help="weight dtype (bfloat16 on GPU)")
    attn_implementation: Literal["sdpa", "eager"] = param(
        "sdpa", help="attention kernel of the language model"
    )
    max_prompt_length: int = param(
        128,
        help="prompt tokens per row (left-padded; fixed so rollout steps stack); longer prompts are refused",
        ge=2,
    )
    tokenizer: str = param(
        "auto",
        help="auto: the checkpoint's tokenizer if it has one, else builtin; builtin (bytes); word (one id per "
        "word, tiny models); or a tokenizer path",
    )
    lora: LoraConfig = param(factory=LoraConfig, help="LoRA adapters (rank 0: full fine-tuning)")
    gradient_checkpointing: bool = param(False, help="recompute activations in backward to save memory")

    def check(self) -> None:
        if self.architecture == "openvla-7b" and self.action_bins != 256:
            raise ConfigError(
                f"{{section}}action_bins={self.action_bins}: the openvla-7b architecture has 256 action bins; "
                "other counts are for the tiny architecture"
            )
        if self.image_size is not None and self.image_size % 14:
            raise ConfigError(
                f"{{section}}image_size={self.image_size} must be a multiple of the patch size 14"
            )
