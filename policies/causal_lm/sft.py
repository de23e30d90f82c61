"""Supervised warm-up of the causal LM policy on prompt/answer pairs (teacher forcing on the response tokens).

A language model that starts from random weights almost never answers right, so outcome-reward RL has nothing
to reinforce. A short warm-up on the training answers gives it a non-trivial starting accuracy;
`scripts/sft_math.py` runs it and saves the Hugging Face folder the RL run starts from.

    inputs = sft_inputs(policy, prompts, targets)    # same layout as predict's forward_inputs
    loss = sft_loss(policy, inputs)                   # mean negative log-likelihood per response token
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from policies.causal_lm.policy import CausalLMPolicy


def sft_inputs(
    policy: CausalLMPolicy, prompts: Sequence[str], targets: Sequence[str]
) -> dict[str, torch.Tensor]:
    """forward_inputs for teacher forcing: each target's tokens plus the first EOS id, right-padded to the
    response length L. Raises ValueError for a target longer than L - 1 tokens."""
    prompt_ids, prompt_mask = policy.prompts.encode(prompts)
    length = policy.max_new_tokens
    responses = torch.full((len(targets), length), policy.pad_id, dtype=torch.long)
    mask = torch.zeros((len(targets), length), dtype=torch.bool)
    encoded = policy.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
    for row, tokens in enumerate(encoded):
        tokens = tokens + [policy.eos_ids[0]]
        if len(tokens) > length:
            raise ValueError(
                f"target {targets[row]!r} needs {len(tokens)} tokens with EOS, more than the response length "
                f"{length} (env.max_response_tokens)"
            )
        responses[row, : len(tokens)] = torch.tensor(tokens)
        mask[row, : len(tokens)] = True
    return {
        "input_ids": torch.cat([prompt_ids, responses], dim=1),
        "attention_mask": torch.cat([prompt_mask, mask], dim=1),
    }


def sft_loss(policy: CausalLMPolicy, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood of the response tokens (temperature 1)."""
    logprobs, _, _ = policy.sequence_logprobs(inputs, temperature=1.0, with_entropy=False)
    mask = inputs["attention_mask"][:, -policy.max_new_tokens :].to(logprobs.device)
    return -(logprobs * mask).sum() / mask.sum().clamp(min=1)


def greedy_accuracy(policy: CausalLMPolicy, problems: Sequence, batch_size: int = 128) -> float:
    """Share of `problems` (with .prompt and .answer) whose greedy response the math reward accepts."""
    return answer_accuracy(policy, problems, batch_size=batch_size)


def answer_accuracy(
    policy: CausalLMPolicy, problems: Sequence, sampled: bool = False, repeats: int = 1, batch_size: int = 128
) -> float:
    """Share of responses to `problems` that the math reward accepts: greedy ones, or (`sampled`) `repeats`
    responses per problem sampled as in training (the policy's temperature, top-k, top-p): the expected
    training reward."""
    from algorithms.math_reward import is_correct

    correct = 0
    for _ in range(repeats if sampled else 1):
        for start in range(0, len(problems), batch_size):
            chunk = problems[start : start + batch_size]
            obs = {"task_descriptions": [p.prompt for p in chunk]}
            actions = policy.predict(obs, mode="train" if sampled else "eval").actions[:, 0]
            texts = policy.tokenizer.batch_decode(
                [[int(t) for t in row if t >= 0] for row in actions], skip_special_tokens=True
            )
            correct += sum(is_correct(text, p.answer) for text, p in zip(texts, chunk))
    return correct / max(len(problems) * (repeats if sampled else 1), 1)
