"""Single-process CleanRL-style PPO on ManiSkill (no Ray): the reference the runtime's learning is compared to.

One process steps all envs one after the other, infers and trains, with the same policy, advantage, loss
and update code as the runtime (`policies.gaussian`, `algorithms`, `embodied.training`). Defaults are
ManiSkill's PPO baseline for PushCube-v1 as the issue quotes it: 8 envs, 200 steps per iteration, gamma 0.8,
lambda 0.9, 8 update epochs, 4 minibatches, lr 3e-4, target KL 0.1, terminations bootstrapped from the final
observation's value like truncations.

    python scripts/reference_ppo.py --task PushCube-v1 --minutes 6 --out runs/reference_pushcube.csv

Prints one line per evaluation (deterministic, 64 fixed initial states) and writes them as CSV.
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import torch

from algorithms.config import AlgorithmConfig
from embodied.config import ActorConfig
from embodied.evaluation import evaluate_in_process, summarize
from embodied.training import build_optimizer, ppo_update
from embodied.trajectory import EnvStep, TrajectoryBuilder, build_train_batch
from envs.base import EnvConfig, make_env, select_obs
from policies.base import PolicyConfig, make_policy


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="PushCube-v1")
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--num-steps", type=int, default=200, help="steps per env per iteration")
    p.add_argument("--minutes", type=float, default=6.0, help="wall-clock budget")
    p.add_argument("--total-steps", type=int, default=10**9)
    p.add_argument("--eval-every", type=int, default=5, help="iterations between evaluations")
    p.add_argument("--eval-episodes", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-bootstrap-on-termination",
        dest="bootstrap",
        action="store_false",
        help="do not bootstrap terminated episodes (ManiSkill's baseline does, and so does this by default)",
    )
    p.add_argument("--out", default=None, help="CSV of (minutes, env_steps, success_once, return)")
    return p.parse_args()


def collect(env, policy, obs, num_steps: int):
    """One rollout epoch in this process; returns the trajectory, the next obs and the finished episodes."""
    builder = TrajectoryBuilder(env_start=0, version=0)
    episodes = []
    for _ in range(num_steps):
        out = policy.predict(obs)
        builder.add_output(out)
        obs, rewards, terms, truncs, infos = env.chunk_step(out.actions)
        done_before = torch.cumsum((terms | truncs).int(), 1) - (terms | truncs).int()
        step = EnvStep(obs, rewards, terms, truncs, valid=done_before == 0)
        final_values = torch.zeros(env.num_envs)
        ended = infos["episode_done"]
        if ended.any():
            rows = ended.nonzero().flatten()
            final_obs = select_obs(infos["final_observation"], rows)
            final_values[rows] = policy.predict(final_obs).values.cpu()
        builder.add_outcome(step, final_values)
        for i in infos["episode_done"].nonzero().flatten().tolist():
            episodes.append({k: float(v[i]) for k, v in infos["episode"].items()})
    builder.add_bootstrap(policy.predict(obs).values)
    return builder.build(), obs, episodes


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    start = time.time()
    env_dict = {
        "name": "maniskill",
        "task": args.task,
        "num_envs": args.num_envs,
        "num_workers": 1,
        "control_mode": "pd_joint_delta_pos",
        "seed": args.seed,
    }
    env = make_env(EnvConfig.from_dict(env_dict, path="env"))
    eval_env = make_env(EnvConfig.from_dict({**env_dict, "seed": args.seed + 1}, path="env"))
    policy = make_policy(PolicyConfig.from_dict({"name": "mlp"}, path="policy"), env.spec)
    actor = ActorConfig()
    algorithm = AlgorithmConfig(
        gamma=0.8, gae_lambda=0.9, logprob_granularity="action", value_loss_type="plain"
    )
    optimizer = build_optimizer(policy, actor)
    generator = torch.Generator().manual_seed(args.seed)
    obs = env.reset(seed=args.seed)
    rows, steps, iteration = [], 0, 0
    eval_ids = list(range(1_000_000, 1_000_000 + args.eval_episodes))
    print(f"start-up {time.time() - start:.1f}s", flush=True)
    while (time.time() - start) / 60 < args.minutes and steps < args.total_steps:
        trajectory, obs, _ = collect(env, policy, obs, args.num_steps)
        steps += args.num_envs * args.num_steps
        ppo_update(
            policy,
            optimizer,
            build_train_batch(trajectory, algorithm, 1, bootstrap_on_termination=args.bootstrap),
            actor,
            algorithm,
            generator,
        )
        iteration += 1
        if iteration % args.eval_every == 0:
            metrics = summarize(evaluate_in_process(policy, eval_env, eval_ids))
            minutes = (time.time() - start) / 60
            rows.append((round(minutes, 3), steps, metrics["eval/success_once"], metrics["eval/return"]))
            print(
                f"{minutes:6.2f} min  {steps:8d} steps  success_once {metrics['eval/success_once']:.3f}  "
                f"return {metrics['eval/return']:.2f}",
                flush=True,
            )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            csv.writer(f).writerows([("minutes", "env_steps", "success_once", "return"), *rows])
    env.close()
    eval_env.close()


if __name__ == "__main__":
    main()
