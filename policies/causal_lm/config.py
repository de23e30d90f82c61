"""Configuration of the causal LM policy (`policy.name: causal_lm`)."""

from __future__ import annotations

from dataclasses import dataclass

from algorithms.schema import Config, ConfigError, param
from policies.base import PolicyConfig


@dataclass(frozen=True)
class ScratchModelConfig(Config):
    """A small Llama built from random weights with the character tokenizer (when `pretrained` is null)."""

    hidden_size: int = param(128, help="width of the residual stream", ge=8)
    num_layers: int = param(2, help="transformer blocks", ge=1)
    num_heads: int = param(4, help="attention heads (hidden_size must divide by it)", ge=1)
    intermediate_size: int = param(512, help="width of the MLP", ge=8)
    max_positions: int = param(256, help="longest prompt + response in tokens", ge=8)
    seed: int = param(0, help="seed of the random initial weights", ge=0)

    def check(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{{section}}hidden_size={self.hidden_size} is not a multiple of num_heads={self.num_heads}"
            )


@dataclass(frozen=True)
class CausalLMConfig(PolicyConfig):
    """A Hugging Face causal LM sampled with `generate`; the response length L is the env's action_dim."""

    name: str = param("causal_lm", help="registered policy name")
    pretrained: str | None = param(
        None,
        help="Hugging Face model folder (config.json, safetensors, tokenizer files); null: scratch model",
    )
    scratch: ScratchModelConfig = param(
        factory=ScratchModelConfig, help="the model built from scratch when pretrained is null"
    )
    temperature: float = param(1.0, help="sampling temperature; log-probs are of softmax(logits / T)", gt=0)
    top_k: int = param(0, help="sample among the k most likely tokens; 0: off", ge=0)
    top_p: float = param(1.0, help="nucleus sampling mass; 1.0: off", gt=0, le=1)
    max_prompt_tokens: int = param(
        64, help="prompts are left-padded to this many tokens; longer ones fail", ge=1
    )
    apply_chat_template: bool = param(
        True, help="wrap prompts in the tokenizer's chat template when it has one"
    )
    system_prompt: str | None = param(None, help="system message for the chat template; null: none")
    value_head: bool = param(
        False, help="a linear critic on the last prompt token's hidden state (PPO); values are per response"
    )
    dtype: str = param(
        "float32",
        help="weights' dtype (bfloat16 on GPU for large models)",
        choices=("float32", "bfloat16", "float16"),
    )
    gradient_checkpointing: bool = param(False, help="recompute activations in backward (large models)")
