"""Supervised warm-up of a scratch character-level Llama on the arithmetic set; writes the Hugging Face folder
an RL run starts from (`policy.pretrained`, `env.tokenizer`).

    python scripts/sft_math.py --out runs/math_sft                       # the defaults
    python scripts/sft_math.py --out runs/stage2 --init runs/math_sft --lr 1e-3   # continue at a lower rate

The shipped checkpoint (policies/causal_lm/pretrained/arithmetic_char_llama) is two such stages, 1000 steps at lr
3e-3 from scratch then 1000 steps at 1e-3 (the commands are in its sft_args.json, whose init_record holds the
first stage's arguments): 11 % then 36 % greedy accuracy on the first 240 test problems. The learning rate is
constant after warm-up, so the checkpoint after N steps of a longer run equals a run with --steps N.
Greedy test accuracy is printed every --eval-every steps.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from envs.math import load_problems, math_env_spec
from envs.math.config import SHIPPED_DATA
from policies import PolicyConfig, make_policy
from policies.causal_lm.sft import greedy_accuracy, sft_inputs, sft_loss

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder to write the checkpoint to")
    p.add_argument("--train-file", type=Path, default=SHIPPED_DATA / "arithmetic_train.jsonl")
    p.add_argument("--test-file", type=Path, default=SHIPPED_DATA / "arithmetic_test.jsonl")
    p.add_argument("--steps", type=int, default=1500, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument(
        "--lr", type=float, default=3e-3, help="peak learning rate (AdamW), constant after warm-up"
    )
    p.add_argument("--warmup", type=int, default=50, help="linear warm-up steps")
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--max-prompt-tokens", type=int, default=24)
    p.add_argument("--max-response-tokens", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=250, help="steps between greedy test evaluations")
    p.add_argument("--eval-problems", type=int, default=240, help="test problems per evaluation")
    p.add_argument(
        "--save-every-eval", action="store_true", help="also write <out>/step_<N> at each evaluation"
    )
    p.add_argument(
        "--init", type=Path, default=None, help="continue from this folder (weights only; sizes ignored)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args()


def policy_config(args: argparse.Namespace) -> PolicyConfig:
    return PolicyConfig.from_dict(
        {
            "name": "causal_lm",
            "pretrained": None if args.init is None else str(args.init),
            "max_prompt_tokens": args.max_prompt_tokens,
            "scratch": {
                "hidden_size": args.hidden_size,
                "num_layers": args.num_layers,
                "num_heads": args.num_heads,
                "intermediate_size": 4 * args.hidden_size,
                "seed": args.seed,
            },
        },
        path="policy",
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train, test = load_problems(args.train_file), load_problems(args.test_file)[: args.eval_problems]
    from policies.causal_lm.char_tokenizer import build_char_tokenizer

    spec = math_env_spec(len(train), args.max_response_tokens, len(build_char_tokenizer()))
    policy = make_policy(policy_config(args), spec)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / args.warmup))
    rng = random.Random(args.seed)
    start = time.perf_counter()
    print(f"step 0: greedy test accuracy {greedy_accuracy(policy, test):.3f}", flush=True)
    for step in range(1, args.steps + 1):
        batch = rng.sample(train, args.batch_size)
        loss = sft_loss(policy, sft_inputs(policy, [p.prompt for p in batch], [p.answer for p in batch]))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % args.eval_every == 0 or step == args.steps:
            accuracy = greedy_accuracy(policy, test)
            elapsed = time.perf_counter() - start
            print(
                f"step {step}: loss {loss.item():.3f}, test accuracy {accuracy:.3f}, {elapsed:.0f} s",
                flush=True,
            )
            if args.save_every_eval:
                save(policy, args.out / f"step_{step}", args, step, accuracy)
    save(policy, args.out, args, args.steps, accuracy)
    print(f"wrote {args.out}")


def save(policy, out: Path, args: argparse.Namespace, step: int, accuracy: float) -> None:
    """The checkpoint plus sft_args.json: the arguments that reproduce it and its measured accuracy."""
    policy.save_pretrained(out)
    record = {k: _portable(v) for k, v in vars(args).items() if k not in ("out", "save_every_eval")}
    record.update(steps=step, test_accuracy=round(accuracy, 4))
    if args.init is not None and (args.init / "sft_args.json").is_file():  # the stage before this one
        record["init_record"] = json.loads((args.init / "sft_args.json").read_text())
    (out / "sft_args.json").write_text(json.dumps(record, indent=2) + "\n")


def _portable(value):
    """Paths inside the repository relative to it, so the record reads the same on every machine."""
    if not isinstance(value, Path):
        return value
    try:
        return str(value.resolve().relative_to(REPO))
    except ValueError:
        return str(value)


if __name__ == "__main__":
    main()
