"""The strong baseline: CleanRL-style PPO on ManiSkill3's CPU simulator with gymnasium's AsyncVectorEnv.

What a user of this field writes without the suite: one file, ManiSkill's PPO baseline hyperparameters (3x256
tanh actor and critic, state-independent log-std from -0.5, gamma 0.8, lambda 0.9, 8 epochs, 4 minibatches,
lr 3e-4, target KL 0.1, terminations bootstrapped from the final observation's value like truncations), and
`gymnasium.vector.AsyncVectorEnv` over 8 single-env ManiSkill processes (the CPU backend holds one env per
process). It imports only torch, numpy, gymnasium and mani_skill: it is the yardstick for the suite, so it
shares none of the suite's code.

Evaluation follows the suite's protocol (embodied/evaluation.py): deterministic actions (the Gaussian's mean,
clipped to the action bounds) from the fixed initial states 1,000,000 + 0..63 (a ManiSkill initial state is its
reset seed), the first episode of each env per round, success_once averaged over the 64 episodes; the training
envs start fresh episodes afterwards.

    python scripts/baseline_cleanrl_ppo.py --task PushCube-v1 --seed 0 --out runs/baseline/pushcube_s0.csv

Prints one line per iteration and per evaluation; writes the evaluations as CSV (seconds and minutes since the
command started, env steps, success_once, return) after each one.
"""

import time

START = time.time()  # the command's clock starts before the heavy imports, as a user's stopwatch would

import argparse  # noqa: E402
import csv  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
from pathlib import Path  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.distributions import Normal  # noqa: E402

os.environ.setdefault("MS_SKIP_ASSET_DOWNLOAD_PROMPT", "1")
import mani_skill.envs  # noqa: E402, F401  (registers the tasks)
from mani_skill.utils.wrappers.gymnasium import CPUGymWrapper  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="PushCube-v1", help="ManiSkill task id")
    p.add_argument("--seed", type=int, default=0, help="seed of torch, numpy and the training envs")
    p.add_argument("--num-envs", type=int, default=8, help="envs, one ManiSkill process each")
    p.add_argument("--num-steps", type=int, default=200, help="steps per env per iteration (rollout length)")
    p.add_argument("--total-steps", type=int, default=400_000, help="stop after this many env steps")
    p.add_argument("--minutes", type=float, default=None, help="also stop after this many minutes")
    p.add_argument("--lr", type=float, default=3e-4, help="Adam learning rate")
    p.add_argument("--anneal-lr", action="store_true", help="decay the learning rate linearly to 0")
    p.add_argument("--gamma", type=float, default=0.8, help="discount factor")
    p.add_argument("--gae-lambda", type=float, default=0.9, help="GAE lambda")
    p.add_argument("--update-epochs", type=int, default=8, help="passes over each rollout")
    p.add_argument("--num-minibatches", type=int, default=4, help="minibatches per pass")
    p.add_argument("--clip-coef", type=float, default=0.2, help="PPO ratio clip")
    p.add_argument("--vf-coef", type=float, default=0.5, help="value loss coefficient")
    p.add_argument("--ent-coef", type=float, default=0.0, help="entropy bonus coefficient")
    p.add_argument("--max-grad-norm", type=float, default=0.5, help="gradient clipping norm")
    p.add_argument("--target-kl", type=float, default=0.1, help="stop an update once approx KL exceeds it")
    p.add_argument("--threads", type=int, default=1, help="torch threads of the learner process")
    p.add_argument("--eval-every-steps", type=int, default=8000, help="evaluate every this many env steps")
    p.add_argument("--eval-episodes", type=int, default=64, help="episodes per evaluation")
    p.add_argument("--eval-first-seed", type=int, default=1_000_000, help="first fixed initial state")
    p.add_argument(
        "--stop-after-evals-past",
        type=float,
        nargs=2,
        metavar=("THRESHOLD", "EVALS"),
        default=None,
        help="stop EVALS evaluations after the first that reaches THRESHOLD (a stability check)",
    )
    p.add_argument("--out", default=None, help="CSV of the evaluations")
    return p.parse_args()


def layer_init(layer: nn.Linear, std: float = np.sqrt(2)) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, std)
    nn.init.constant_(layer.bias, 0.0)
    return layer


def mlp(n_in: int, n_out: int, out_std: float) -> nn.Sequential:
    return nn.Sequential(
        layer_init(nn.Linear(n_in, 256)),
        nn.Tanh(),
        layer_init(nn.Linear(256, 256)),
        nn.Tanh(),
        layer_init(nn.Linear(256, 256)),
        nn.Tanh(),
        layer_init(nn.Linear(256, n_out), std=out_std),
    )


