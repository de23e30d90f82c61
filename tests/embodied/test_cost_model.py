"""The cost model of auto placement on synthetic profiles whose best placement is obvious by hand."""

from __future__ import annotations

import sys

import pytest

from algorithms.schema import ConfigError
from embodied.cost_model import (
    GIB,
    PIPELINE_STAGES,
    Candidate,
    Machine,
    MemoryProfile,
    Profile,
    Workload,
    best,
    candidates,
    placements,
    predict,
    rank,
    table,
)

TWO_CORES = Machine(cores=2, memory_bytes=24 * GIB)


def profile(env=1e-3, infer=None, per_sample=None, step=None, sync=None, memory=None, **kwargs) -> Profile:
    return Profile(
        env_per_env=env,
        infer=infer or {1: 1e-4, 16: 1e-4},
        train_per_sample=per_sample or {1: 1e-6, 2: 1e-6},
        optimizer_step=step or {1: 0.0, 2: 0.0},
        weight_sync=sync or {1: 0.0, 2: 0.0},
        memory=memory or MemoryProfile(),
        **kwargs,
    )


def test_the_model_needs_no_torch_or_ray():
    assert "embodied.cost_model" in sys.modules
    import subprocess

    code = "import sys, embodied.cost_model; print(any(m in sys.modules for m in ('torch', 'ray')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_candidates_on_two_cores():
    """collocated, env+rollout on all with the actor on slot 0, env and rollout disjoint with the actor on all,
    and disaggregated over 3 slots sharing the 2 cores; each with 1, 2 and 4 pipeline stages."""
    families = placements(TWO_CORES)
    assert families == [
        (2, (0, 1), (0, 1), (0, 1)),
        (2, (0, 1), (0, 1), (0,)),
        (2, (0,), (1,), (0, 1)),
        (3, (0,), (1,), (2,)),
    ]
    valid, invalid = candidates(Workload(num_envs=16, num_steps=10), TWO_CORES)
    assert len(valid) == 12 and not invalid
    assert {c.mode for c in valid} == {"collocated", "hybrid", "disaggregated"}
    assert Candidate(2, (0, 1), (0, 1), (0,), 2).name == (
        "hybrid env/rollout/actor=all/all/0 slots=2 stages=2"
    )


def test_candidates_that_do_not_split_name_the_reason():
    valid, invalid = candidates(Workload(num_envs=4, num_steps=10), TWO_CORES)
    bad = {(c.env, c.pipeline_stages): reason for c, reason in invalid}
    assert ((0, 1), 4) in bad and "cannot be split into 2 env worker(s) x rollout.pipeline_stages=4" in bad[
        ((0, 1), 4)
    ]
    grouped, invalid = candidates(Workload(num_envs=16, num_steps=1, group_size=8), TWO_CORES)
    assert all(c.pipeline_stages == 1 or len(c.env) == 1 for c in grouped)
    assert any("not a multiple of env.group_size=8" in reason for _, reason in invalid)


def test_candidates_on_four_gpus():
    families = placements(Machine(cores=16, gpus=4))
    assert len(families) == 1 + 1 + 2 * 3 + 3  # collocated, actor-on-0, 3 env/rollout splits x 2, 3 splits
    assert (4, (0,), (1, 2), (3,)) in families and (4, (0, 1), (2, 3), (0,)) in families


def test_env_bound_puts_every_core_on_simulation():
    """Simulation dominates: the env must run on both cores, with one stage: a second stage on a core adds
    that unit's 1 ms of messages to the core's load (measured: 2 and 4 stages on a shared core were slower
    than 1 in every family, docs/benchmarks.md); one core simulating all 8 envs takes twice as long."""
    w = Workload(num_envs=8, num_steps=10)
    p = profile(env=0.01, unit_overhead=1e-3)
    preds = rank(candidates(w, TWO_CORES)[0], w, p, TWO_CORES)
    chosen = best(preds)
    assert len(chosen.candidate.env) == 2 and chosen.candidate.pipeline_stages == 1
    # by hand: per core one unit of 4 envs (0.04 s), its inference (0.1 ms) and its messages (1 ms), 10 steps
    assert chosen.rollout == pytest.approx(10 * (0.04 + 1e-4 + 1e-3))
    two_stages = next(x for x in preds if x.candidate.env == (0, 1) and x.candidate.pipeline_stages == 2)
    assert two_stages.rollout == pytest.approx(10 * 2 * (0.02 + 1e-4 + 1e-3))
    disaggregated = next(
        x for x in preds if x.candidate.mode == "disaggregated" and x.candidate.pipeline_stages == 2
    )
    # core 0 simulates all 8 envs and sends half of each unit's messages; core 1 only infers
    assert disaggregated.rollout == pytest.approx(10 * 2 * (0.04 + 0.5e-3))
    assert disaggregated.iteration > 1.9 * chosen.iteration


