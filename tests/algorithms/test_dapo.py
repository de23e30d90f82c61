"""DAPO dynamic sampling and over-long reward shaping."""

import pytest
import torch

from algorithms.config import AlgorithmConfig
from algorithms.dapo import assemble_groups, filter_groups, overlong_penalty, shape_overlong_rewards


def test_filter_groups_drops_all_equal_groups_and_reports_them():
    # Groups of 2: [1, 1] all solved, [0, 1] mixed, [0, 0] all failed, [1, 1] all solved -> only group 1 kept.
    kept = filter_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]), group_size=2)
    assert kept.keep.tolist() == [False, False, True, True, False, False, False, False]
    assert (kept.num_groups, kept.num_dropped, kept.num_kept) == (4, 3, 1)
    assert kept.kept_groups == [1]
    # Scores within the tolerance count as equal.
    assert filter_groups(torch.tensor([0.5, 0.5001]), 2, tolerance=1e-3).num_dropped == 1
    with pytest.raises(ValueError, match="multiple of group_size"):
        filter_groups(torch.zeros(5), 2)


def test_overlong_penalty_hand_computed():
    # max 10, buffer 4 -> the ramp starts after 10 - 4 = 6 tokens:
    # 5, 6 -> 0; 8 -> (6 - 8) / 4 = -0.5; 10 -> (6 - 10) / 4 = -1; 11 (past max) -> -1; scaled by penalty 2.
    lengths = torch.tensor([5, 6, 8, 10, 11])
    torch.testing.assert_close(
        overlong_penalty(lengths, 10, 4, 2.0), torch.tensor([0.0, 0.0, -1.0, -2.0, -2.0])
    )
    # buffer 0 is a hard step past the max length.
    torch.testing.assert_close(
        overlong_penalty(lengths, 10, 0, 1.0), torch.tensor([0.0, 0.0, 0.0, 0.0, -1.0])
    )


def test_shape_overlong_rewards_follows_the_config():
    scores, lengths = torch.tensor([1.0, 1.0]), torch.tensor([3, 9])
    assert shape_overlong_rewards(scores, lengths, AlgorithmConfig()) is scores  # off by default
    config = AlgorithmConfig(overlong_max_length=10, overlong_buffer=2, overlong_penalty=1.0)
    # 9 tokens: (8 - 9) / 2 = -0.5
    torch.testing.assert_close(shape_overlong_rewards(scores, lengths, config), torch.tensor([1.0, 0.5]))


# Outcome scores of one round of 4 groups of 2; M: mixed, U: uniform.
MMUU = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])
UUUM = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
UUUU = torch.zeros(8)
MMMM = torch.tensor([1.0, 0.0] * 4)


def test_a_round_short_of_mixed_groups_asks_for_another_and_keeps_what_it_found():
    batch = assemble_groups([MMUU], group_size=2, target_groups=4, max_rounds=10)
    assert not batch.complete and batch.groups == ((0, 0), (0, 1))
    assert batch.metrics() == {
        "gen_rounds": 1.0,
        "groups_kept": 2.0,
        "groups_filtered": 2.0,
        "groups_surplus": 0.0,
        "groups_padded": 0.0,
    }


def test_rounds_fill_the_batch_in_generation_order_and_drop_the_surplus():
    batch = assemble_groups([MMUU, UUUU, MMMM], group_size=2, target_groups=4, max_rounds=0)
    assert batch.complete and batch.padded == 0
    assert batch.groups == ((0, 0), (0, 1), (2, 0), (2, 1))  # round 2's groups 2 and 3 are surplus
    assert batch.metrics() == {
        "gen_rounds": 3.0,
        "groups_kept": 4.0,
        "groups_filtered": 6.0,
        "groups_surplus": 2.0,
        "groups_padded": 0.0,
    }
    # a single round full of mixed groups is the whole batch, as without dynamic sampling
    assert assemble_groups([MMMM], 2, 4, 1).groups == ((0, 0), (0, 1), (0, 2), (0, 3))


def test_the_round_bound_tops_the_batch_up_with_uniform_groups_of_the_last_round():
    batch = assemble_groups([MMUU, UUUM], group_size=2, target_groups=4, max_rounds=2)
    assert batch.complete
    # mixed groups first (round 0: 0, 1; round 1: 3), then round 1's first uniform group
    assert batch.groups == ((0, 0), (0, 1), (1, 3), (1, 0))
    assert batch.metrics()["groups_padded"] == 1.0 and batch.metrics()["groups_kept"] == 3.0
    # the same rounds without a bound: not complete, generate again
    assert not assemble_groups([MMUU, UUUM], 2, 4, max_rounds=0).complete
    # nothing mixed at all within the bound: a batch of uniform groups (advantage 0), as plain GRPO trains
    assert assemble_groups([UUUU], 2, 4, max_rounds=1).groups == ((0, 0), (0, 1), (0, 2), (0, 3))


def test_assemble_groups_refuses_what_cannot_make_a_batch():
    with pytest.raises(ValueError, match="at least one round"):
        assemble_groups([], 2, 4, 1)
    with pytest.raises(ValueError, match="too few to fill"):
        assemble_groups([MMUU, UUUU[:2]], 2, 4, max_rounds=2)  # a last round smaller than the batch
