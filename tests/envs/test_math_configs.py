"""Every math run config composes and validates (a typo in a key or value fails here, not after start-up)."""

import pytest

from embodied.compose import load_config, named_configs

MATH_CONFIGS = [name for name in named_configs() if name.startswith("math_")]


def test_the_math_configs_exist():
    expected = {"math_grpo", "math_dapo", "math_ppo", "math_reinforce_pp", "math_grpo_qwen2_5_math_1_5b"}
    assert expected <= set(MATH_CONFIGS)


@pytest.mark.parametrize("name", MATH_CONFIGS)
def test_math_config_composes(name):
    config, tree = load_config(name, ["actor.lr=1e-5"])
    assert config.env.name == "math" and config.policy.name == "causal_lm"
    assert config.env.tokenizer == config.policy.pretrained  # the env decodes with the policy's tokenizer
    assert (
        config.rollout.num_steps == 1 and config.rollout.reset_every_epoch
    )  # one response per env per epoch
    assert config.algorithm.logprob_granularity == "token"  # a ratio per response token
    assert config.eval.first_initial_state == 0  # initial states are problem indices
    assert config.env.num_envs % config.env.group_size == 0
    assert tree["actor"]["lr"] == 1e-5
