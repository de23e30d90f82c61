"""Auto placement: profile a run, predict every candidate placement, run the fastest (`cluster=auto`).

    python -m embodied.plan [CONFIG] [key=value ...]     # the profile and the table of predictions, no training

`choose(config)` profiles the run's workers (`embodied.profiler`), predicts the iteration time of every
candidate (`embodied.cost_model`: collocated; env + rollout on all slots with the actor on one; env and rollout
on disjoint slots with the actor on all or one; disaggregated splits; `rollout.pipeline_stages` 1, 2, 4),
drops those that do not fit in memory (with the reason) and returns the config of the fastest, with its
`cluster.num_slots`, `cluster.component_placement` and `rollout.pipeline_stages` filled in. `PlanMonitor`
then compares the prediction with the run's measured iteration times (median of iterations 2-4, after the
first, which warms up) and logs both (`plan/*`).

The same planner serves every env type: for the LLM math path env = the reward, rollout = generation,
actor = training.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from algorithms.schema import ConfigError
from embodied import cost_model
from embodied.config import TrainConfig
from embodied.cost_model import Candidate, Prediction
from embodied.profiler import Measurement, measure

MEASURED_ITERATIONS = (2, 3, 4)  # the first iteration warms up (lazy initialisation, first resets)


@dataclass
class Plan:
    """The measurement, every prediction (fastest first), the chosen one, and the candidates that were not
    possible with the reason."""

    measurement: Measurement
    predictions: list[Prediction]
    chosen: Prediction
    invalid: list[tuple[Candidate, str]] = field(default_factory=list)

    @property
    def started_ray(self) -> bool:
        return self.measurement.started_ray

    def table(self) -> str:
        return cost_model.table(self.predictions, self.chosen)

    def lines(self) -> list[str]:
        c = self.chosen
        out = [f"auto placement: predictions for {len(self.predictions)} candidates (seconds per iteration)"]
        out += self.table().splitlines()
        out += [f"  not possible: {cand.name}: {reason}" for cand, reason in self.invalid]
        out.append(
            f"auto placement: chose {c.candidate.name}: predicted {c.iteration:.3f} s per iteration "
            f"(rollout {c.rollout:.3f}, train {c.train:.3f}, sync {c.sync:.3f})"
        )
        return out


def apply(config: TrainConfig, candidate: Candidate) -> TrainConfig:
    """`config` with the candidate's slots, placement and pipeline depth (and auto off)."""
    placement = {c: candidate.slot_spec(c) for c in ("env", "rollout", "actor")}
    return config.replace(
        cluster=config.cluster.replace(
            auto=False, num_slots=candidate.num_slots, component_placement=placement
        ),
        rollout=config.rollout.replace(pipeline_stages=candidate.pipeline_stages),
    )


def candidate_of(config: TrainConfig, num_slots: int) -> Candidate | None:
    """The candidate a fixed placement is (None when its slot sets do not parse on `num_slots` slots)."""
    from embodied.placement import resolve_placement

    cluster = config.cluster
    slots_count = cluster.num_slots or num_slots
    try:
        placement = resolve_placement(cluster, slots_count)
    except ConfigError:
        return None
    s = placement.slots
    return Candidate(slots_count, s["env"], s["rollout"], s["actor"], config.rollout.pipeline_stages)


def plan(config: TrainConfig, log: Callable[[str], None] = print) -> Plan:
    """Profile `config` and predict every candidate (see the module docstring)."""
    measurement = measure(config, log)
    valid, invalid = cost_model.candidates(measurement.workload, measurement.machine)
    predictions = cost_model.rank(valid, measurement.workload, measurement.profile, measurement.machine)
    try:
        chosen = cost_model.best(predictions)
    except ConfigError:
        if measurement.started_ray:
            from embodied.cluster import stop_ray

            stop_ray()
        raise
    return Plan(measurement, predictions, chosen, invalid)


def choose(config: TrainConfig, log: Callable[[str], None] = print) -> tuple[TrainConfig, Plan]:
    """The config of the fastest candidate, and the plan (logged)."""
    result = plan(config, log)
    for line in result.lines():
        log(line)
    return apply(config, result.chosen.candidate), result


class PlanMonitor:
    """Compares the chosen prediction with the measured `time/iteration` once iterations 2-4 have run; the
    runner calls it with each iteration's metrics. Adds `plan/*` to those metrics once."""

    def __init__(self, chosen: Prediction, log: Callable[[str], None] = print) -> None:
        self.chosen, self.log = chosen, log
        self.seconds: list[float] = []
        self.done = False

    def __call__(self, iteration: int, metrics: dict[str, float]) -> None:
        if self.done or "time/iteration" not in metrics:
            return
        if iteration in MEASURED_ITERATIONS:
            self.seconds.append(metrics["time/iteration"])
        if iteration < MEASURED_ITERATIONS[-1]:
            return
        self.done = True
        measured = statistics.median(self.seconds or [metrics["time/iteration"]])
        predicted = self.chosen.iteration
        error = predicted / measured - 1.0
        metrics |= {
            "plan/predicted_iteration_s": predicted,
            "plan/measured_iteration_s": measured,
            "plan/prediction_error": error,
        }
        self.log(
            f"auto placement: predicted {predicted:.3f} s per iteration, measured {measured:.3f} s (median of "
            f"iterations {MEASURED_ITERATIONS[0]}-{MEASURED_ITERATIONS[-1]}): {error:+.0%}"
        )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    from embodied.compose import load_config
    from embodied.train import _split_args

    name, overrides = _split_args(argv)
    try:
        config, _ = load_config(name, overrides)
        result = plan(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    finally:
        from embodied.cluster import stop_ray

        stop_ray()
    for line in result.lines():
        print(line)
    if config.cluster.auto:
        return 0
    own = candidate_of(config, result.measurement.machine.compute_units)
    mine = next((p for p in result.predictions if p.candidate == own), None)
    if mine is None:
        print(f"this config's placement ({own.name if own else 'unparsed'}) is not among the candidates")
        return 0
    print(f"this config's placement: {mine.candidate.name}: predicted {mine.iteration:.3f} s per iteration")
    if mine.does_not_fit:
        print(f"config error: this config's placement does not fit: {mine.does_not_fit}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
