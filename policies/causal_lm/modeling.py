"""Building the language model and the log-probability maths of the causal LM policy.

    model, tokenizer = build_model(config)            # a Hugging Face checkpoint folder, or a scratch Llama
    logprobs, entropy = token_logprobs(logits, tokens, temperature)

Log-probs are those of the temperature-scaled distribution softmax(logits / T), the same at rollout and in
training, so the importance ratio starts at exactly 1. top-k / top-p truncation shapes what is sampled but not
these log-probs (as in verl and OpenRLHF).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from policies.causal_lm.config import CausalLMConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def build_model(config: CausalLMConfig):
    """(model, tokenizer): loaded from `config.pretrained`, or a scratch Llama with the character tokenizer."""
    if config.pretrained:
        return load_pretrained(config.pretrained, DTYPES[config.dtype])
    return build_scratch_model(config)


def model_dir(directory: str) -> Path:
    """`directory` as given when it exists, else relative to the repository root (as configs write paths)."""
    path = Path(directory).expanduser()
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path


def load_pretrained(directory: str, dtype: torch.dtype):
    """Model and tokenizer of a Hugging Face folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"policy.pretrained={directory!r} is not a Hugging Face model folder (no config.json); point it at a "
            "downloaded checkpoint, or at the output of scripts/sft_math.py"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model, tokenizer


def build_scratch_model(config: CausalLMConfig):
    from transformers import LlamaConfig, LlamaForCausalLM

    from policies.causal_lm.char_tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    s = config.scratch
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=s.hidden_size,
        intermediate_size=s.intermediate_size,
        num_hidden_layers=s.num_layers,
        num_attention_heads=s.num_heads,
        num_key_value_heads=s.num_heads,
        max_position_embeddings=s.max_positions,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng():
        torch.manual_seed(s.seed)
        model = LlamaForCausalLM(llama).to(DTYPES[config.dtype])
    return model, tokenizer


def token_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, temperature: float, with_entropy: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each token and the entropy of each distribution, under softmax(logits / temperature).

    Args:
        logits: [B, L, V], the logits that predicted tokens[:, i] at position i (any float dtype; computed in fp32).
        tokens: [B, L] int64.
    Returns:
        logprobs [B, L] fp32, entropy [B, L] fp32 (None unless with_entropy).
    """
    scaled = logits.float() / temperature
    log_z = torch.logsumexp(scaled, dim=-1)
    picked = scaled.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    logprobs = picked - log_z
    if not with_entropy:
        return logprobs, None
    probs = F.softmax(scaled, dim=-1)
    entropy = log_z - (probs * scaled).sum(-1)
    return logprobs, entropy


def response_mask(
    responses: torch.Tensor, eos_ids: list[int], generated: torch.Tensor | None = None
) -> torch.Tensor:
    """bool [B, L]: the tokens of each response up to and including its first end-of-sequence token.

    `generated` [B, L] bool, optional: positions `generate` actually produced (it stops early once every row ended).
    """
    is_eos = torch.isin(responses, torch.tensor(eos_ids, device=responses.device))
    ended_before = (torch.cumsum(is_eos.long(), dim=1) - is_eos.long()) > 0
    mask = ~ended_before
    return mask if generated is None else mask & generated