def test_inference_bound_puts_every_core_on_inference():
    w = Workload(num_envs=8, num_steps=10)
    p = profile(env=1e-4, infer={1: 0.06, 2: 0.07, 4: 0.09, 8: 0.13})
    chosen = best(rank(candidates(w, TWO_CORES)[0], w, p, TWO_CORES))
    assert len(chosen.candidate.rollout) == 2 and chosen.candidate.pipeline_stages == 1
    assert chosen.rollout == pytest.approx(10 * (4e-4 + 0.09))


def test_pipelining_halves_a_rollout_whose_stages_are_on_different_gpus():
    """env on GPU 0, inference on GPU 1, equal costs: 2 stages overlap them (cycle halves), 4 stages gain
    nothing more (one unit's round trip bounds the cycle)."""
    gpus = Machine(cores=8, gpus=2, memory_bytes=80 * GIB)
    w = Workload(num_envs=64, num_steps=10)
    p = profile(env=1e-3, infer={1: 1e-3, 64: 64e-3})
    by_stages = {s: predict(Candidate(2, (0,), (1,), (0, 1), s), w, p, gpus).rollout for s in PIPELINE_STAGES}
    assert by_stages[1] == pytest.approx(10 * (0.064 + 0.064))
    assert by_stages[2] == pytest.approx(10 * 0.064)
    assert by_stages[4] == pytest.approx(10 * 0.064)


@pytest.mark.parametrize(
    "per_sample, actor_slots",
    [
        ({1: 1e-3, 2: 3e-3}, (0,)),  # CPU: gloo between two ranks costs more than it saves -> one rank
        ({1: 1e-3, 2: 0.55e-3}, (0, 1)),  # communication cheap: both ranks
    ],
)
def test_training_bound_chooses_the_actor_ranks_by_measured_cost(per_sample, actor_slots):
    w = Workload(num_envs=16, num_steps=50, update_epochs=8, num_minibatches=4)
    p = profile(per_sample=per_sample)
    chosen = best(rank(candidates(w, TWO_CORES)[0], w, p, TWO_CORES))
    assert chosen.candidate.actor == actor_slots
    ranks = len(actor_slots)
    assert chosen.train == pytest.approx(8 * 800 / ranks * per_sample[ranks])


def test_actor_ranks_that_share_a_core_take_turns():
    three_on_two = Candidate(3, (0,), (1,), (0, 1, 2), 1)
    w = Workload(num_envs=6, num_steps=10)
    p = profile(per_sample={1: 1e-3, 3: 1e-3})
    assert predict(three_on_two, w, p, TWO_CORES).train == pytest.approx(60 / 3 * 1e-3 * 2)


def test_memory_filter_drops_what_does_not_fit_and_says_why():
    gpus = Machine(cores=32, gpus=4, memory_bytes=24 * GIB)
    w = Workload(num_envs=64, num_steps=10)
    memory = MemoryProfile(process=0.5 * GIB, policy=8 * GIB, actor_state=40 * GIB, actor_activations=2 * GIB)
    p = profile(infer={1: 1e-3, 64: 1e-2}, per_sample={1: 1e-4, 4: 1e-4}, step={1: 0, 4: 0}, memory=memory)
    preds = rank(candidates(w, gpus)[0], w, p, gpus)
    one_rank = [x for x in preds if x.candidate.actor == (0,)]
    assert one_rank and all(x.does_not_fit for x in one_rank)
    assert "the actor worker on GPU 0 needs 42.5 GiB" in one_rank[0].does_not_fit
    assert "a GPU has 24.0 GiB" in one_rank[0].does_not_fit
    assert preds[-1].does_not_fit and best(preds).candidate.actor == (0, 1, 2, 3)
    assert "does not fit" not in table(preds) and "needs 42.5 GiB" in table(preds)


