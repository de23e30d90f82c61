"""Check that LeRobot itself reads demonstration datasets written by the suite, frame by frame.

The `lerobot` package does not fit in the suite's venv (docs/demos.md), so run this with the python of a
separate venv that has lerobot (and the repository on PYTHONPATH, for the suite's own reader):

    python3 -m venv /work/venvs/lerobot-probe
    /work/venvs/lerobot-probe/bin/pip install torch==2.13.0 && /work/venvs/lerobot-probe/bin/pip install lerobot==0.4.4
    PYTHONPATH=. /work/venvs/lerobot-probe/bin/python scripts/check_lerobot_readable.py /work/demos/pushcube_state

For each dataset it opens `lerobot.datasets.lerobot_dataset.LeRobotDataset` on the folder and compares what
LeRobot returns for every frame (or `--frames` random ones) with what the suite's `open_demos` returns: states,
actions, images (LeRobot gives float [3, H, W] in [0, 1]), instructions, episode and frame indices. Exit status
0 when all match, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "datasets", type=Path, nargs="+", help="dataset folders written by scripts/collect_demos.py"
    )
    parser.add_argument("--frames", type=int, default=0, help="compare this many random frames (0: all)")
    return parser.parse_args()


def check(path: Path, num_frames: int) -> list[str]:
    """Differences between LeRobot's view of the dataset at `path` and the suite's (empty: they agree)."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from envs.demos import open_demos

    ours = open_demos(path)
    theirs = LeRobotDataset(f"local/{path.name}", root=path)
    problems = []
    if (len(theirs), theirs.num_episodes, theirs.fps) != (ours.num_frames, ours.num_episodes, ours.info.fps):
        problems.append(
            f"frames/episodes/fps: lerobot {len(theirs)}/{theirs.num_episodes}/{theirs.fps}, "
            f"suite {ours.num_frames}/{ours.num_episodes}/{ours.info.fps}"
        )
    rng = np.random.default_rng(0)
    indices = np.arange(ours.num_frames) if num_frames <= 0 else rng.choice(ours.num_frames, num_frames)
    batch = ours.frames(indices)
    for row, i in enumerate(indices.tolist()):
        item = theirs[i]
        pairs = {
            "states": (item["observation.state"].numpy(), batch["states"][row]),
            "actions": (item["action"].numpy(), batch["actions"][row]),
            "episode_index": (item["episode_index"].item(), batch["episode_index"][row]),
            "frame_index": (item["frame_index"].item(), batch["frame_index"][row]),
        }
        if "main_images" in batch:
            image = (
                (item["observation.images.main"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8)
            )
            pairs["main_images"] = (image, batch["main_images"][row])
        for name, (a, b) in pairs.items():
            if not np.array_equal(a, b):
                problems.append(f"frame {i}: {name} differ")
        if item["task"] != batch["task_descriptions"][row]:
            problems.append(f"frame {i}: task {item['task']!r} vs {batch['task_descriptions'][row]!r}")
    return problems


def main() -> int:
    args = parse_args()
    try:
        import lerobot
    except ImportError:
        print("lerobot is not installed in this python; see this script's --help for the separate venv")
        return 2
    from importlib.metadata import version

    print(f"lerobot {version('lerobot')} ({Path(lerobot.__file__).parent})")
    failed = False
    for path in args.datasets:
        problems = check(path, args.frames)
        failed |= bool(problems)
        verdict = "OK: LeRobotDataset reads it, every compared frame equal" if not problems else "MISMATCH"
        print(f"{path}: {verdict}")
        for line in problems[:20]:
            print("   ", line)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
