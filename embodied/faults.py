"""Faults injected on purpose, for the reliability drills (scripts/drill.py) and the tests of what they cause.

    INFLOW_FAULT="<site>@<n>[,<site>@<n>...]"

makes the n-th pass through a site, counted in each process, corrupt what passes through it (or, for
checkpoint.slow, delay it):

    env.obs        an env worker's observation (its first float tensor, first row) becomes NaN
    actor.loss     an actor rank's micro-batch loss becomes NaN
    actor.grad     an actor rank's first gradient after a mini-batch's backward passes becomes NaN
    actor.weights  an actor rank's first parameter becomes NaN before a weight sync
    checkpoint.slow  the driver's n-th checkpoint waits 2 s between its files and its commit (a slow disk):
                   the kill drill's moment "checkpoint-write", which a PushCube checkpoint otherwise passes in
                   a few ms

Unset (always, outside drills) nothing happens: each site costs one dictionary lookup. The variable reaches
the workers because an in-process Ray starts them from the driver's environment.
"""

from __future__ import annotations

import os
from collections import Counter
from functools import cache

import torch

ENV = "INFLOW_FAULT"
SITES = ("env.obs", "actor.loss", "actor.grad", "actor.weights", "checkpoint.slow")
_passes: Counter[str] = Counter()


@cache
def _plan() -> dict[str, int]:
    plan = {}
    for item in filter(None, os.environ.get(ENV, "").split(",")):
        site, _, n = item.strip().partition("@")
        if site not in SITES or not n.isdigit():
            raise ValueError(f"{ENV}={os.environ[ENV]!r}: each fault is <site>@<n> with a site of {SITES}")
        plan[site] = int(n)
    return plan


def due(site: str) -> bool:
    """Whether this pass through `site` is the one to corrupt."""
    wanted = _plan().get(site)
    if wanted is None:
        return False
    _passes[site] += 1
    return _passes[site] == wanted


def corrupt_first_float(tensors: dict) -> None:
    """NaN into the first row of the first float tensor of `tensors` (in place)."""
    for value in tensors.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            value[:1] = float("nan")
            return
