"""Generated bad input (hypothesis, derandomized, a bounded number of examples): every key of every shipped
config with a wrong type, an out-of-range value, a near-miss typo or an unknown name, groups removed or
replaced, malformed placements, and raw `key=value` command-line overrides. Each is accepted or refused with a
ConfigError (or CheckpointError) naming the key and what is allowed, never another exception, and nothing
starts Ray. The large campaign: `python scripts/drill.py fuzz` (docs/reliability.md)."""

from __future__ import annotations

import pytest
from config_fuzz import cases, judge, paths, shipped_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from algorithms.schema import ConfigError
from embodied.compose import load_config

# configs that cover every group type (state, rgb, VLA, flow VLA, LLM, LIBERO eval); the campaign takes all
COVERING = (
    "maniskill_ppo_pushcube",
    "maniskill_ppo_pushcube_rgb",
    "maniskill_grpo_openvla_oft",
    "colour_targets_ppo_pi0",
    "math_dapo",
    "eval_libero",
)
FAST = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.fixture(scope="module", autouse=True)
def no_ray_start():
    """Validation must never start Ray: any ray.init during these tests fails them."""
    import ray

    original = ray.init

    def refuse(*args, **kwargs):
        raise AssertionError("ray.init was called while validating a config")

    ray.init = refuse
    yield
    ray.init = original


@FAST
@given(cases(COVERING))
def test_every_generated_bad_config_is_accepted_or_refused_with_the_key_named(case):
    verdict, detail = judge(case)
    assert verdict in ("accepted", "refused"), detail


@settings(FAST, max_examples=12)  # each composes with Hydra (0.3-1 s); the campaign runs thousands
@given(data=st.data())
def test_raw_command_line_overrides_never_raise_anything_but_a_config_error(data):
    name = data.draw(st.sampled_from(COVERING))
    key = ".".join(data.draw(st.sampled_from(paths(shipped_tree(name)))))
    value = data.draw(st.text(alphabet="ab01-_.,:=[]{}()'\" \\$", max_size=10))
    try:
        load_config(name, [f"{key}={value}"])
    except ConfigError as exc:
        assert str(exc), "an empty message"


def test_near_miss_typos_get_the_closest_key_named():
    with pytest.raises(ConfigError, match=r"unknown config key 'actor.lrr'. Did you mean 'actor.lr'\?"):
        load_config("maniskill_ppo_pushcube", ["actor.lrr=1e-4"])
    with pytest.raises(ConfigError, match=r"config key 'policy.name' is required: .*; is 'nmae' a typo\?"):
        load_config("maniskill_ppo_pushcube", ["~policy.name", "+policy.nmae=mlp"])
    with pytest.raises(ConfigError, match=r"policy.name='mpl': unknown policy 'mpl'. Did you mean \"mlp\"\?"):
        load_config("maniskill_ppo_pushcube", ["policy.name=mpl"])
    with pytest.raises(ConfigError, match=r"actor.lr=inf is not allowed; it must be a finite number"):
        load_config("maniskill_ppo_pushcube", ["actor.lr=inf"])
