"""DAPO dynamic sampling and over-long reward shaping."""

import pytest
import torch

from algorithms.config import AlgorithmConfig
from algorithms.dapo import filter_groups, overlong_penalty, shape_overlong_rewards


def test_filter_groups_drops_all_equal_groups_and_reports_them():
    # Groups of 2: [1, 1] all solved, [0, 1] mixed, [0, 0] all failed, [1, 1] all solved -> only group 1 kept.
    kept = filter_groups(torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0]), group_size=2)
    assert kept.keep.tolist() == [False, False, True, True, False, False, False, False]
    assert (kept.num_groups, kept.num_dropped, kept.num_kept) == (4, 3, 1)
    assert kept.metrics() == {
        "dynamic_sampling/groups_dropped": 3.0,
        "dynamic_sampling/groups_kept": 1.0,
        "dynamic_sampling/fraction_dropped": 0.75,
    }
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
