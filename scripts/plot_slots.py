"""The slots each component held over time in a run with online scaling (its `slots.json`), as one PNG.

    python scripts/plot_slots.py runs/math_grpo/<timestamp>                  # -> <run>/slots.png
    python scripts/plot_slots.py runs/math_grpo/<timestamp> --seconds 5 --out docs/slots_math_grpo.png

One row per slot; a bar per component while it held the slot (env and rollout during each rollout epoch, the
actor during each update, on its own slots and on those online scaling lent it).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLOURS = {"env": "tab:green", "rollout": "tab:blue", "actor": "tab:red"}
OFFSETS = {"env": -0.27, "rollout": 0.0, "actor": 0.27}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", type=Path, help="a run folder with slots.json")
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: <run>/slots.png)")
    p.add_argument("--seconds", type=float, default=None, help="only the first this many seconds")
    args = p.parse_args()
    records = json.loads((args.run / "slots.json").read_text())
    if args.seconds is not None:
        records = [r for r in records if r["start"] < args.seconds]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slots = sorted({s for r in records for s in r["slots"]})
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.9 * len(slots)))
    for component, colour in COLOURS.items():
        for r in (r for r in records if r["component"] == component):
            bars = [(r["start"], max(r["end"] - r["start"], 1e-4))]
            for slot in r["slots"]:
                ax.broken_barh(bars, (slot + OFFSETS[component] - 0.12, 0.24), color=colour)
        ax.plot([], [], color=colour, linewidth=8, label=component)
    ax.set_yticks(slots, [f"slot {s}" for s in slots])
    ax.set_xlabel("seconds since the first rollout")
    ax.set_title(f"slots held per component: {args.run.resolve().parent.name}/{args.run.resolve().name}")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25 - 0.1 / len(slots)), ncol=3, frameon=False)
    ax.invert_yaxis()
    fig.tight_layout()
    out = args.out or args.run / "slots.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
