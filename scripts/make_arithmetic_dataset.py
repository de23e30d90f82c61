"""Write the arithmetic prompt/answer set shipped in envs/math/data (deterministic: same seed, same bytes).

    python scripts/make_arithmetic_dataset.py                    # rewrites the shipped files
    python scripts/make_arithmetic_dataset.py --out /tmp/data --num-train 2000

Problems are "What is a + b?", "What is a - b?" (a, b in 0..99; the difference may be negative) and
"What is a * b?" (a, b in 0..20), a third of each set per operation (fewer where an operation has fewer
problems: 441 multiplications, of which at most a fifth are test problems); train and test are disjoint. Each JSONL line is
{"prompt": ..., "answer": ...}, the fields `envs.math` reads.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "envs" / "math" / "data"
OPERATIONS = {"+": (99, lambda a, b: a + b), "-": (99, lambda a, b: a - b), "*": (20, lambda a, b: a * b)}
TEST_SHARE_MAX = 0.2  # at most this share of an operation's problems is held out for testing


def all_problems(op: str) -> list[dict[str, str]]:
    """Every problem of one operation, in a fixed order."""
    high, fn = OPERATIONS[op]
    return [
        {"prompt": f"What is {a} {op} {b}?", "answer": str(fn(a, b))}
        for a in range(high + 1)
        for b in range(high + 1)
    ]


def make_split(seed: int, num_train: int, num_test: int) -> tuple[list[dict], list[dict]]:
    """(train, test): disjoint problems, up to a third of each set per operation, shuffled."""
    rng = random.Random(seed)
    train, test = [], []
    for op in OPERATIONS:
        problems = all_problems(op)
        rng.shuffle(problems)
        n_test = min(num_test // len(OPERATIONS), int(TEST_SHARE_MAX * len(problems)))
        n_train = min(num_train // len(OPERATIONS), len(problems) - n_test)
        test += problems[:n_test]
        train += problems[n_test : n_test + n_train]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def write_jsonl(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="folder for arithmetic_{train,test}.jsonl"
    )
    parser.add_argument(
        "--num-train", type=int, default=6000, help="training problems (a third per operation)"
    )
    parser.add_argument("--num-test", type=int, default=600, help="test problems (a third per operation)")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed")
    args = parser.parse_args()
    train, test = make_split(args.seed, args.num_train, args.num_test)
    write_jsonl(args.out / "arithmetic_train.jsonl", train)
    write_jsonl(args.out / "arithmetic_test.jsonl", test)
    print(f"wrote {len(train)} training and {len(test)} test problems to {args.out}")


if __name__ == "__main__":
    main()
