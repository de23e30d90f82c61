"""Typed, self-validating configuration sections.

Every config section of the suite is a frozen dataclass deriving from `Config`, whose fields are declared with
`param(default, help=..., choices=..., ge=..., ...)`: a default, a one-line description, and what is allowed.
A section validates itself on construction; `from_dict` builds one from the plain tree Hydra composed and names
the key and the closest valid one on a typo:

    @dataclass(frozen=True)
    class PPOConfig(Config):
        gamma: float = param(0.99, help="discount factor", ge=0.0, le=1.0)

    PPOConfig.from_dict({"gama": 0.9}, path="algorithm")
    # ConfigError: unknown config key 'algorithm.gama'. Did you mean 'algorithm.gamma'? ...

Sections whose concrete class depends on a name (a policy's config depends on `policy.name`) override
`Config.subclass_for(name)`; `from_dict` then builds the class registered under that name.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from algorithms.registry import UnknownNameError, did_you_mean

C = TypeVar("C", bound="Config")
_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config value or key that is not allowed; the message names the key, the value and what is allowed.

    Raised with the key relative to the section being built; each enclosing section prefixes its own name
    (`within`), so the message the user reads carries the full dotted key, e.g. `algorithm.gamma`.
    """

    def __init__(self, template: str, key: str = "", section: str = "") -> None:
        super().__init__(template)
        self.template, self.key, self.section = template, key, section

    def __str__(self) -> str:
        try:
            return self.template.format(key=self.key, section=self.section)
        except (KeyError, IndexError, ValueError):  # braces of a quoted error text that were not escaped
            return self.template.replace("{key}", self.key).replace("{section}", self.section)

    def within(self, section: str) -> ConfigError:
        if not section:
            return self
        sep = "" if self.key.startswith("[") else "."
        key = f"{section}{sep}{self.key}" if self.key else section
        return ConfigError(self.template, key, f"{section}.{self.section}")


