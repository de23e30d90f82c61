"""A Hugging Face causal LM as a policy (`policy.name: causal_lm`) for the math env type. See docs/llm.md."""

from policies.causal_lm.char_tokenizer import build_char_tokenizer
from policies.causal_lm.config import CausalLMConfig, ScratchModelConfig
from policies.causal_lm.policy import CausalLMPolicy

__all__ = ["CausalLMConfig", "CausalLMPolicy", "ScratchModelConfig", "build_char_tokenizer"]