class Agent(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.critic = mlp(obs_dim, 1, out_std=1.0)
        self.actor_mean = mlp(obs_dim, act_dim, out_std=0.01 * np.sqrt(2))
        self.actor_logstd = nn.Parameter(torch.full((1, act_dim), -0.5))

    def get_value(self, x: torch.Tensor) -> torch.Tensor:
        return self.critic(x).flatten()

    def get_action_and_value(self, x: torch.Tensor, action: torch.Tensor | None = None):
        mean = self.actor_mean(x)
        dist = Normal(mean, self.actor_logstd.expand_as(mean).exp())
        if action is None:
            action = dist.sample()
        return action, dist.log_prob(action).sum(1), dist.entropy().sum(1), self.critic(x).flatten()


def make_env(task: str):
    def thunk():
        env = gym.make(
            task,
            num_envs=1,
            obs_mode="state",
            control_mode="pd_joint_delta_pos",
            reward_mode="normalized_dense",
            sim_backend="physx_cpu",
            render_backend="cpu",
        )
        return CPUGymWrapper(env, record_metrics=True)

    return thunk


def final_episodes(infos: dict) -> tuple[np.ndarray, dict]:
    """(mask [N], episode metrics {name: [N]}) of the episodes that ended in this step (SAME_STEP autoreset)."""
    if "final_info" not in infos:
        return np.zeros(0, bool), {}
    return infos["_final_info"], infos["final_info"]["episode"]


def evaluate(agent: Agent, envs, seeds: list[int], low: torch.Tensor, high: torch.Tensor) -> dict[str, float]:
    """Deterministic episodes from the initial states `seeds`, `envs.num_envs` at a time; the first episode of
    each env per round counts."""
    n = envs.num_envs
    success, returns = [], []
    for start in range(0, len(seeds), n):
        round_seeds = seeds[start : start + n]
        padded = round_seeds + [round_seeds[0]] * (n - len(round_seeds))  # a short last round repeats a state
        obs, _ = envs.reset(seed=padded)
        tracked = np.arange(n) < len(round_seeds)
        while tracked.any():
            with torch.no_grad():
                action = agent.actor_mean(torch.from_numpy(obs))
            obs, _, _, _, infos = envs.step(torch.clamp(action, low, high).numpy())
            ended, episode = final_episodes(infos)
            for i in np.flatnonzero(ended & tracked) if len(ended) else []:
                success.append(float(episode["success_once"][i]))
                returns.append(float(episode["return"][i]))
            if len(ended):
                tracked &= ~ended
    return {"success_once": float(np.mean(success)), "return": float(np.mean(returns))}


def gae(rewards, values, next_values, dones, gamma: float, lam: float) -> torch.Tensor:
    """Advantages [T, N]: `next_values` [T, N] is the value of each step's next observation (the final one's
    where an episode ended, since terminations are bootstrapped too); `dones` [T, N] cut the recursion."""
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        last = delta + gamma * lam * (1.0 - dones[t]) * last
        advantages[t] = last
    return advantages


def update(agent, optimizer, batch: dict[str, torch.Tensor], args) -> dict[str, float]:
    """PPO epochs over one rollout (CleanRL's loop, with ManiSkill's early stop on approx KL)."""
    size = batch["obs"].shape[0]
    minibatch_size = size // args.num_minibatches
    stats = {"approx_kl": 0.0, "clipfrac": 0.0, "minibatches": 0}
    for _ in range(args.update_epochs):
        order = torch.randperm(size)
        for start in range(0, size, minibatch_size):
            mb = order[start : start + minibatch_size]
            _, newlogprob, entropy, newvalue = agent.get_action_and_value(
                batch["obs"][mb], batch["actions"][mb]
            )
            logratio = newlogprob - batch["logprobs"][mb]
            ratio = logratio.exp()
            with torch.no_grad():
                approx_kl = ((ratio - 1) - logratio).mean()
                clipfrac = ((ratio - 1.0).abs() > args.clip_coef).float().mean()
            if args.target_kl is not None and approx_kl > args.target_kl:
                return stats
            mb_adv = batch["advantages"][mb]
            mb_adv = (mb_adv - mb_adv.mean()) / (mb_adv.std() + 1e-8)
            pg_loss1 = -mb_adv * ratio
            pg_loss2 = -mb_adv * torch.clamp(ratio, 1 - args.clip_coef, 1 + args.clip_coef)
            pg_loss = torch.max(pg_loss1, pg_loss2).mean()
            v_loss = 0.5 * ((newvalue - batch["returns"][mb]) ** 2).mean()
            loss = pg_loss - args.ent_coef * entropy.mean() + args.vf_coef * v_loss
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
            optimizer.step()
            stats["approx_kl"], stats["clipfrac"] = float(approx_kl), float(clipfrac)
            stats["minibatches"] += 1
    return stats


def collect(agent: Agent, envs, next_obs: np.ndarray, num_steps: int, low, high):
    """One rollout of `num_steps` vector steps; returns the training batch (with GAE advantages and returns)
    and the observation to continue from."""
    n = envs.num_envs
    obs, actions, logprobs, rewards, dones, values, final_values = ([] for _ in range(7))
    for _ in range(num_steps):
        x = torch.from_numpy(next_obs)
        with torch.no_grad():
            action, logprob, _, value = agent.get_action_and_value(x)
        next_obs, reward, terminations, truncations, infos = envs.step(torch.clamp(action, low, high).numpy())
        done = terminations | truncations
        final_value = torch.zeros(n)
        if done.any():  # bootstrap from the episode's own last observation, not the reset one
            final = np.stack([infos["final_obs"][i] for i in np.flatnonzero(done)])
            with torch.no_grad():
                final_value[torch.from_numpy(done)] = agent.get_value(torch.from_numpy(final))
        obs.append(x)
        actions.append(action)
        logprobs.append(logprob)
        values.append(value)
        rewards.append(torch.from_numpy(np.asarray(reward, np.float32)))
        dones.append(torch.from_numpy(done.astype(np.float32)))
        final_values.append(final_value)
    with torch.no_grad():
        last_value = agent.get_value(torch.from_numpy(next_obs))
    values_t, dones_t = torch.stack(values), torch.stack(dones)
    next_values = torch.cat([values_t[1:], last_value[None]]) * (1.0 - dones_t) + torch.stack(final_values)
    return (
        {
            "obs": torch.cat(obs),
            "actions": torch.cat(actions),
            "logprobs": torch.cat(logprobs),
            "values": values_t,
            "rewards": torch.stack(rewards),
            "next_values": next_values,
            "dones": dones_t,
        },
        next_obs,
    )


def write_csv(path: str, rows: list[tuple]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([("seconds", "minutes", "env_steps", "success_once", "return"), *rows])


def stop_for_stability(rows: list[tuple], rule: list[float] | None) -> bool:
    """--stop-after-evals-past THRESHOLD EVALS: True once EVALS evaluations followed the first >= THRESHOLD."""
    if rule is None:
        return False
    threshold, evals = rule
    first = next((k for k, row in enumerate(rows) if row[3] >= threshold), None)
    return first is not None and len(rows) - 1 - first >= evals


def main() -> None:
    args = parse_args()
    # the env processes fork from one server that imported ManiSkill once (seconds per import, not 8 times)
    multiprocessing.set_forkserver_preload(["mani_skill.envs"])
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    envs = gym.vector.AsyncVectorEnv(
        [make_env(args.task) for _ in range(args.num_envs)],
        context="forkserver",  # fork hangs: gymnasium builds a first env (and SAPIEN's renderer) in this process
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,  # final observations for bootstrapping
    )
    low = torch.from_numpy(envs.single_action_space.low)
    high = torch.from_numpy(envs.single_action_space.high)
    agent = Agent(envs.single_observation_space.shape[0], envs.single_action_space.shape[0])
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.lr, eps=1e-5)
    eval_seeds = list(range(args.eval_first_seed, args.eval_first_seed + args.eval_episodes))
    next_obs, _ = envs.reset(seed=args.seed)
    rows, env_steps, iteration = [], 0, 0
    print(f"start-up {time.time() - START:.1f}s", flush=True)
    while env_steps < args.total_steps:
        if args.minutes is not None and time.time() - START > 60 * args.minutes:
            break
        if args.anneal_lr:
            optimizer.param_groups[0]["lr"] = args.lr * (1.0 - env_steps / args.total_steps)
        t0 = time.time()
        batch, next_obs = collect(agent, envs, next_obs, args.num_steps, low, high)
        env_steps += args.num_envs * args.num_steps
        iteration += 1
        rollout_s, t0 = time.time() - t0, time.time()
        advantages = gae(
            batch["rewards"],
            batch["values"],
            batch["next_values"],
            batch["dones"],
            args.gamma,
            args.gae_lambda,
        )
        batch["advantages"] = advantages.flatten()
        batch["returns"] = (advantages + batch["values"]).flatten()
        stats = update(agent, optimizer, batch, args)
        print(
            f"it {iteration}  steps {env_steps}  rollout {rollout_s:.2f}s "
            f"({args.num_envs * args.num_steps / rollout_s:.0f} steps/s)  update {time.time() - t0:.2f}s "
            f"({stats['minibatches']} minibatches)  approx_kl {stats['approx_kl']:.4f}",
            flush=True,
        )
        if env_steps % args.eval_every_steps < args.num_envs * args.num_steps:
            metrics = evaluate(agent, envs, eval_seeds, low, high)
            next_obs, _ = envs.reset()  # training continues from fresh episodes
            seconds = time.time() - START
            rows.append((round(seconds, 2), round(seconds / 60, 4), env_steps, *metrics.values()))
            print(
                f"eval  {seconds:7.1f}s  steps {env_steps}  success_once {metrics['success_once']:.3f}",
                flush=True,
            )
            if args.out:
                write_csv(args.out, rows)
            if stop_for_stability(rows, args.stop_after_evals_past):
                break
    envs.close()


if __name__ == "__main__":
    main()
