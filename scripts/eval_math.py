"""Greedy (and, with --samples, sampled) accuracy of a causal LM on a math data file, in one process (no Ray): a run's checkpoint or a Hugging
Face model folder, on held-out problems (the runner's periodic eval uses the training file's first problems).

    python scripts/eval_math.py runs/math_grpo/<time>/checkpoints/iter_000400     # a training checkpoint
    python scripts/eval_math.py policies/causal_lm/pretrained/arithmetic_char_llama  # a model folder
    python scripts/eval_math.py CKPT --data-file my_test.jsonl --num-problems 500
    python scripts/eval_math.py CKPT --samples 4      # + accuracy of 4 sampled answers a problem (train reward)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import yaml

from envs.math import load_problems, math_env_spec
from envs.math.config import SHIPPED_DATA
from policies import PolicyConfig, make_policy
from policies.causal_lm.sft import answer_accuracy


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "model", type=Path, help="a run checkpoint folder (with config.yaml) or a Hugging Face folder"
    )
    p.add_argument("--data-file", type=Path, default=SHIPPED_DATA / "arithmetic_test.jsonl")
    p.add_argument("--num-problems", type=int, default=None, help="the first N problems; default: all")
    p.add_argument(
        "--max-response-tokens", type=int, default=8, help="for a model folder (a checkpoint knows)"
    )
    p.add_argument(
        "--max-prompt-tokens", type=int, default=24, help="for a model folder (a checkpoint knows)"
    )
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        help="also report the accuracy of this many sampled responses per problem (the policy's temperature, "
        "top-k, top-p, as in training: the expected training reward); 0: greedy only",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled responses")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def load_policy(args: argparse.Namespace):
    """The policy of a checkpoint (its run config + weights) or of a model folder."""
    run_config = args.model / "config.yaml"
    if run_config.is_file():
        tree = yaml.safe_load(run_config.read_text())
        policy_config = PolicyConfig.from_dict(tree["policy"], path="policy")
        spec = math_env_spec(1, tree["env"]["max_response_tokens"], _vocab(policy_config))
        policy = make_policy(policy_config, spec)
        policy.load_weights(args.model / "policy")
        return policy
    config = {"name": "causal_lm", "pretrained": str(args.model), "max_prompt_tokens": args.max_prompt_tokens}
    policy_config = PolicyConfig.from_dict(config, path="policy")
    return make_policy(policy_config, math_env_spec(1, args.max_response_tokens, _vocab(policy_config)))


def _vocab(policy_config) -> int:
    """The tokenizer's size (the env spec's action range); the character tokenizer's for a scratch model."""
    from transformers import AutoTokenizer

    from policies.causal_lm import build_char_tokenizer
    from policies.causal_lm.modeling import model_dir

    if policy_config.pretrained is None:
        return len(build_char_tokenizer())
    return len(AutoTokenizer.from_pretrained(str(model_dir(policy_config.pretrained))))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    problems = load_problems(args.data_file)[: args.num_problems]
    policy = load_policy(args).eval()
    result = {"model": str(args.model), "data_file": str(args.data_file), "problems": len(problems)}
    result["greedy_accuracy"] = round(answer_accuracy(policy, problems), 4)
    if args.samples:
        torch.manual_seed(args.seed)
        accuracy = answer_accuracy(policy, problems, sampled=True, repeats=args.samples)
        result["sampled_accuracy"] = round(accuracy, 4)
        result["samples_per_problem"] = args.samples
    print(json.dumps(result))


if __name__ == "__main__":
    main()
