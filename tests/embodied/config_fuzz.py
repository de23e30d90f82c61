"""Generated bad configs: every key of every shipped config given a wrong type, an out-of-range value, a
near-miss typo or an unknown name; whole groups removed or replaced; malformed placements; and bad command
lines. `validate` runs what a run checks before Ray starts (the typed config, `resume=`, embodied.preflight);
`judge` says whether the outcome is acceptable: accepted, or a ConfigError/CheckpointError naming the key.

Used by tests/embodied/test_config_fuzz.py (a bounded, derandomized number of examples) and scripts/drill.py
(the large campaign whose figures docs/reliability.md records).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from algorithms.schema import ConfigError
from embodied.checkpoint import CheckpointError, find_resume
from embodied.checkpoint_check import verify_checkpoint
from embodied.compose import REPO, config_schema, load_config, named_configs
from embodied.config import TrainConfig
from embodied.preflight import check_before_start, check_output_dir, check_paths, check_routing, check_slots

SHIPPED = tuple(named_configs())
GROUPS = ("env", "policy", "algorithm", "rollout", "actor", "cluster", "eval", "checkpoint", "logger", "run")
KINDS = (
    "wrong_type",
    "out_of_range",
    "typo",
    "unknown_key",
    "missing_group",
    "group_not_a_mapping",
    "placement",
)
# guidance words: an error says what would be accepted
ALLOWED_WORDS = (
    "allowed",
    "must",
    "expected",
    "valid keys",
    "did you mean",
    "use ",
    "write ",
    "required",
    "give ",
    "choose",
    "known",
    "raise ",
    "lower ",
    "set ",
    "point ",
    "change ",
    "looked for",
    "registered",
    "multiple of",
    "at most",
    "at least",
    "needs",
    "such as",
)


@functools.cache
def shipped_tree(name: str) -> dict[str, Any]:
    """The resolved tree of a shipped config (what load_config validates), composed once."""
    return load_config(name, schema=config_schema(name))[1]


def paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of the tree: sections and leaves."""
    out = []
    for key, value in tree.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out.extend(paths(value, (*prefix, key)))
    return out


def get(tree: dict, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


@dataclass
class Case:
    """One generated bad input: the config, what was done to which key, and the tree to validate."""

    config: str
    kind: str
    key: str  # dotted path of the key the error must name
    value: Any
    tree: dict[str, Any]

    def describe(self) -> str:
        return f"{self.config}: {self.kind} {self.key}={self.value!r}"


BAD_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=5), st.integers(), max_size=2),
)
OUT_OF_RANGE = st.sampled_from([-1, 0, -(10**9), 10**12, -0.5, 1.5, math.nan, math.inf, -math.inf])
SLOT_TEXT = st.one_of(
    st.text(alphabet="0123456789-, alx", max_size=8),
    st.integers(-5, 10**6),
    st.sampled_from(["", "all ", "1-0", "0,0", "99", "-1", "0-", "a-b", "0..3", None]),
)


def near_miss(key: str, draw) -> str:
    """A typo of `key`: a character dropped, doubled or swapped with its neighbour, or the case changed."""
    i = draw(st.integers(0, max(0, len(key) - 1)))
    how = draw(st.sampled_from(["drop", "double", "swap", "upper"]))
    if how == "drop" and len(key) > 1:
        return key[:i] + key[i + 1 :]
    if how == "swap" and i + 1 < len(key):
        return key[:i] + key[i + 1] + key[i] + key[i + 2 :]
    if how == "upper":
        return key[:i] + key[i].upper() + key[i + 1 :]
    return key[:i] + key[i] + key[i:]


