"""Composing configs with Hydra and validating them into `TrainConfig`: typos, types, ranges, groups, help."""

from __future__ import annotations

import subprocess
import sys

import pytest

from algorithms.schema import ConfigError
from embodied.compose import CONFIG_DIR, config_schema, describe, load_config, named_configs
from embodied.config import TrainConfig


@pytest.mark.parametrize("name", named_configs())
def test_every_named_config_loads(name):
    schema = config_schema(name)  # TrainConfig, or SFTConfig for the supervised configs
    config, tree = load_config(name, schema=schema)
    assert isinstance(config, TrainConfig)
    assert schema.from_dict(tree) == config  # the stored tree rebuilds the same config
    assert config.run.name.startswith(name)  # eval_libero names its runs per suite: eval_libero_spatial, ...


def test_group_choice_and_value_overrides():
    config, _ = load_config(
        "maniskill_ppo_pushcube", ["cluster=disaggregated", "actor.lr=1e-4", "env.num_envs=4", "resume=auto"]
    )
    assert config.cluster.component_placement == {"env": "0", "rollout": "1", "actor": "2"}
    assert config.actor.lr == 1e-4 and config.env.num_envs == 4 and config.resume == "auto"


def test_a_yaml_path_outside_configs_can_use_the_groups(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "defaults:\n  - env: maniskill_pickcube\n  - policy: mlp\n  - _self_\nrollout:\n  num_steps: 7\n"
    )
    config, _ = load_config(str(path))
    assert config.env.task == "PickCube-v1" and config.rollout.num_steps == 7 and config.run.name == "mine"


@pytest.mark.parametrize(
    "override, message",
    [
        ("actor.lrr=1e-4", r"unknown config key 'actor.lrr'. Did you mean 'actor.lr'\?"),
        ("algorithm.gama=0.9", r"unknown config key 'algorithm.gama'. Did you mean 'algorithm.gamma'\?"),
        ("env.tsk=PickCube-v1", r"unknown config key 'env.tsk'. Did you mean 'env.task'\?"),
        ("rollout.num_steps=-3", r"rollout.num_steps=-3 is out of range; it must be >= 1"),
        ("actor.lr=fast", r"actor.lr='fast' has the wrong type; expected a number"),
        ("env.obs_mode=depth", r"env.obs_mode='depth' is not allowed.*Allowed: 'state', 'rgb'"),
        ("cluster=disagregated", r"Did you mean \"disaggregated\"\? Options for cluster: .*collocated"),
        ("policy.name=mpl", r"unknown policy 'mpl'. Did you mean \"mlp\"\?"),
    ],
)
def test_bad_overrides_name_the_key_and_what_is_allowed(override, message):
    with pytest.raises((ConfigError, KeyError), match=message):
        load_config("maniskill_ppo_pushcube", [override])


def test_unknown_config_name_lists_the_configs():
    with pytest.raises(ConfigError, match='Did you mean "maniskill_ppo_pushcube"'):
        load_config("maniskill_ppo_pushcub")


def test_describe_has_every_key_with_a_help_line():
    config, _ = load_config("maniskill_ppo_pushcube")
    lines = describe(config)
    keys = [line.split(" = ")[0] for line in lines if " = " in line]
    for key in (
        "run.total_env_steps",
        "env.task",
        "policy.hidden_sizes",
        "algorithm.gamma",
        "actor.value_lr",
        "cluster.component_placement",
        "rollout.pipeline_stages",
        "eval.num_episodes",
        "resume",
    ):
        assert key in keys
    assert all(line.split("  # ", 1)[1].strip() for line in lines), "a key without a help line"


def test_every_yaml_file_is_documented_by_a_comment():
    for path in CONFIG_DIR.rglob("*.yaml"):
        assert path.read_text().lstrip().startswith("#"), f"{path} has no leading comment"


def test_command_line_help_and_errors():
    run = [sys.executable, "-m", "embodied.train"]
    out = subprocess.run([*run, "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "maniskill_ppo_pushcube" in out.stdout
    out = subprocess.run([*run, "describe", "actor.lr=0.001"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "actor.lr = 0.001  # learning rate" in out.stdout
    out = subprocess.run([*run, "actor.lrr=1"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Did you mean 'actor.lr'" in out.stderr
