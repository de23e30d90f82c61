"""The `algorithm:` config section: defaults, validation messages, presets."""

import pytest

from algorithms.config import AlgorithmConfig
from algorithms.schema import ConfigError


def test_defaults_and_presets_validate():
    assert AlgorithmConfig().advantage == "gae"
    dapo = AlgorithmConfig.from_dict(
        {
            "advantage": "grpo",
            "clip_ratio_high": 0.28,
            "loss_agg_mode": "token-mean",
            "dynamic_sampling": True,
            "overlong_max_length": 4096,
            "overlong_buffer": 512,
            "entropy_coef": 0,
            "gamma": 1,
        }
    )
    assert dapo.clip_ratio_high == 0.28 and isinstance(dapo.gamma, float)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"advantage": "grpoo"},
            "algorithm.advantage='grpoo' is not known. Did you mean \"grpo\"? Known: gae, grpo",
        ),
        ({"loss": "ppo2"}, "algorithm.loss='ppo2' is not known"),
        ({"loss_agg_mode": "token_mean"}, 'Did you mean "token-mean"?'),
        ({"kl_estimator": "k4"}, "algorithm.kl_estimator='k4' is not allowed"),
        ({"gama": 0.9}, "unknown config key 'algorithm.gama'. Did you mean 'algorithm.gamma'?"),
        ({"gamma": 1.5}, "algorithm.gamma=1.5 is out of range; it must be <= 1.0"),
        ({"clip_ratio_c": 1.0}, "algorithm.clip_ratio_c=1.0 is out of range; it must be > 1.0"),
        (
            {"overlong_max_length": 100, "overlong_buffer": 100},
            "algorithm.overlong_buffer=100 must be smaller",
        ),
    ],
)
def test_errors_name_key_value_and_what_is_allowed(data, message):
    with pytest.raises(ConfigError) as err:
        AlgorithmConfig.from_dict(data, path="algorithm")
    assert message in str(err.value)


def test_every_field_has_help():
    lines = AlgorithmConfig.describe(prefix="algorithm.")
    assert len(lines) >= 25
    assert all("  # " in line and not line.endswith("# ") for line in lines)
