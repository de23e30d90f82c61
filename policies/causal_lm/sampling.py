"""What `generate` needs from us: a clean generation config and a log-prob recorder.

The recorder is a logits processor. Custom processors run after the config's own processors (none are active
with `clean_generation_config`) and before temperature / top-k / top-p, so it sees the raw logits: it keeps
log_softmax(logits / T) of the current step and, at the next step, reads off the log-prob of the token that was
sampled. One [N, V] distribution is held at a time, never all L of them.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor


class LogprobRecorder(LogitsProcessor):
    """Log-probs under softmax(logits / temperature) of the tokens `generate` picks (a `LogitsProcessor`)."""

    def __init__(self, temperature: float) -> None:
        self.temperature = temperature
        self.steps: list[torch.Tensor] = []
        self._previous: torch.Tensor | None = None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._previous is not None:
            self._take(input_ids[:, -1])
        self._previous = torch.log_softmax(scores.float() / self.temperature, dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        self.steps.append(self._previous.gather(-1, tokens[:, None].to(self._previous.device)).squeeze(-1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """[N, L']: the log-prob of every generated token, given the tokens picked at the last step."""
        if self._previous is not None:
            self._take(last_tokens)
            self._previous = None
        return torch.stack(self.steps, dim=1)


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every id that ends a response: the model's generation config's (chat models list several) and the
    tokenizer's."""
    ids: list[int] = []
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError(
            "the model and tokenizer define no end-of-sequence token; set eos_token_id in its config"
        )
    return ids


def clean_generation_config(tokenizer, eos_ids: list[int], pad_id: int):
    """The model's default generation config, emptied of sampling and penalty settings a checkpoint may carry
    (generation_config.json), so only the policy config decides how responses are sampled."""
    from transformers import GenerationConfig

    return GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=eos_ids, pad_token_id=pad_id)
