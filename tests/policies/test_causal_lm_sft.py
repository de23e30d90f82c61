"""Supervised warm-up of the causal LM: the teacher-forcing layout, and that it learns (memorises a tiny set)."""

from __future__ import annotations

import pytest
import torch

from envs.math import MathProblem, math_env_spec
from policies import PolicyConfig, make_policy
from policies.causal_lm import build_char_tokenizer
from policies.causal_lm.sft import answer_accuracy, greedy_accuracy, sft_inputs, sft_loss

PROBLEMS = [MathProblem(f"What is {a} + {b}?", str(a + b)) for a, b in [(1, 2), (30, 4), (7, 7), (12, 9)]]


def tiny_policy(length=5):
    config = {"name": "causal_lm", "max_prompt_tokens": 20, "scratch": {"hidden_size": 32, "seed": 0}}
    spec = math_env_spec(len(PROBLEMS), length, len(build_char_tokenizer()))
    return make_policy(PolicyConfig.from_dict(config, path="policy"), spec)


def test_teacher_forcing_layout_and_a_target_that_does_not_fit():
    policy = tiny_policy()
    inputs = sft_inputs(policy, ["What is 1 + 2?"], ["3"])
    ids, mask = inputs["input_ids"][0], inputs["attention_mask"][0]
    assert ids.shape == mask.shape == (25,)
    response = ids[-5:].tolist()
    assert response[:2] == [policy.tokenizer.convert_tokens_to_ids("3"), policy.tokenizer.eos_token_id]
    assert mask[-5:].tolist() == [True, True, False, False, False]
    assert policy.tokenizer.decode(ids[:20][mask[:20]]) == "What is 1 + 2?"
    with pytest.raises(ValueError, match="more than the response length 5"):
        sft_inputs(policy, ["x"], ["12345"])


def test_warm_up_memorises_a_tiny_set():
    torch.manual_seed(0)
    policy = tiny_policy()
    assert greedy_accuracy(policy, PROBLEMS) == 0.0
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    inputs = sft_inputs(policy, [p.prompt for p in PROBLEMS], [p.answer for p in PROBLEMS])
    first = None
    for _ in range(60):
        loss = sft_loss(policy, inputs)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05 * first
    assert greedy_accuracy(policy, PROBLEMS) == 1.0
    sampled = answer_accuracy(policy, PROBLEMS, sampled=True, repeats=16)  # at temperature 1; measured 0.984
    assert 0.75 <= sampled <= 1.0
