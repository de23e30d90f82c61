"""Auto placement's glue: the config keys and their errors, a candidate applied to a config, and the log of
predicted vs measured iteration time; no Ray (the profiler runs in the slow end-to-end test)."""

from __future__ import annotations

import pytest

from algorithms.schema import ConfigError
from embodied.compose import load_config
from embodied.cost_model import Candidate, Prediction
from embodied.plan import PlanMonitor, apply, candidate_of


def test_auto_with_a_fixed_placement_names_both():
    with pytest.raises(ConfigError) as info:
        load_config("maniskill_ppo_pushcube", ["cluster=auto", "cluster.component_placement.actor=0"])
    message = str(info.value)
    assert "cluster.auto=true" in message and "cluster.component_placement={'actor': 0}" in message
    with pytest.raises(
        ConfigError, match=r"cluster.auto=true chooses the placement itself, but cluster.num_slots=3"
    ):
        load_config("maniskill_ppo_pushcube", ["cluster=auto", "cluster.num_slots=3"])
    with pytest.raises(
        ConfigError, match=r"component_placement is null: .* cluster.auto=true \(cluster=auto\)"
    ):
        load_config("maniskill_ppo_pushcube", ["cluster.component_placement=null"])


def test_a_candidate_becomes_the_run_config():
    config, _ = load_config("maniskill_ppo_pushcube", ["cluster=auto"])
    chosen = apply(config, Candidate(3, (0,), (1,), (2,), 2))
    assert not chosen.cluster.auto and chosen.cluster.num_slots == 3
    assert chosen.cluster.component_placement == {"env": "0", "rollout": "1", "actor": "2"}
    assert chosen.rollout.pipeline_stages == 2
    hybrid = apply(config, Candidate(2, (0, 1), (0, 1), (0,), 1))
    assert hybrid.cluster.component_placement == {"env": "all", "rollout": "all", "actor": "0"}
    default, _ = load_config("maniskill_ppo_pushcube", [])  # cluster=hybrid
    assert candidate_of(default, 2) == Candidate(2, (0, 1), (0, 1), (0,), 1)


def test_predicted_vs_measured_is_logged_once_after_iterations_2_to_4():
    lines = []
    monitor = PlanMonitor(Prediction(Candidate(2, (0, 1), (0, 1), (0,), 1), 0.5, 0.4, 0.1, 0.0), lines.append)
    seen = []
    for iteration, seconds in enumerate([3.0, 1.1, 0.9, 1.0, 1.2], start=1):
        metrics = {"time/iteration": seconds}
        monitor(iteration, metrics)
        seen.append(metrics)
    assert "plan/measured_iteration_s" not in seen[2] and "plan/measured_iteration_s" not in seen[4]
    assert seen[3]["plan/measured_iteration_s"] == 1.0 and seen[3]["plan/predicted_iteration_s"] == 1.0
    assert seen[3]["plan/prediction_error"] == pytest.approx(0.0)
    assert lines == [
        "auto placement: predicted 1.000 s per iteration, measured 1.000 s (median of iterations 2-4): +0%"
    ]


def test_profiler_calibrates_message_and_epoch_overheads_from_two_epoch_lengths():
    """Epochs of 4 and 12 chunk steps whose wall time is 12 steps x (simulation + inference + 3 ms of messages)
    + 0.2 s: the calibration recovers the 3 ms per unit and chunk step and the 0.2 s (+ advantages)."""
    from embodied.cost_model import Machine, Profile, Workload
    from embodied.profiler import _calibrate

    machine, here = Machine(cores=2), Candidate(2, (0, 1), (0, 1), (0, 1), 1)
    profile = Profile(1e-3, {8: 0.01}, {1: 0.0}, {1: 0.0}, {2: 0.0})
    cycle = 8 * 1e-3 + 0.01 + 3e-3  # 8 envs per env worker, one unit each
    epochs = [(k, {}, k * cycle + 0.2, 0.05) for k in (4, 12)]
    calibrated = _calibrate(profile, epochs, here, Workload(16, 12), machine)
    assert calibrated.unit_overhead == pytest.approx(3e-3)
    assert calibrated.epoch_overhead == pytest.approx(0.25)


def test_profiler_calibrates_the_messages_between_two_cores_from_the_apart_placement():
    """Env on slot 0 and rollout on slot 1, one unit of 16 envs: the cycle is its round trip, so the wall time's
    excess over simulation + inference is the messages between two cores; the shared-core value and the
    epoch overhead of the collocated calibration stay as they were."""
    from embodied.cost_model import Machine, Profile, Workload
    from embodied.profiler import _calibrate

    machine, apart = Machine(cores=2), Candidate(2, (0,), (1,), (0,), 1)
    profile = Profile(1e-3, {16: 0.02}, {1: 0.0}, {1: 0.0}, {1: 0.0}, unit_overhead=0.01, epoch_overhead=0.3)
    cycle = 16 * 1e-3 + 0.02 + 4e-3
    epochs = [(k, {}, k * cycle + 0.2, 0.05) for k in (4, 12)]
    calibrated = _calibrate(profile, epochs, apart, Workload(16, 12), machine)
    assert calibrated.apart_overhead == pytest.approx(4e-3)
    assert calibrated.unit_overhead == 0.01 and calibrated.epoch_overhead == 0.3


def test_training_fit_passes_through_the_run_s_mini_batch_size():
    from embodied.profiler_probes import _fit

    assert _fit({100: [0.12, 0.11, 0.13], 200: [0.22]}) == pytest.approx((1e-3, 0.02))
    per_sample, step = _fit({100: [0.30], 200: [0.20]})  # noise: the larger took less time
    assert per_sample == pytest.approx(1e-3) and step == pytest.approx(0.0)
