"""Throughput of the VLA policies: rollout (`predict`) and training (`evaluate` + backward).

    python scripts/bench_policies.py                                   # every tiny policy on CPU
    python scripts/bench_policies.py --cases openvla_oft --batch 32 --threads 1
    python scripts/bench_policies.py --size real --device cuda --dtype bfloat16   # released sizes, random weights

For each case it prints the median over `--repeats` runs (after one warm-up) of
- predict: env actions per second (batch x chunk length, train-mode sampling, no grad);
- train: samples per second of `evaluate` + backward of a loss over log-probs, entropy and values.

Each case is a function `(size, device, dtype, batch) -> (policy, obs)` registered in CASES: to benchmark another
policy, add a function building it and its observations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from envs.base import EnvSpec
from policies import make_policy
from policies.base import Policy, PolicyConfig

Case = Callable[[str, str, str, int], tuple[Policy, dict]]
CASES: dict[str, Case] = {}
INSTRUCTION = "move the cursor to the red target"


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn

    return register


def image_obs(batch: int, image: int, action_dim: int, device: str) -> tuple[EnvSpec, dict]:
    spec = EnvSpec(
        action_dim=action_dim,
        action_low=(-1.0,) * action_dim,
        action_high=(1.0,) * action_dim,
        state_dim=8,
        image_size=(image, image),
        has_wrist_image=False,
        max_episode_steps=80,
        num_initial_states=None,
    )
    obs = {
        "main_images": torch.randint(0, 256, (batch, image, image, 3), dtype=torch.uint8, device=device),
        "states": torch.zeros(batch, 8, device=device),
        "task_descriptions": [INSTRUCTION] * batch,
    }
    return spec, obs


def openvla_case(name: str, chunks: int) -> Case:
    def build(size: str, device: str, dtype: str, batch: int) -> tuple[Policy, dict]:
        architecture = "tiny" if size == "tiny" else "openvla-7b"
        spec, obs = image_obs(batch, 64 if size == "tiny" else 224, 7, device)
        config = PolicyConfig.from_dict(
            {
                "name": name,
                "architecture": architecture,
                "num_action_chunks": chunks,
                "dtype": dtype,
                "gradient_checkpointing": size == "real",
            },  # fmt: skip
            path="policy",
        )
        with torch.device(device):  # real sizes: random init directly on the GPU
            return make_policy(config, spec), obs

    return build


case("openvla")(openvla_case("openvla", chunks=1))
case("openvla_oft")(openvla_case("openvla_oft", chunks=8))


# -- pi0 (policies/pi0) -----------------------------------------------------------------------------------------------
def pi0_case(method: str) -> Case:
    """Tiny: the default Pi0Config (64x64 env frames resized to 32, K=4 steps, chunk 8). Real: the released sizes
    (PaliGemma gemma_2b + gemma_300m expert + SigLIP So400m/14 at 224, chunk 50, K=10), random weights, 5 actions
    of each chunk executed, gradient checkpointing."""

    def build(size: str, device: str, dtype: str, batch: int) -> tuple[Policy, dict]:
        from policies.pi0.configuration_pi0 import GEMMA_VARIANTS, PALIGEMMA_VOCAB_SIZE, SIGLIP_SO400M_224

        spec, obs = image_obs(batch, 64 if size == "tiny" else 224, 7, device)
        fields = {"name": "pi0", "rl_method": method, "dtype": dtype}
        if size == "real":
            fields.update(
                vlm=GEMMA_VARIANTS["gemma_2b"].to_dict(), expert=GEMMA_VARIANTS["gemma_300m"].to_dict(),
                vision=SIGLIP_SO400M_224.to_dict(), vocab_size=PALIGEMMA_VOCAB_SIZE, chunk_size=50,
                max_state_dim=32, max_action_dim=32, num_steps=10, action_chunk=5, tokenizer="word_hash",
                tokenizer_max_length=48, gradient_checkpointing=True,
            )  # fmt: skip
        config = PolicyConfig.from_dict(fields, path="policy")
        return make_policy(config, spec).to(device), obs

    return build


case("pi0_flow_noise")(pi0_case("flow_noise"))
case("pi0_flow_sde")(pi0_case("flow_sde"))


def median_seconds(fn: Callable[[], object], repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step(policy: Policy, forward_inputs: dict) -> None:
    out = policy.evaluate(forward_inputs)
    loss = -out.logprobs.mean() - 0.01 * out.entropy.mean()
    if out.values is not None:
        loss = loss + out.values.square().mean()
    loss.backward()
    policy.zero_grad(set_to_none=True)


def bench(name: str, args: argparse.Namespace) -> str:
    policy, obs = CASES[name](args.size, args.device, args.dtype, args.batch)
    chunk = policy.predict(obs).actions.shape[1]
    predict_s = median_seconds(lambda: policy.predict(obs), args.repeats, args.device)
    forward_inputs = policy.predict(obs).forward_inputs
    policy.train()
    train_s = median_seconds(lambda: train_step(policy, forward_inputs), args.repeats, args.device)
    params = sum(p.numel() for p in policy.parameters())
    return (
        f"| {name} | {args.size} | {params / 1e6:.2f}M | {args.batch} x C={chunk} | "
        f"{args.batch * chunk / predict_s:,.0f} actions/s ({predict_s * 1e3:.0f} ms) | "
        f"{args.batch / train_s:,.1f} samples/s ({train_s * 1e3:.0f} ms) |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cases", nargs="+", default=sorted(CASES), choices=sorted(CASES))
    parser.add_argument("--size", choices=("tiny", "real"), default="tiny")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument(
        "--batch", type=int, default=16, help="envs per predict call / samples per train step"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if args.size == "real" and args.device == "cpu":
        parser.error("--size real builds billions of parameters: use --device cuda (and --dtype bfloat16)")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"device={args.device} dtype={args.dtype} threads={args.threads} torch={torch.__version__}")
    print("| policy | size | params | batch | predict | evaluate + backward |\n|---|---|---|---|---|---|")
    for name in args.cases:
        print(bench(name, args), flush=True)


if __name__ == "__main__":
    main()