def test_nothing_fits_is_a_config_error_naming_the_component_and_memory():
    w = Workload(num_envs=8, num_steps=10)
    p = profile(memory=MemoryProfile(process=GIB, env_per_env=4 * GIB))
    preds = rank(candidates(w, TWO_CORES)[0], w, p, TWO_CORES)
    with pytest.raises(
        ConfigError,
        match=r"needs 35\.0 GiB of RAM \(env 33\.0, rollout 1\.0, actor 1\.0; the env workers most\), 24\.0 GiB",
    ):
        best(preds)


def test_rollout_and_actor_collocated_on_a_gpu_offload_the_idle_one():
    gpus = Machine(cores=8, gpus=1, memory_bytes=24 * GIB)
    memory = MemoryProfile(policy=14 * GIB, actor_state=16 * GIB)
    x = predict(Candidate(1, (0,), (0,), (0,), 1), Workload(8, 10), profile(memory=memory), gpus)
    assert x.does_not_fit is None and x.memory_bytes == pytest.approx(16 * GIB)


def test_inference_time_interpolates_between_measured_batch_sizes():
    p = profile(infer={2: 0.02, 8: 0.05})
    assert p.infer_seconds(2) == 0.02
    assert p.infer_seconds(4) == pytest.approx(0.03)
    assert p.infer_seconds(16) == pytest.approx(0.09)
    assert profile(infer={4: 0.04}).infer_seconds(2) == pytest.approx(0.02)


def test_messages_are_load_on_a_shared_core_and_split_between_two():
    """20 ms of messages per unit and chunk step with env and rollout on one core, 4 ms between two cores. On
    shared cores four stages cost four units' messages per core; env on core 0 and rollout on core 1 pay the
    cheaper messages, half on each side, and their four stages overlap simulation and inference. The env step
    time beside a rollout worker and alone apply where each is the case."""
    w = Workload(num_envs=8, num_steps=10)
    p = profile(env=2e-3, infer={1: 1e-3, 4: 4e-3, 8: 8e-3}, unit_overhead=0.02, apart_overhead=4e-3)
    shared = {s: predict(Candidate(2, (0, 1), (0, 1), (0,), s), w, p, TWO_CORES).rollout for s in (1, 4)}
    assert shared[1] == pytest.approx(10 * (4 * 2e-3 + 4e-3 + 0.02))  # one unit of 4 envs per core
    assert shared[4] == pytest.approx(10 * 4 * (2e-3 + 1e-3 + 0.02))  # four units of 1 env per core
    apart = {s: predict(Candidate(2, (0,), (1,), (0, 1), s), w, p, TWO_CORES).rollout for s in (1, 4)}
    assert apart[1] == pytest.approx(10 * (8 * 2e-3 + 8e-3 + 4e-3))  # one unit: its round trip
    assert apart[4] == pytest.approx(10 * 4 * (2 * 2e-3 + 2e-3))  # core 0: 4 units of 2 envs + half messages
    # simulation beside a rollout worker measured slower (3 ms per env) than alone (2 ms): each where it applies
    slower = profile(env=3e-3, infer=p.infer, unit_overhead=0.02, apart_overhead=4e-3, env_per_env_apart=2e-3)
    assert predict(Candidate(2, (0, 1), (0, 1), (0,), 1), w, slower, TWO_CORES).rollout == pytest.approx(
        10 * (4 * 3e-3 + 4e-3 + 0.02)
    )
    assert predict(Candidate(2, (0,), (1,), (0, 1), 1), w, slower, TWO_CORES).rollout == pytest.approx(
        apart[1]
    )
    without = profile(env=2e-3, infer={1: 1e-3, 4: 4e-3, 8: 8e-3}, unit_overhead=0.02)  # apart not measured
    assert predict(Candidate(2, (0,), (1,), (0, 1), 1), w, without, TWO_CORES).rollout == pytest.approx(
        10 * (8 * 2e-3 + 8e-3 + 0.02)
    )
