"""The math env type: datasets from local files, prompts as observations, token-id actions graded by the reward,
GRPO groups sharing a prompt, and the env contract for a text env (one step per episode)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from algorithms.schema import ConfigError
from envs import EnvConfig, make_env
from envs.math import PAD_ACTION, load_problems
from envs.math.config import SHIPPED_DATA
from policies.causal_lm.char_tokenizer import build_char_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("char_tokenizer")
    build_char_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "tiny.jsonl"
    rows = [{"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make(tokenizer_dir, data_file, **overrides):
    config = {"name": "math", "num_envs": 4, "group_size": 2, "tokenizer": str(tokenizer_dir)}
    config["data_file"] = str(data_file)
    return make_env(EnvConfig.from_dict({**config, **overrides}, path="env"))


def actions_for(tokenizer, texts, length=32):
    """Token-id actions [N, 1, L]: each text, then EOS, then -1 padding."""
    out = torch.full((len(texts), 1, length), float(PAD_ACTION))
    for row, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out[row, 0, : len(ids)] = torch.tensor(ids, dtype=torch.float32)
    return out


def answers_of(prompts):
    return [str(int(p.split()[2]) + 1) for p in prompts]  # "What is i + 1?"


# ---------------------------------------------------------------------------------------------- datasets
def test_jsonl_and_parquet_load_the_same_records(tmp_path, data_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in data_file.read_text().splitlines()]
    parquet = tmp_path / "tiny.parquet"
    pq.write_table(pa.Table.from_pylist(records), parquet)
    assert load_problems(parquet) == load_problems(data_file)
    assert (
        load_problems(data_file)[3].prompt == "What is 3 + 1?" and load_problems(data_file)[3].answer == "4"
    )


def test_dataset_errors_name_the_file_and_the_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": 1}\n{"question": "b", "answer": 2}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl line 2: no 'prompt' field .*env.prompt_key"):
        load_problems(bad)
    bad.write_text('{"prompt": "a", "answer": 1}\n{not json\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        load_problems(bad)
    assert load_problems(_write(tmp_path, "q", "a"), "q", "a")[0].answer == "7"
    with pytest.raises(ValueError, match="unknown data file type '.csv'"):
        load_problems(tmp_path / "x.csv")


def _write(tmp_path, prompt_key, answer_key):
    path = tmp_path / "keys.jsonl"
    path.write_text(json.dumps({prompt_key: "What is 3 + 4?", answer_key: 7}) + "\n")
    return path


def test_shipped_arithmetic_set_is_what_the_generator_writes_and_is_right(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_arithmetic_dataset as gen
    finally:
        sys.path.pop(0)
    train, test = gen.make_split(seed=0, num_train=6000, num_test=600)
    gen.write_jsonl(tmp_path / "train.jsonl", train)
    gen.write_jsonl(tmp_path / "test.jsonl", test)
    assert (tmp_path / "train.jsonl").read_bytes() == (SHIPPED_DATA / "arithmetic_train.jsonl").read_bytes()
    assert (tmp_path / "test.jsonl").read_bytes() == (SHIPPED_DATA / "arithmetic_test.jsonl").read_bytes()
    problems = load_problems(SHIPPED_DATA / "arithmetic_train.jsonl") + load_problems(
        SHIPPED_DATA / "arithmetic_test.jsonl"
    )
    for p in problems:
        _, _, a, op, b = p.prompt.rstrip("?").split()
        assert int(p.answer) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in test}


# ---------------------------------------------------------------------------------------------- config
def test_config_errors_say_what_to_set(tokenizer_dir, data_file):
    with pytest.raises(ConfigError, match="env.tokenizer is required"):
        EnvConfig.from_dict({"name": "math"}, path="env")
    with pytest.raises(ConfigError, match="must contain"):
        EnvConfig.from_dict({"name": "math", "tokenizer": "x", "prompt_template": "Q:"}, path="env")
    with pytest.raises(FileNotFoundError, match="env.data_file='nowhere.jsonl' does not exist"):
        make(tokenizer_dir, "nowhere.jsonl")
    default = EnvConfig.from_dict({"name": "math", "tokenizer": str(tokenizer_dir)}, path="env")
    assert default.resolved_data_file().resolve() == SHIPPED_DATA / "arithmetic_train.jsonl"


# ---------------------------------------------------------------------------------------------- the env
def test_observations_spec_and_group_shared_prompts(tokenizer_dir, data_file, tokenizer):
    with make(tokenizer_dir, data_file, prompt_template="Q: {prompt} A:") as env:
        spec = env.spec
        assert spec.action_dim == 16 and spec.max_episode_steps == 1 and spec.num_initial_states == 10
        assert spec.action_high[0] == len(tokenizer) - 1 and spec.state_dim == 0 and spec.image_size is None
        obs = env.reset(seed=1)
        assert obs["states"].shape == (4, 0) and obs["states"].dtype == torch.float32
        prompts = obs["task_descriptions"]
        assert all(p.startswith("Q: What is ") and p.endswith("? A:") for p in prompts)
        assert prompts[0] == prompts[1] and prompts[2] == prompts[3]
        fixed = env.reset(initial_state_ids=[0, 0, 7, 9])["task_descriptions"]
        assert fixed == ["Q: What is 0 + 1? A:"] * 2 + ["Q: What is 7 + 1? A:", "Q: What is 9 + 1? A:"]
        assert env.reset(seed=1)["task_descriptions"] == prompts  # seeding reproduces the prompts


def test_right_answers_earn_reward_and_every_episode_ends_after_one_step(tokenizer_dir, data_file, tokenizer):
    with make(tokenizer_dir, data_file, max_response_tokens=32) as env:
        obs = env.reset(initial_state_ids=[1, 1, 4, 4])
        right = answers_of(obs["task_descriptions"])
        texts = [right[0], f"The answer is \\boxed{{{right[1]}}}", "5", "no idea"]  # 1+1=2, 4+1=5
        obs2, rewards, terms, truncs, infos = env.chunk_step(actions_for(tokenizer, texts))
        assert rewards.shape == terms.shape == (4, 1)
        assert rewards[:, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
        assert terms.all() and infos["episode_done"].all()
        assert infos["success"][:, 0].tolist() == [True, True, True, False]
        assert infos["episode"]["success_once"].tolist() == [True, True, True, False]
        assert infos["episode"]["episode_len"].tolist() == [1, 1, 1, 1]
        assert infos["final_observation"]["task_descriptions"] == obs["task_descriptions"]
        assert env.batch.last_responses[1] == "The answer is \\boxed{2}"
        new = obs2["task_descriptions"]  # auto-reset: fresh prompts, still shared within groups
        assert new[0] == new[1] and new[2] == new[3]


def test_actions_in_float_or_int_and_tokens_after_eos_are_ignored(tokenizer_dir, data_file, tokenizer):
    with make(tokenizer_dir, data_file, num_envs=2, group_size=1, max_response_tokens=6) as env:
        env.reset(initial_state_ids=[2, 5])
        actions = actions_for(tokenizer, ["3", "6"], length=6)
        actions[0, 0, 3] = float(tokenizer.convert_tokens_to_ids("9"))  # after EOS: not part of the response
        actions[1, 0, 3] = float(tokenizer.convert_tokens_to_ids("9"))  # after the first -1: ignored too
        actions[1, 0, 1] = float(PAD_ACTION)
        _, rewards, *_ = env.chunk_step(actions.long())
        assert rewards[:, 0].tolist() == [1.0, 1.0]
        env.reset(initial_state_ids=[2, 5])
        _, rewards, *_ = env.step(torch.full((2, 6), float(PAD_ACTION)))  # empty responses
        assert rewards.tolist() == [0.0, 0.0]
        with pytest.raises(ValueError, match=r"actions must be \[N=2, C, A=6\]"):
            env.chunk_step(torch.zeros(2, 1, 5))
