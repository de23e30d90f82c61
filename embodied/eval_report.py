"""The report of an evaluation run, from its per-episode results: a per-task success table (markdown, CSV,
JSON), the overall mean, episode-length statistics, a bar chart of success per task, and `eval/*` metrics.

An episode is a dict with `task_id`, `task_description`, `initial_state_id` and the episode metrics
(`success_once`, `success_at_end`, `return`, `episode_len`); `video` (a path) when one was recorded.
`success` in the table is `success_once`: the task's success held at some step of the episode.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

MARKDOWN, CSV, JSON, PLOT = "results.md", "results.csv", "results.json", "success_per_task.png"


@dataclass(frozen=True)
class TaskResult:
    """One row of the table: the episodes of one task (or of all tasks, `task_id=None`)."""

    task_id: int | None
    instruction: str
    episodes: int
    success: float  # mean success_once
    success_at_end: float
    mean_return: float
    length_mean: float
    length_min: int
    length_max: int

    @classmethod
    def of(cls, task_id: int | None, instruction: str, episodes: Sequence[dict]) -> TaskResult:
        lengths = [int(e["episode_len"]) for e in episodes]
        return cls(
            task_id=task_id,
            instruction=instruction,
            episodes=len(episodes),
            success=float(np.mean([e["success_once"] for e in episodes])),
            success_at_end=float(np.mean([e["success_at_end"] for e in episodes])),
            mean_return=float(np.mean([e["return"] for e in episodes])),
            length_mean=float(np.mean(lengths)),
            length_min=min(lengths),
            length_max=max(lengths),
        )


def task_results(episodes: Sequence[dict]) -> tuple[list[TaskResult], TaskResult]:
    """One row per task (by task id) and the row of all episodes."""
    if not episodes:
        raise ValueError("no episodes to report (eval.num_episodes episodes per task were expected)")
    by_task: dict[int, list[dict]] = {}
    for e in episodes:
        by_task.setdefault(int(e["task_id"]), []).append(e)
    rows = [TaskResult.of(t, by_task[t][0]["task_description"], by_task[t]) for t in sorted(by_task)]
    return rows, TaskResult.of(None, "all tasks", episodes)


def markdown_table(rows: Sequence[TaskResult], overall: TaskResult) -> str:
    """The table as GitHub markdown, the overall row last (bold) and the mean of the per-task rates below."""
    header = "| task | instruction | episodes | success | success at end | return | length mean | min | max |"
    lines = [header, "|---:|:---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in [*rows, overall]:
        task = "**all**" if r.task_id is None else str(r.task_id)
        cells = [
            task,
            r.instruction.replace("|", "/"),
            str(r.episodes),
            f"{r.success:.3f}",
            f"{r.success_at_end:.3f}",
            f"{r.mean_return:.3f}",
            f"{r.length_mean:.1f}",
            str(r.length_min),
            str(r.length_max),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Success (success_once) over all {overall.episodes} episodes: **{overall.success:.3f}**; mean of the "
        f"{len(rows)} task(s)' rates: {np.mean([r.success for r in rows]):.3f}. Episode length: mean "
        f"{overall.length_mean:.1f}, min {overall.length_min}, max {overall.length_max}."
    )
    return "\n".join(lines) + "\n"


def eval_metrics(rows: Sequence[TaskResult], overall: TaskResult) -> dict[str, float]:
    """`eval/*` scalars for TensorBoard and W&B: the overall means, length stats and each task's success."""
    out = {
        "eval/success_once": overall.success,
        "eval/success_at_end": overall.success_at_end,
        "eval/return": overall.mean_return,
        "eval/episode_len": overall.length_mean,
        "eval/episode_len_min": float(overall.length_min),
        "eval/episode_len_max": float(overall.length_max),
        "eval/num_episodes": float(overall.episodes),
        "eval/success_mean_over_tasks": float(np.mean([r.success for r in rows])),
    }
    out |= {f"eval/task_{r.task_id:03d}/success_once": r.success for r in rows}
    return out


def plot_success(rows: Sequence[TaskResult], overall: TaskResult, path: Path, title: str) -> None:
    """A horizontal bar chart of each task's success rate, the overall mean as a dashed line (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [_short(f"{r.task_id}: {r.instruction}", 60) for r in rows]
    fig, ax = plt.subplots(figsize=(9, max(2.5, 1.2 + 0.3 * len(rows))))
    try:
        y = np.arange(len(rows))
        bars = ax.barh(y, [r.success for r in rows], color="#3a7bd5")
        for bar, r in zip(bars, rows):
            middle = bar.get_y() + bar.get_height() / 2
            ax.text(
                bar.get_width() + 0.01, middle, f"{r.success:.2f} (n={r.episodes})", va="center", fontsize=8
            )
        ax.axvline(overall.success, color="#d53a3a", linestyle="--")
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, 1.18)  # room for the labels of full bars
        ax.set_xticks(np.linspace(0, 1, 6))
        ax.set_xlabel("success rate (success_once); dashed: all episodes")
        ax.set_title(f"{title}: {overall.success:.3f} over {overall.episodes} episodes", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def write_report(
    folder: Path, episodes: Sequence[dict], meta: dict[str, Any]
) -> tuple[str, dict[str, float]]:
    """Write results.md, results.csv, results.json and success_per_task.png into `folder`; returns the
    markdown table and the `eval/*` metrics. `meta` (config name, checkpoint, ...) goes into the JSON and the
    markdown's heading lines."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows, overall = task_results(episodes)
    table = markdown_table(rows, overall)
    heading = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    (folder / MARKDOWN).write_text(f"# Evaluation\n\n{heading}\n\n{table}")
    with open(folder / CSV, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(overall)))
        writer.writeheader()
        for r in [*rows, overall]:
            writer.writerow({**asdict(r), "task_id": "all" if r.task_id is None else r.task_id})
    metrics = eval_metrics(rows, overall)
    record = {
        "meta": meta,
        "overall": asdict(overall),
        "tasks": [asdict(r) for r in rows],
        "metrics": metrics,
        "episodes": [_relative(e, folder) for e in episodes],
    }
    (folder / JSON).write_text(json.dumps(record, indent=2))
    plot_success(rows, overall, folder / PLOT, title=str(meta.get("config", "evaluation")))
    return table, metrics


def _relative(episode: dict, folder: Path) -> dict:
    """The episode with its video path relative to the report folder (the folder can move)."""
    if "video" not in episode:
        return dict(episode)
    video = Path(episode["video"])
    return {
        **episode,
        "video": str(video.relative_to(folder)) if video.is_relative_to(folder) else str(video),
    }
