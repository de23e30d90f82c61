"""Plot learning curves (eval success_once against wall-clock minutes and env steps) as one PNG.

    python scripts/plot_curves.py --out docs/learning_curves_pushcube.png \
        --run "suite (2 cores)=runs/maniskill_ppo_pushcube/20250101-120000" \
        --csv "single-process reference=runs/reference_pushcube.csv"

A run folder's curve comes from its TensorBoard scalars (`eval/success_once`, and `progress/wall_minutes`,
which counts from the moment the command started); a CSV is what scripts/reference_ppo.py writes
(minutes, env_steps, success_once, return).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def run_curve(folder: Path) -> tuple[list[float], list[float], list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    minutes = {e.step: e.value for e in events.Scalars("progress/wall_minutes")}
    success = events.Scalars("eval/success_once")
    steps = [e.step for e in success]
    return [minutes.get(s, float("nan")) for s in steps], steps, [e.value for e in success]


def csv_curve(path: Path) -> tuple[list[float], list[float], list[float]]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return (
        [float(r["minutes"]) for r in rows],
        [float(r["env_steps"]) for r in rows],
        [float(r["success_once"]) for r in rows],
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="ManiSkill PushCube-v1 (state), PPO + MLP, 2-core CPU")
    p.add_argument("--run", action="append", default=[], help="LABEL=RUN_FOLDER")
    p.add_argument("--csv", action="append", default=[], help="LABEL=CSV_FILE")
    p.add_argument("--goal", type=float, default=0.9, help="horizontal line (success goal)")
    p.add_argument("--deadline", type=float, default=None, help="vertical line at this many minutes")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(s.split("=", 1)[0], run_curve(Path(s.split("=", 1)[1]))) for s in args.run]
    curves += [(s.split("=", 1)[0], csv_curve(Path(s.split("=", 1)[1]))) for s in args.csv]
    fig, (by_time, by_steps) = plt.subplots(1, 2, figsize=(11, 4))
    for label, (minutes, steps, success) in curves:
        by_time.plot(minutes, success, marker=".", label=label)
        by_steps.plot([s / 1000 for s in steps], success, marker=".", label=label)
    for ax, xlabel in ((by_time, "wall-clock minutes from the command"), (by_steps, "env steps (thousands)")):
        ax.axhline(args.goal, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("eval success_once (64 episodes, deterministic)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    if args.deadline is not None:
        by_time.axvline(args.deadline, color="red", linestyle=":", linewidth=1)
    by_steps.legend(loc="upper left", fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
