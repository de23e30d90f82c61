"""Name -> object registries with errors that list the known names.

This module and `algorithms.schema` sit at the bottom of the dependency graph (embodied -> policies -> envs ->
algorithms), so every layer registers its parts with the same mechanism: `@register_advantage`,
`@register_loss`, `@register_env`, `@register_policy` are all `Registry.register`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """Raised when a registry is asked for a name it does not hold."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


def did_you_mean(name: str, known: list[str]) -> str:
    """' Did you mean "x"?' for the closest known name, or '' when none is close."""
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f' Did you mean "{close[0]}"?' if close else ""


class Registry(Generic[T]):
    """A named collection of `kind`s (envs, policies, losses, ...), filled by a decorator.

    >>> losses = Registry("loss")
    >>> @losses.register("ppo")
    ... def ppo_loss(...): ...
    >>> losses.get("ppo")
    """

    def __init__(self, kind: str, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint  # appended to unknown-name errors, e.g. which extra installs more entries
        self._entries: dict[str, T] = {}
        self._lazy: dict[str, tuple[str, str]] = {}  # name -> (module that registers it, extra it needs)

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries and self._entries[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def register_lazy(self, name: str, module: str, extra: str = "") -> None:
        """Announce `name`, registered when `module` is imported (on first `get`), so that listing names and
        typo errors need no heavy import. `extra` is the pip extra the module's dependencies come from."""
        self._lazy[name] = (module, extra)

    def get(self, name: str) -> T:
        if name not in self._entries and name in self._lazy:
            module, extra = self._lazy[name]
            try:
                importlib.import_module(module)
            except ImportError as exc:
                how = (
                    f"pip install -e .[{extra}] (or bash scripts/setup.sh)"
                    if extra
                    else "bash scripts/setup.sh"
                )
                raise ImportError(
                    f"{self.kind} {name!r} needs {exc.name or exc}, which is not installed: {how}"
                ) from exc
        if name not in self._entries:
            known = self.names()
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}.{did_you_mean(name, known)} "
                f"Registered {self.kind}s: {', '.join(known) or '(none)'}.{(' ' + self.hint) if self.hint else ''}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(set(self._entries) | set(self._lazy))

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