@st.composite
def cases(draw, configs: tuple[str, ...] = SHIPPED) -> Case:
    name = draw(st.sampled_from(configs))
    tree = copy.deepcopy(shipped_tree(name))
    kind = draw(st.sampled_from(KINDS))
    if kind in ("missing_group", "group_not_a_mapping"):
        group = draw(st.sampled_from([g for g in GROUPS if g in tree]))
        value = (
            None
            if kind == "missing_group"
            else draw(st.one_of(st.integers(), st.text(max_size=5), st.lists(st.integers())))
        )
        if kind == "missing_group":
            del tree[group]
        else:
            tree[group] = value
        return Case(name, kind, group, value, tree)
    if kind == "placement":
        component = draw(st.sampled_from(["env", "rollout", "actor"]))
        value = draw(SLOT_TEXT)
        tree["cluster"]["component_placement"] = dict(
            tree["cluster"]["component_placement"] or {}, **{component: value}
        )
        tree["cluster"]["auto"] = False
        return Case(name, kind, f"cluster.component_placement.{component}", value, tree)
    all_paths = paths(tree)
    if kind in ("typo", "unknown_key"):
        sections = [()] + [
            p for p in all_paths if isinstance(get(tree, p), dict) and p[-1] != "component_placement"
        ]
        section = draw(st.sampled_from(sections))
        parent = get(tree, section)
        if kind == "typo":
            if not parent:
                return draw(cases(configs))
            original = draw(st.sampled_from(sorted(parent)))
            key = near_miss(original, draw)
            if key in parent:
                return draw(cases(configs))
            parent[key] = parent.pop(original)
        else:
            key = draw(st.from_regex(r"[a-z][a-z_]{2,12}", fullmatch=True))
            if key in parent:
                return draw(cases(configs))
            parent[key] = draw(BAD_VALUES)
        return Case(name, kind, ".".join((*section, key)), key, tree)
    leaves = [p for p in all_paths if not isinstance(get(tree, p), dict)]
    if kind == "out_of_range":
        leaves = [
            p for p in leaves if isinstance(get(tree, p), (int, float)) and not isinstance(get(tree, p), bool)
        ]
    path = draw(st.sampled_from(leaves))
    value = draw(OUT_OF_RANGE if kind == "out_of_range" else BAD_VALUES)
    get(tree, path[:-1])[path[-1]] = value
    return Case(name, kind, ".".join(path), value, tree)


@functools.cache
def needs_absent_files(name: str) -> bool:
    """Configs for checkpoints this machine lacks (a 7B model, a LIBERO fine-tune) fail the path check as they
    are; their mutations are checked by everything else."""
    try:
        check_paths(config_schema(name).from_dict(shipped_tree(name)))
    except ConfigError:
        return True
    return False


def validate(tree: dict[str, Any], schema: type[TrainConfig] = TrainConfig, files: bool = True) -> None:
    """What `embodied.train` checks before Ray starts (embodied.preflight.check_before_start, and the
    checkpoint `resume=` names); raises ConfigError or CheckpointError."""
    config = schema.from_dict(tree)
    output = config.run.output_dir
    runs = REPO / output if not output.startswith("/") else output
    resume = find_resume(config.resume, runs) if config.resume else None
    if files:
        check_before_start(config, resume)
        return
    placement = check_slots(config)
    if placement is not None:
        check_routing(config, placement)
    if resume is not None:
        verify_checkpoint(resume[1], config.policy)
    check_output_dir(Path(output))


def judge(case: Case) -> tuple[str, str]:
    """('accepted' | 'refused' | 'bad-message' | 'crash', detail) for one case."""
    try:
        validate(case.tree, config_schema(case.config), files=not needs_absent_files(case.config))
    except (ConfigError, CheckpointError) as exc:
        message = str(exc)
        if not names_key(message, case.key):
            return "bad-message", f"{case.describe()}: the error does not name {case.key}: {message}"
        if not any(word in message.lower() for word in ALLOWED_WORDS):
            return "bad-message", f"{case.describe()}: the error does not say what is allowed: {message}"
        return "refused", message
    except Exception as exc:  # noqa: BLE001 - what the campaign looks for
        return "crash", f"{case.describe()}: {type(exc).__name__}: {exc}"
    return "accepted", case.describe()


def names_key(message: str, key: str) -> bool:
    """The message names the key: its dotted path, or (for keys inside a section that is itself named) its
    last part."""
    last = key.rsplit(".", 1)[-1]
    return key in message or f"'{last}'" in message or f"{last}=" in message or f" {last} " in message
