"""Plot learning curves (eval success_once against wall-clock minutes and env steps) as one PNG.

    python scripts/plot_curves.py --out docs/learning_curves_pushcube.png \
        --run "suite (2 cores)=runs/maniskill_ppo_pushcube/20250101-120000" \
        --csv "single-process reference=runs/reference_pushcube.csv"

A run folder's curve comes from its TensorBoard scalars (`eval/success_once`, and `progress/wall_minutes`,
which counts from the moment the command started); a CSV is what scripts/reference_ppo.py writes
(minutes, env_steps, success_once, return) or scripts/baseline_cleanrl_ppo.py writes (with seconds).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

Curve = tuple[list[float], list[float], list[float]]  # minutes, env steps, eval success_once


def run_curve(folder: Path) -> Curve:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    minutes = {e.step: e.value for e in events.Scalars("progress/wall_minutes")}
    success = events.Scalars("eval/success_once")
    steps = [e.step for e in success]
    return [minutes.get(s, float("nan")) for s in steps], steps, [e.value for e in success]


def csv_curve(path: Path) -> Curve:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return (
        [float(r["minutes"]) for r in rows],
        [float(r["env_steps"]) for r in rows],
        [float(r["success_once"]) for r in rows],
    )


def plot(
    curves: list[tuple[str, Curve]],
    out: str,
    title: str,
    goal: float | None = 0.9,
    deadline: float | None = None,
    colors: list[str | None] | None = None,
) -> None:
    """One PNG: success against wall-clock minutes (left) and env steps (right), a line per curve; `colors`
    (one per curve, None: the next default) lets several seeds of one system share a colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (by_time, by_steps) = plt.subplots(1, 2, figsize=(11, 4))
    for k, (label, (minutes, steps, success)) in enumerate(curves):
        color = colors[k] if colors else None
        by_time.plot(minutes, success, marker=".", label=label, color=color)
        by_steps.plot([s / 1000 for s in steps], success, marker=".", label=label, color=color)
    for ax, xlabel in ((by_time, "wall-clock minutes from the command"), (by_steps, "env steps (thousands)")):
        if goal is not None:
            ax.axhline(goal, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval success_once (64 episodes, deterministic)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if deadline is not None:
        by_time.axvline(deadline, color="red", linestyle=":", linewidth=1)
    by_steps.legend(loc="lower right", fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    print(f"wrote {out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="ManiSkill PushCube-v1 (state), PPO + MLP, 2-core CPU")
    p.add_argument("--run", action="append", default=[], help="LABEL=RUN_FOLDER")
    p.add_argument("--csv", action="append", default=[], help="LABEL=CSV_FILE")
    p.add_argument("--goal", type=float, default=0.9, help="horizontal line (success goal)")
    p.add_argument("--deadline", type=float, default=None, help="vertical line at this many minutes")
    args = p.parse_args()
    curves = [(s.split("=", 1)[0], run_curve(Path(s.split("=", 1)[1]))) for s in args.run]
    curves += [(s.split("=", 1)[0], csv_curve(Path(s.split("=", 1)[1]))) for s in args.csv]
    plot(curves, args.out, args.title, args.goal, args.deadline)


if __name__ == "__main__":
    main()
