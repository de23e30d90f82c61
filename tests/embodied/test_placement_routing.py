"""Placement (slot sets -> mode, CPU cores) and routing (envs -> units -> rollout and actor ranks); no Ray."""

from __future__ import annotations

import pytest

from algorithms.schema import ConfigError
from embodied.config import ClusterConfig
from embodied.placement import parse_slots, resolve_placement, slot_cores
from embodied.routing import plan_rollout


def placement(env, rollout, actor, num_slots=2):
    config = ClusterConfig.from_dict(
        {"component_placement": {"env": env, "rollout": rollout, "actor": actor}}
    )
    return resolve_placement(config, num_slots)


def test_slot_sets():
    assert parse_slots("all", 4, "env") == (0, 1, 2, 3)
    assert parse_slots("1-3", 4, "env") == (1, 2, 3)
    assert parse_slots("0,2", 4, "env") == (0, 2)
    assert parse_slots(1, 4, "env") == (1,)
    assert parse_slots("0-1,3", 4, "env") == (0, 1, 3)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0-5", r"asks for slots 2, 3, 4, 5 but the cluster has 2 slots"),
        ("3-1", "runs backwards"),
        ("gpu0", "is not a slot set"),
        ("0,0", "names a slot twice"),
    ],
)
def test_bad_slot_sets_name_the_component(spec, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_slots(spec, 2, "actor")
    assert "cluster.component_placement.actor" in str(info.value)


def test_modes_follow_from_the_overlap():
    assert placement("all", "all", "all").mode == "collocated"
    assert placement("0", "1", "2", num_slots=3).mode == "disaggregated"
    assert placement("0", "1", "all").mode == "hybrid"
    assert placement("all", "all", "0").mode == "hybrid"
    p = placement("all", "all", "0")
    assert p.workers_on(0) == 3 and p.workers_on(1) == 2
    assert p.shares_slots("actor", "rollout")


def test_unknown_and_missing_components_are_config_errors():
    with pytest.raises(ConfigError, match="unknown component 'rolout'.*Did you mean \"rollout\""):
        ClusterConfig.from_dict({"component_placement": {"env": "all", "rolout": "all", "actor": "all"}})
    with pytest.raises(ConfigError, match="lacks 'actor'"):
        ClusterConfig.from_dict({"component_placement": {"env": "all", "rollout": "all"}})


def test_slot_cores():
    assert slot_cores(0, 2, [0, 1]) == [0] and slot_cores(1, 2, [0, 1]) == [1]
    assert slot_cores(2, 3, [0, 1]) == [0]  # more slots than cores: round-robin
    assert slot_cores(1, 2, [0, 1, 2, 3, 4]) == [3, 4]
    assert slot_cores(0, 1, [4, 5]) == [4, 5]


def test_units_cover_the_envs_and_are_dealt_in_blocks():
    plan = plan_rollout(
        num_envs=16, group_size=2, env_workers=2, stages=2, rollout_workers=2, actor_workers=4
    )
    assert [(u.env_rank, u.stage, u.env_start, u.num_envs, u.rollout_rank) for u in plan.units] == [
        (0, 0, 0, 4, 0),
        (0, 1, 4, 4, 0),
        (1, 0, 8, 4, 1),
        (1, 1, 12, 4, 1),
    ]
    assert plan.rollout_range(1) == (8, 16)
    assert plan.actor_pieces(0) == [(0, 0, 4), (1, 4, 8)]
    assert plan.rollout_sources(3) == [1]


def test_rollout_pieces_reach_actors_of_a_different_group_size():
    plan = plan_rollout(
        num_envs=12, group_size=1, env_workers=1, stages=3, rollout_workers=3, actor_workers=2
    )
    assert [p for r in range(3) for p in plan.actor_pieces(r)] == [
        (0, 0, 4),
        (0, 4, 6),
        (1, 6, 8),
        (1, 8, 12),
    ]
    assert plan.rollout_sources(0) == [0, 1] and plan.rollout_sources(1) == [1, 2]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_envs=10, env_workers=2, stages=2), "cannot be split into 2 env worker"),
        (dict(num_envs=8, env_workers=2, stages=2, group_size=4), "not a multiple of env.group_size=4"),
        (dict(num_envs=8, env_workers=1, stages=1, rollout_workers=2), "some would idle"),
        (dict(num_envs=8, env_workers=2, stages=1, actor_workers=3), "over 3 actor worker"),
    ],
)
def test_plans_that_do_not_divide_name_the_keys(kwargs, message):
    args = (
        dict(num_envs=8, group_size=1, env_workers=1, stages=1, rollout_workers=1, actor_workers=1) | kwargs
    )
    with pytest.raises(ConfigError, match=message):
        plan_rollout(**args)
