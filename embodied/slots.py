"""Slots without Ray or torch: which CPU cores a slot gets, and the mode a placement's slot sets give.

Shared by `embodied.placement` (the placement a run asks for) and `embodied.cost_model` (the placements auto
placement considers), which must stay importable without torch.
"""

from __future__ import annotations

from collections.abc import Iterable


def slot_cores(slot: int, num_slots: int, cores: list[int]) -> list[int]:
    """The CPU cores of `slot` when `num_slots` slots share `cores`: contiguous groups, or round-robin when
    there are more slots than cores."""
    if num_slots >= len(cores):
        return [cores[slot % len(cores)]]
    base, extra = divmod(len(cores), num_slots)
    start = slot * base + min(slot, extra)
    return cores[start : start + base + (slot < extra)]


def placement_mode(slot_sets: Iterable[Iterable[int]]) -> str:
    """collocated (every component on the same slots), disaggregated (pairwise disjoint) or hybrid."""
    sets = [set(s) for s in slot_sets]
    if all(s == sets[0] for s in sets):
        return "collocated"
    if all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1 :]):
        return "disaggregated"
    return "hybrid"
