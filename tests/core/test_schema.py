"""The typed config schema: typo errors with suggestions, type and range errors naming key and value."""

from dataclasses import dataclass
from typing import Literal

import pytest

from algorithms.registry import Registry, UnknownNameError
from algorithms.schema import Config, ConfigError, param


@dataclass(frozen=True)
class Inner(Config):
    lr: float = param(1e-3, help="learning rate", gt=0)
    mode: Literal["fast", "slow"] = param("fast", help="speed mode")


@dataclass(frozen=True)
class Outer(Config):
    gamma: float = param(0.99, help="discount", ge=0.0, le=1.0)
    num_envs: int = param(4, help="envs", ge=1)
    tasks: tuple[str, ...] = param((), help="task names")
    inner: Inner = param(factory=Inner, help="nested section")
    limit: int | None = param(None, help="optional limit")
    backend: str = param("cpu", help="backend", choices=("cpu", "gpu"))


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        Outer.from_dict(data, path="run")
    return str(info.value)


def test_valid_dict_builds_and_converts_types():
    cfg = Outer.from_dict({"gamma": 1, "tasks": ["a", "b"], "inner": {"lr": 2}}, path="run")
    assert cfg.gamma == 1.0 and isinstance(cfg.gamma, float)
    assert cfg.tasks == ("a", "b")
    assert cfg.inner == Inner(lr=2.0, mode="fast")
    assert Outer.from_dict(cfg.to_dict()) == cfg


def test_typo_names_the_full_key_and_the_closest_valid_one():
    assert error_of({"gama": 0.9}).startswith("unknown config key 'run.gama'. Did you mean 'run.gamma'?")
    assert "'run.inner.lrr'. Did you mean 'run.inner.lr'?" in error_of({"inner": {"lrr": 1}})


def test_wrong_type_and_range_name_key_value_and_what_is_allowed():
    assert error_of({"num_envs": "x"}) == "run.num_envs='x' has the wrong type; expected an integer"
    assert error_of({"gamma": 2}) == "run.gamma=2.0 is out of range; it must be <= 1.0"
    assert error_of({"inner": {"mode": "fats"}}) == (
        "run.inner.mode='fats' is not allowed. Did you mean \"fast\"? Allowed: 'fast', 'slow'"
    )
    assert error_of({"tasks": ["a", 3]}) == "run.tasks[1]=3 has the wrong type; expected a string"
    assert "Allowed: 'cpu', 'gpu'" in error_of({"backend": "tpu"})
    assert error_of({"limit": "s"}) == "run.limit='s' has the wrong type; expected int or null"


def test_direct_construction_validates_too():
    with pytest.raises(ConfigError, match=r"^gamma=-1.0 is out of range"):
        Outer(gamma=-1.0)
    assert Outer().replace(num_envs=8).num_envs == 8
    with pytest.raises(ConfigError, match="num_envs=0"):
        Outer().replace(num_envs=0)


def test_describe_lists_every_field_with_its_help():
    lines = Outer.describe()
    assert "gamma: float = 0.99  # discount" in lines
    assert any(line.startswith("inner.lr: float = 0.001  # learning rate") for line in lines)
    assert len(lines) == 8  # 5 plain fields, the nested section header, its 2 fields


def test_registry_errors_list_known_names_and_suggest():
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    reg.register_lazy("beta", "module_that_does_not_exist_xyz", extra="vla")
    assert reg.names() == ["alpha", "beta"]
    with pytest.raises(
        UnknownNameError,
        match=r"unknown widget 'alpah'. Did you mean \"alpha\"\? Registered widgets: alpha, beta",
    ):
        reg.get("alpah")
    with pytest.raises(ImportError, match=r"pip install -e \.\[vla\]"):
        reg.get("beta")
