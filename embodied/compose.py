"""From YAML files and `key=value` overrides to a validated `TrainConfig`.

Configs live in `configs/`: a run config (e.g. `maniskill_ppo_pushcube.yaml`) has a Hydra defaults list that
picks one file from each group folder (`env/`, `policy/`, `algorithm/`, `cluster/`) and then sets its own
keys on top. Command-line arguments are either group choices (`cluster=disaggregated`, Hydra composes
them) or values (`actor.lr=1e-4`, `env.num_envs=16`, `resume=auto`), which are applied after composition
so that a key that does not exist reaches the typed config, whose error names the closest valid key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from algorithms.registry import did_you_mean
from algorithms.schema import Config, ConfigError
from embodied.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"


def config_groups(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.name for p in config_dir.iterdir() if p.is_dir() and not p.name.startswith((".", "_")))


def named_configs(config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in config_dir.glob("*.yaml"))


def _locate(config: str) -> tuple[Path, str]:
    """(config folder, config name) of a named config in configs/ or a path to a YAML file."""
    path = Path(config)
    if path.suffix in (".yaml", ".yml") or path.exists():
        path = path.resolve()
        if not path.is_file():
            raise ConfigError(f"config file {config} does not exist")
        return path.parent, path.stem
    if not (CONFIG_DIR / f"{config}.yaml").is_file():
        known = named_configs()
        raise ConfigError(
            f"unknown config {config!r}.{did_you_mean(config, known)} Configs in {CONFIG_DIR}: {', '.join(known)}"
        )
    return CONFIG_DIR, config


_DELETE = object()  # the value of a `~key` override


def _split_overrides(overrides: Sequence[str], groups: list[str]) -> tuple[list[str], list[tuple[str, Any]]]:
    """Group choices (for Hydra) and (dotted key, parsed value) pairs (applied after composition)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    choices, values = [], []
    for text in overrides:
        if "=" not in text and not text.startswith("~"):
            raise ConfigError(f"override {text!r} is not of the form key=value (e.g. actor.lr=1e-4)")
        try:
            override = parser.parse_override(text)
        except Exception as exc:  # hydra's grammar errors
            raise ConfigError(f"cannot parse override {text!r}: {exc}") from None
        key = override.key_or_group
        if override.is_sweep_override():
            raise ConfigError(
                f"override {text!r} is a sweep (several runs), not one value; quote a string "
                f"({key}='...') or give a list ({key}=[...])"
            )
        if key in groups:
            choices.append(text)
        elif override.is_delete():  # ~key: the key is removed (a required one is then reported missing)
            values.append((key, _DELETE))
        else:
            values.append((key, override.value()))
    return choices, values


def _compose(config_dir: Path, name: str, choices: list[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException

    search = [] if config_dir == CONFIG_DIR else [f"hydra.searchpath=[file://{CONFIG_DIR}]"]
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=name, overrides=[*choices, *search])
    except MissingConfigException as exc:
        group = next((c.split("=")[0] for c in choices if c.split("=")[0] in str(exc)), None)
        options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml")) if group else []
        wanted = next((c.split("=", 1)[1] for c in choices if c.split("=")[0] == group), "")
        hint = f"{did_you_mean(wanted, options)} Options for {group}: {', '.join(options)}" if options else ""
        raise ConfigError(f"{str(exc).splitlines()[0]}.{hint}") from None
    except HydraException as exc:
        raise ConfigError(f"cannot compose config {name!r}: {exc}") from None
    except ValueError as exc:  # e.g. a group given a number (env=0)
        groups = sorted({c.split("=")[0] for c in choices})
        files = {g: ", ".join(sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml"))) for g in groups}
        options = "; ".join(f"{g}: {names}" for g, names in files.items())
        given = ", ".join(choices)
        raise ConfigError(f"{given}: {exc}. A group takes the name of one of its files ({options})") from None


def load_config(
    config: str, overrides: Sequence[str] = (), schema: type[TrainConfig] = TrainConfig
) -> tuple[TrainConfig, dict[str, Any]]:
    """Compose `config` (a name in configs/ or a YAML path) with `overrides`; return the validated `schema`
    (a `TrainConfig`, or e.g. an `SFTConfig`) and the resolved plain tree (what is logged and stored in
    checkpoints)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    config_dir, name = _locate(config)
    choices, values = _split_overrides(overrides, config_groups())
    composed = _compose(config_dir, name, choices)
    OmegaConf.set_struct(composed, False)
    try:
        for key, value in values:
            if value is _DELETE:
                parent, _, leaf = key.rpartition(".")
                node = OmegaConf.select(composed, parent) if parent else composed
                if node is not None and leaf in node:
                    del node[leaf]
            else:
                OmegaConf.update(composed, key, value, merge=False, force_add=True)
        tree = OmegaConf.to_container(composed, resolve=True)
    except OmegaConfBaseException as exc:  # e.g. a value that interpolates a key that does not exist
        where = getattr(exc, "full_key", None) or ", ".join(k for k, _ in values)
        reason = str(exc).splitlines()[0]
        raise ConfigError(f"{where}: {reason}; write the value as a plain string or number") from None
    tree.pop("hydra", None)
    run = tree.setdefault("run", {})
    if isinstance(run, dict):  # anything else fails validation below, with the key named
        run.setdefault("name", name)
    typed = schema.from_dict(tree)
    return typed, typed.to_dict()


def config_schema(config: str) -> type[TrainConfig]:
    """The config class of a named config or YAML path: `SFTConfig` for a supervised fine-tuning run's (it has
    an `sft` section; scripts/run_sft.sh), `TrainConfig` otherwise."""
    import yaml

    from embodied.sft_config import SFTConfig

    config_dir, name = _locate(config)
    path = next((p for p in (config_dir / f"{name}.yaml", config_dir / f"{name}.yml") if p.is_file()), None)
    tree = yaml.safe_load(path.read_text()) if path is not None else None
    return SFTConfig if isinstance(tree, dict) and "sft" in tree else TrainConfig


def describe(config: Config, prefix: str = "") -> list[str]:
    """One line per key of a built config: `key = value  # help` (nested sections expanded)."""
    import dataclasses

    lines = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = f"{prefix}{f.name}"
        if isinstance(value, Config):
            lines.append(f"{key}:  # {f.metadata.get('help', '')}")
            lines.extend(describe(value, prefix=key + "."))
        else:
            lines.append(f"{key} = {value!r}  # {f.metadata.get('help', '')}")
    return lines