def param(
    default: Any = _MISSING,
    *,
    help: str,
    choices: typing.Sequence[Any] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    factory: typing.Callable[[], Any] | None = None,
) -> Any:
    """A config field: `default` (or `factory` for mutable defaults), a one-line `help`, and its constraints."""
    meta = {"help": help, "choices": choices, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return tp.__name__
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is Union or origin is types.UnionType:
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return f"mapping to {_type_name(get_args(tp)[1])}" if get_args(tp) else "mapping"
    return str(tp)


def _wrong_type(value: Any, expected: str) -> ConfigError:
    return ConfigError(
        "{key}="
        + repr(value).replace("{", "{{").replace("}", "}}")
        + f" has the wrong type; expected {expected}"
    )


def _convert(value: Any, tp: Any) -> Any:
    """Check `value` against type `tp`; return it converted (int -> float, list -> tuple, dict -> Config).

    Raises ConfigError with an empty key: the caller fills in the field name through `within`.
    """
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        if value not in get_args(tp):
            shown = repr(value).replace("{", "{{").replace("}", "}}")
            hint = did_you_mean(str(value), [str(a) for a in get_args(tp)])
            raise ConfigError("{key}=" + shown + f" is not allowed.{hint} Allowed: {_type_name(tp)[7:]}")
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in get_args(tp):
            return None
        for arg in get_args(tp):
            if arg is not type(None):
                try:
                    return _convert(value, arg)
                except ConfigError:
                    pass
        raise _wrong_type(value, _type_name(tp))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _wrong_type(value, _type_name(tp))
        args = [a for a in get_args(tp) if a is not Ellipsis]
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_convert(item, args[0]) if args else item)
            except ConfigError as exc:
                raise ConfigError(exc.template, f"[{i}]") from None
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise _wrong_type(value, _type_name(tp))
        args = get_args(tp)
        out = {}
        for k, v in value.items():
            try:
                out[str(k)] = _convert(v, args[1]) if args else v
            except ConfigError as exc:
                raise exc.within(str(k)) from None
        return out
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _wrong_type(value, f"a mapping of {tp.__name__} keys")
        return tp.from_dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _wrong_type(value, "a number")
        if not math.isfinite(value):  # a NaN passes every bound check, an inf every lower one
            raise ConfigError("{key}=" + repr(value) + " is not allowed; it must be a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(value, "an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _wrong_type(value, "true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise _wrong_type(value, "a string")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _wrong_type(value, _type_name(tp))
    return value


def _check_constraints(value: Any, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    shown = repr(value).replace("{", "{{").replace("}", "}}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        hint = did_you_mean(str(value), [str(c) for c in choices])
        raise ConfigError(
            "{key}=" + shown + f" is not allowed.{hint} Allowed: {', '.join(map(repr, choices))}"
        )
    bounds = [
        ("ge", ">=", lambda v, b: v >= b),
        ("gt", ">", lambda v, b: v > b),
        ("le", "<=", lambda v, b: v <= b),
        ("lt", "<", lambda v, b: v < b),
    ]
    for key, symbol, ok in bounds:
        bound = meta.get(key)
        if bound is not None and isinstance(value, (int, float)) and not ok(value, bound):
            raise ConfigError("{key}=" + shown + f" is out of range; it must be {symbol} {bound}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config section. Subclasses are `@dataclass(frozen=True)` with `param(...)` fields."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            try:
                value = _convert(getattr(self, f.name), hints[f.name])
                _check_constraints(value, f.metadata)
            except ConfigError as exc:
                raise exc.within(f.name) from None
            object.__setattr__(self, f.name, value)
        self.check()

    def check(self) -> None:
        """Cross-field validation; override and raise ConfigError naming the keys involved."""

    @classmethod
    def subclass_for(cls, name: str) -> type[Config]:
        """The concrete class for a section whose `name` key selects it (policies, envs); default: cls."""
        return cls

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any], path: str = "") -> C:
        """Build and validate a section from a plain mapping.

        `path` is the section's dotted name, used in error messages (`algorithm.gamma=...`).
        """
        try:
            return cls._from_dict(data)
        except ConfigError as exc:
            raise exc.within(path) from None

    @classmethod
    def _from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        if not isinstance(data, Mapping):
            raise _wrong_type(data, f"a mapping of {cls.__name__} keys")
        try:
            target = cls.subclass_for(str(data["name"])) if "name" in data else cls
        except UnknownNameError as exc:  # a registry's error lists the known names
            text = f"{data['name']!r}: {exc}".replace("{", "{{").replace("}", "}}")  # a format template
            raise ConfigError("{key}=" + text, "name") from None
        names = [f.name for f in dataclasses.fields(target)]
        unknown = [str(key) for key in data if key not in names]
        for f in dataclasses.fields(target):  # first: a missing `name` decides which keys are valid at all
            if f.name not in data and f.default is _MISSING and f.default_factory is _MISSING:
                close = did_you_mean(f.name, unknown)  # a key typed wrongly, e.g. 'nmae' for 'name'
                typo = close.replace(' Did you mean "', "; is '").replace('"?', "' a typo?")
                help_line = f.metadata.get("help", "")
                raise ConfigError("config key '{key}' is required: " + help_line + typo, f.name)
        for key in unknown:
            close = did_you_mean(key, names).replace(' "', " '{section}").replace('"?', "'?")
            raise ConfigError(
                "unknown config key '{key}'." + close + " Valid keys here: " + ", ".join(names), key
            )
        try:
            return target(**data)
        except TypeError as exc:  # e.g. a positional mismatch the checks above did not foresee
            raise ConfigError(f"{{key}}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML-ready mapping of this section (nested sections included)."""

        def plain(v: Any) -> Any:
            if isinstance(v, Config):
                return v.to_dict()
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self: C, **changes: Any) -> C:
        """A copy with some fields changed, validated again."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def describe(cls, prefix: str = "") -> list[str]:
        """One line per field: `key: type = default  # help`, nested sections expanded."""
        hints = typing.get_type_hints(cls)
        lines = []
        for f in dataclasses.fields(cls):
            key = f"{prefix}{f.name}"
            tp = hints[f.name]
            if isinstance(tp, type) and issubclass(tp, Config):
                lines.append(f"{key}:  # {f.metadata.get('help', '')}")
                lines.extend(tp.describe(prefix=key + "."))
                continue
            if f.default is not _MISSING:
                default = repr(f.default)
            elif f.default_factory is not _MISSING:
                default = repr(f.default_factory())
            else:
                default = "(required)"
            lines.append(f"{key}: {_type_name(tp)} = {default}  # {f.metadata.get('help', '')}")
        return lines
