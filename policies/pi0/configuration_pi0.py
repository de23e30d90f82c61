"""pi0 configuration: the policy section (`policy.*`, `Pi0Config`) and the sizes of its towers.

The architecture of a released checkpoint is read from the checkpoint itself (see `policies.pi0.checkpoint`):
LeRobot's PI0Config names Gemma variants (`gemma_2b` for the VLM, `gemma_300m` for the action expert) whose
sizes are in `GEMMA_VARIANTS`; a tiny test checkpoint adds a `tiny_overrides.json` next to its config.json.
Without `pretrained`, the size sections below build a model from scratch; their defaults are a tiny model that
runs on a laptop CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from algorithms.schema import Config, ConfigError, param
from policies.base import PolicyConfig
from policies.lora import LoraConfig

PALIGEMMA_VOCAB_SIZE = 257_152
# PaliGemma's tokenizer pads with id 0 and starts every prompt with BOS id 2.
PAD_TOKEN_ID = 0
BOS_TOKEN_ID = 2
# The policy fields that describe the architecture: read from a checkpoint when `pretrained` is set.
ARCHITECTURE_FIELDS = (
    "vlm",
    "expert",
    "vision",
    "vocab_size",
    "chunk_size",
    "max_state_dim",
    "max_action_dim",
    "min_period",
    "max_period",
)


@dataclass(frozen=True)
class GemmaSize(Config):
    """Sizes of one Gemma tower (openpi's `gemma.Config`)."""

    width: int = param(help="hidden size", ge=1)
    depth: int = param(help="number of layers", ge=1)
    mlp_dim: int = param(help="hidden size of the gated MLP", ge=1)
    num_heads: int = param(help="query heads", ge=1)
    num_kv_heads: int = param(help="key/value heads (grouped-query attention)", ge=1)
    head_dim: int = param(help="size of one attention head", ge=2)

    def check(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"{{section}}num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.head_dim % 2:
            raise ConfigError(f"{{section}}head_dim={self.head_dim} must be even (rotary embeddings)")


@dataclass(frozen=True)
class SiglipSize(Config):
    """Sizes of the SigLIP vision tower (no pooling head)."""

    hidden_size: int = param(help="hidden size", ge=1)
    num_layers: int = param(help="encoder layers", ge=1)
    num_heads: int = param(help="attention heads", ge=1)
    intermediate_size: int = param(help="MLP hidden size", ge=1)
    patch_size: int = param(help="side of a square patch in pixels", ge=1)
    image_size: int = param(help="side of the square model input; env images are resized with padding", ge=1)

    def check(self) -> None:
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"{{section}}image_size={self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{{section}}hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


GEMMA_VARIANTS = {
    "gemma_2b": GemmaSize(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaSize(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaSize(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
}
SIGLIP_SO400M_224 = SiglipSize(
    hidden_size=1152, num_layers=27, num_heads=16, intermediate_size=4304, patch_size=14, image_size=224
)


def _tiny_vlm() -> GemmaSize:
    return GemmaSize(width=64, depth=2, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16)


def _tiny_expert() -> GemmaSize:
    return GemmaSize(width=32, depth=2, mlp_dim=64, num_heads=8, num_kv_heads=1, head_dim=16)


def _tiny_vision() -> SiglipSize:
    return SiglipSize(
        hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, patch_size=8, image_size=32
    )


@dataclass(frozen=True)
class Pi0Config(PolicyConfig):
    """pi0: PaliGemma prefix + a flow-matching Gemma action expert, trained with Flow-Noise or Flow-SDE PPO."""

    name: str = param("pi0", help="registered policy name")
    # -- architecture (read from the checkpoint when `pretrained` is set) ----------------------------------------
    vlm: GemmaSize = param(factory=_tiny_vlm, help="the PaliGemma language model (gemma_2b when released)")
    expert: GemmaSize = param(factory=_tiny_expert, help="the action expert (gemma_300m when released)")
    vision: SiglipSize = param(
        factory=_tiny_vision, help="the SigLIP vision tower (So400m/14 at 224 when released)"
    )
    vocab_size: int = param(1024, help="token vocabulary of the VLM (257152 for PaliGemma)", ge=4)
    chunk_size: int = param(
        8, help="actions the expert predicts per call (action horizon; 50 when released)", ge=1
    )
    max_state_dim: int = param(8, help="states are zero-padded to this size (32 when released)", ge=1)
    max_action_dim: int = param(8, help="actions are zero-padded to this size (32 when released)", ge=1)
    min_period: float = param(4e-3, help="shortest period of the sine-cosine time embedding", gt=0)
    max_period: float = param(4.0, help="longest period of the sine-cosine time embedding", gt=0)
    # -- inputs ---------------------------------------------------------------------------------------------------
    tokenizer_max_length: int = param(16, help="prompt tokens (right-padded; 48 when released)", ge=2)
    tokenizer: str | None = param(
        None,
        help="PaliGemma tokenizer: a SentencePiece tokenizer.model or a Hugging Face tokenizer folder; "
        "null: the built-in word-hash tokenizer (tiny models only); word_hash: that tokenizer at any vocab size",
    )
    norm_stats: str | None = param(
        None,
        help="state/action statistics: openpi norm_stats.json or LeRobot normalizer .safetensors; null: identity",
    )
    normalization: Literal["mean_std", "quantile"] = param(
        "mean_std",
        help="how norm_stats map states/actions to model units: mean_std ((x - mean) / std, pi0's) or quantile "
        "(q01 -> -1, q99 -> 1, pi0.5's); a LeRobot checkpoint's normalization_mapping overrides it",
    )
    empty_cameras: int = param(0, help="extra masked cameras (all -1) appended after the env's cameras", ge=0)
    dtype: Literal["float32", "bfloat16"] = param("float32", help="weights and activations (bf16 on GPU)")
    # -- sampling --------------------------------------------------------------------------------------------------
    num_steps: int = param(
        4, help="denoising steps K of the flow (Euler, t = 1 -> 0; 10 when released)", ge=1
    )
    action_chunk: int | None = param(
        None, help="steps C of each predicted chunk that the env executes; null: chunk_size", ge=1
    )
    eval_noise: Literal["hashed", "fixed", "zero"] = param(
        "hashed",
        help="eval-mode initial noise: hashed (a draw seeded by a hash of each env's observation: the same obs "
        "gives the same action), fixed (one draw shared by all envs) or zero",
    )
    eval_seed: int = param(0, help="seed mixed into the eval-mode noise", ge=0)
    # -- RL ---------------------------------------------------------------------------------------------------------
    rl_method: Literal["flow_noise", "flow_sde"] = param(
        "flow_noise",
        help="flow_noise: a learned noise head makes every step Gaussian (joint chain log-prob); "
        "flow_sde: one random step of the marginal-preserving SDE is stochastic",
    )
    noise_std_min: float = param(0.08, help="flow_noise: smallest std the noise head can output", gt=0)
    noise_std_max: float = param(0.16, help="flow_noise: largest std the noise head can output", gt=0)
    sde_noise_level: float = param(0.5, help="flow_sde: a in g(t) = a * sqrt(t / (1 - t))", gt=0, le=2.0)
    value_head: Literal["expert", "vlm"] = param(
        "expert", help="critic input: the expert's output at the first step, or the VLM's prefix output"
    )
    value_hidden: int = param(128, help="hidden size of the value MLP", ge=1)
    train_expert_only: bool = param(
        False, help="freeze the VLM (SigLIP + PaliGemma); train the expert and heads"
    )
    freeze_vision: bool = param(False, help="freeze SigLIP and the projector")
    lora: LoraConfig = param(factory=LoraConfig, help="LoRA adapters (rank 0: train all weights)")
    gradient_checkpointing: bool = param(False, help="recompute layer activations in backward (saves memory)")

    def check(self) -> None:
        for key in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self.vlm, key) != getattr(self.expert, key):
                raise ConfigError(
                    f"{{section}}vlm.{key}={getattr(self.vlm, key)} differs from expert.{key}="
                    f"{getattr(self.expert, key)}; the joint attention of the two towers needs them equal"
                )
        if self.action_chunk is not None and self.action_chunk > self.chunk_size:
            raise ConfigError(
                f"{{section}}action_chunk={self.action_chunk} exceeds chunk_size={self.chunk_size}; the env can "
                "execute at most the actions the expert predicts"
            )
        if self.noise_std_min > self.noise_std_max:
            raise ConfigError(
                f"{{section}}noise_std_min={self.noise_std_min} exceeds noise_std_max={self.noise_std_max}; "
                "it must be at most that"
            )
        if self.expert.width % 2:
            raise ConfigError(
                f"{{section}}expert.width={self.expert.width} must be even (sine-cosine time embedding)"
            )

    @property
    def executed_chunk(self) -> int:
        """C: the actions of each chunk the env executes."""
        return self.action_chunk if self.action_chunk is not None else self.chunk_size
