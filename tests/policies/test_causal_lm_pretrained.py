"""The shipped warm-started checkpoint (policies/causal_lm/pretrained/arithmetic_char_llama): a Hugging Face
folder that loads with AutoModelForCausalLM / AutoTokenizer, was made by scripts/sft_math.py with the arguments it
records, and answers the arithmetic test problems with the greedy accuracy it records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from envs.math import load_problems, math_env_spec
from envs.math.config import SHIPPED_DATA
from policies import PolicyConfig, make_policy
from policies.causal_lm.sft import greedy_accuracy

SHIPPED = (
    Path(__file__).resolve().parents[2] / "policies" / "causal_lm" / "pretrained" / "arithmetic_char_llama"
)


@pytest.fixture(scope="module")
def record():
    return json.loads((SHIPPED / "sft_args.json").read_text())


def test_it_is_a_hugging_face_folder(record):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(SHIPPED)
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED)
    assert type(model).__name__ == "LlamaForCausalLM" and len(tokenizer) == model.config.vocab_size
    assert (
        model.config.hidden_size == record["hidden_size"]
        and model.config.num_hidden_layers == record["num_layers"]
    )
    assert tokenizer.decode(tokenizer("What is 3 + 4?")["input_ids"]) == "What is 3 + 4?"


def test_its_recorded_greedy_accuracy_is_what_it_scores(record):
    spec = math_env_spec(1, record["max_response_tokens"], 100)
    config = {
        "name": "causal_lm",
        "pretrained": str(SHIPPED),
        "max_prompt_tokens": record["max_prompt_tokens"],
    }
    policy = make_policy(PolicyConfig.from_dict(config, path="policy"), spec)
    problems = load_problems(SHIPPED_DATA / "arithmetic_test.jsonl")[: record["eval_problems"]]
    accuracy = greedy_accuracy(policy, problems)
    assert accuracy == pytest.approx(record["test_accuracy"], abs=0.01)
    assert accuracy >= 0.1  # a start that outcome-reward RL can build on
