"""Demonstrations as supervised batches (embodied/sft_data.py): the split by episode, action chunks padded past
an episode's end, and the ranks' shares of an epoch."""

from __future__ import annotations

import numpy as np
import pytest

from embodied.sft_data import action_windows, frames_of, split_episodes


def test_split_holds_out_whole_episodes_reproducibly():
    train, val = split_episodes(10, 0.2, seed=3)
    assert len(val) == 2 and len(train) == 8
    assert sorted([*train, *val]) == list(range(10))
    again = split_episodes(10, 0.2, seed=3)
    assert (again[0] == train).all() and (again[1] == val).all()
    assert not np.array_equal(split_episodes(10, 0.2, seed=4)[1], val)


@pytest.mark.parametrize(
    ("episodes", "fraction", "held"), [(5, 0.01, 1), (2, 0.9, 1), (4, 0.0, 0), (1, 0.5, 0)]
)
def test_split_keeps_at_least_one_episode_on_each_side_when_it_can(episodes, fraction, held):
    train, val = split_episodes(episodes, fraction, seed=0)
    assert len(val) == held and len(train) == episodes - held


def test_frames_of_lists_frames_with_their_episode_end():
    ranges = [[0, 3], [3, 5], [5, 9]]
    frames, ends = frames_of(ranges, np.array([0, 2]))
    assert frames.tolist() == [0, 1, 2, 5, 6, 7, 8]
    assert ends.tolist() == [3, 3, 3, 9, 9, 9, 9]


def test_action_windows_repeat_the_last_action_and_mask_past_the_end():
    window, mask = action_windows(np.array([0, 2, 7]), np.array([3, 3, 9]), horizon=3)
    assert window.tolist() == [[0, 1, 2], [2, 2, 2], [7, 8, 8]]
    assert mask.tolist() == [[True, True, True], [True, False, False], [True, True, False]]
