"""Placement (slot sets -> mode, CPU cores) and routing (envs -> units -> rollout and actor ranks); no Ray."""

from __future__ import annotations

import pytest

from algorithms.schema import ConfigError
from embodied.config import MAX_SLOTS, ClusterConfig
from embodied.placement import parse_slots, resolve_placement, slot_cores
from embodied.routing import BatchPiece, plan_rollout


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
    assert [plan.rollout_of_env(e) for e in (0, 7, 8, 15)] == [0, 0, 1, 1]
    # one round, every group in its own slot: one piece per (rollout, actor) overlap
    pieces = plan.route_groups([(0, g) for g in range(8)], group_size=2)
    assert pieces == {
        0: [BatchPiece(0, 0, 0, 0, 4), BatchPiece(1, 4, 0, 4, 8)],
        1: [BatchPiece(2, 8, 0, 8, 12), BatchPiece(3, 12, 0, 12, 16)],
    }


def test_rollout_pieces_reach_actors_of_a_different_group_size():
    plan = plan_rollout(
        num_envs=12, group_size=1, env_workers=1, stages=3, rollout_workers=3, actor_workers=2
    )
    pieces = plan.route_groups([(0, g) for g in range(12)], group_size=1)
    assert [(p.actor, p.env_start, p.env_stop) for r in range(3) for p in pieces[r]] == [
        (0, 0, 4),
        (0, 4, 6),
        (1, 6, 8),
        (1, 8, 12),
    ]


def test_groups_of_several_rounds_reach_the_actor_of_their_batch_slot():
    # 8 envs in groups of 2 (4 groups), 2 rollout workers (envs 0-3, 4-7), 2 actors (batch envs 0-3, 4-7)
    plan = plan_rollout(num_envs=8, group_size=2, env_workers=2, stages=1, rollout_workers=2, actor_workers=2)
    groups = [(0, 1), (0, 2), (1, 2), (1, 3)]  # slots 0..3: round 0 groups 1, 2; round 1 groups 2, 3
    pieces = plan.route_groups(groups, group_size=2)
    assert pieces == {
        # slot 0 (batch envs 0-1, actor 0) <- round 0 envs 2-3, held by rollout 0
        0: [BatchPiece(actor=0, batch_start=0, round=0, env_start=2, env_stop=4)],
        1: [
            BatchPiece(actor=0, batch_start=2, round=0, env_start=4, env_stop=6),
            # slots 2 and 3 continue one another: one piece of round 1, envs 4-7, to actor 1
            BatchPiece(actor=1, batch_start=4, round=1, env_start=4, env_stop=8),
        ],
    }
    with pytest.raises(ValueError, match="do not fill the batch's 8 env slots"):
        plan.route_groups(groups[:3], group_size=2)


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


def test_slot_sets_far_past_the_cluster_are_refused_without_expanding_them():
    # the config fuzz campaign found '0-<huge>' and 'all' on a huge slot count building lists until the OOM killer
    # ended it; now a range is cut at the cluster's end and the slot counts are bounded
    with pytest.raises(ConfigError, match=r"asks for slots 2-999999999999 but the cluster has 2 slots"):
        parse_slots("0-999999999999", 2, "env")
    with pytest.raises(ConfigError, match=r"asks for slots 3, 10-99999999999 but the cluster has 3 slots"):
        parse_slots("1,3,10-99999999999", 3, "env")
    with pytest.raises(ConfigError, match=r"asks for slot 7 but the cluster has 2 slots"):
        parse_slots("7", 2, "env")
    for key in ("num_cpus", "num_slots"):
        with pytest.raises(
            ConfigError, match=rf"cluster.{key}=1000000000000 is out of range; it must be <= 65536"
        ):
            ClusterConfig.from_dict({key: 10**12}, "cluster")
    assert ClusterConfig.from_dict({"num_cpus": MAX_SLOTS}).num_cpus == MAX_SLOTS
