"""Prompts to token ids: the chat template (when the tokenizer has one), then left padding to a fixed length.

Every batch has the same prompt length P = `max_prompt_tokens`, so `forward_inputs` of different rollout steps
stack along a new time axis; `generate` and `evaluate` drop the columns that are padding in every row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class PromptEncoder:
    def __init__(
        self,
        tokenizer,
        max_prompt_tokens: int,
        apply_chat_template: bool = True,
        system_prompt: str | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens
        self.use_chat_template = apply_chat_template and bool(getattr(tokenizer, "chat_template", None))
        self.system_prompt = system_prompt
        self.pad_id = pad_token_id(tokenizer)

    def format(self, prompt: str) -> str:
        """The text the model sees: the chat template with a generation prompt, or the prompt itself."""
        if not self.use_chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids int64 [N, P] and attention_mask bool [N, P], left-padded to P = max_prompt_tokens."""
        texts = [self.format(p) for p in prompts]
        # a chat template already holds the special tokens it wants
        encoded = self.tokenizer(texts, add_special_tokens=not self.use_chat_template)["input_ids"]
        p = self.max_prompt_tokens
        ids = torch.full((len(texts), p), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(texts), p), dtype=torch.bool)
        for row, tokens in enumerate(encoded):
            if len(tokens) > p:
                raise ValueError(
                    f"a prompt has {len(tokens)} tokens, more than policy.max_prompt_tokens={p}; raise it. The "
                    f"prompt: {texts[row][:200]!r}"
                )
            if tokens:
                ids[row, p - len(tokens) :] = torch.tensor(tokens)
                mask[row, p - len(tokens) :] = True
        return ids, mask


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id, else its end-of-sequence id (many causal LMs define no pad token)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise ValueError(
        "the tokenizer defines neither a pad nor an eos token; set one in its tokenizer_config.json"
    )


def trim_left_padding(*tensors: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the leading columns that are padding in every row of `mask` [B, S], from `tensors` and the mask."""
    valid_cols = mask.any(dim=0).nonzero()
    start = int(valid_cols[0]) if len(valid_cols) else 0
    return tuple(t[:, start:] for t in tensors) + (mask[:, start:],)
