"""The PPO loop of the toy-env learning checks (tiny pi0, tiny OpenVLA-OFT): single process, the runtime's own
trajectory builder and update (`embodied.training.ppo_update`, the code the FSDP2 actor workers run).

The env setting makes the image and the instruction both necessary: two discs (red and green, in random order)
left and right of the cursor, the instruction names one, touching the other one fails the episode. A policy that
ignores the image (or the instruction) succeeds at most half the time; the trained policy is also evaluated on
blank images (`WithoutTargets`) to show that its success comes from what it sees."""

from __future__ import annotations

import torch

from algorithms.config import AlgorithmConfig
from embodied.config import ActorConfig
from embodied.evaluation import evaluate_in_process, summarize
from embodied.training import build_optimizer, ppo_update, schedule_lr
from embodied.trajectory import EnvStep, TrajectoryBuilder, build_train_batch
from envs.base import make_env, select_obs
from envs.colour_targets import BACKGROUND, ColourTargetsConfig
from policies import make_policy
from policies.base import PolicyConfig

# Red and green discs left and right of the cursor, the instruction names one; 32 envs x 12 chunk steps per
# iteration (episodes last one to three chunks).
ENV = ColourTargetsConfig(
    num_envs=32,
    layout="ring",
    ring_rotation="fixed",
    ring_radius=0.32,
    num_targets=2,
    num_colours=2,
    target_radius=0.15,
    wrong_target_fails=True,
    max_speed=0.12,
    time_limit=12,
    seed=0,
)
ACTOR = ActorConfig(
    lr=3e-4, lr_schedule="linear", update_epochs=2, num_minibatches=4, max_grad_norm=1.0, target_kl=None
)
ALGORITHM = AlgorithmConfig(
    gamma=0.95, gae_lambda=0.95, logprob_granularity="action", value_loss_type="plain"
)
EVAL_IDS = list(range(1_000_000, 1_000_064))  # 64 fixed initial states, deterministic eval


class WithoutTargets:
    """The policy shown every image as bare background (no discs, no cursor): what it achieves without looking,
    which tells a policy that reads the image from one that learned a blind habit."""

    def __init__(self, policy) -> None:
        self.policy = policy

    def predict(self, obs, mode):
        blank = torch.empty_like(obs["main_images"])
        blank[:] = torch.from_numpy(BACKGROUND)
        return self.policy.predict({**obs, "main_images": blank}, mode)


def collect(env, policy, obs, num_steps: int):
    """One rollout epoch: T chunk steps of all envs, with bootstrap values for truncated episodes."""
    builder = TrajectoryBuilder(env_start=0, version=0)
    for _ in range(num_steps):
        out = policy.predict(obs)
        builder.add_output(out)
        obs, rewards, terms, truncs, infos = env.chunk_step(out.actions)
        ended = terms | truncs
        final_values = torch.zeros(env.num_envs)
        truncated = truncs.any(1) & ~terms.any(1)
        if truncated.any():
            rows = truncated.nonzero().flatten()
            final_values[rows] = policy.predict(select_obs(infos["final_observation"], rows)).values
        valid = torch.cumsum(ended.int(), 1) - ended.int() == 0
        builder.add_outcome(EnvStep(obs, rewards, terms, truncs, valid=valid), final_values)
    builder.add_bootstrap(policy.predict(obs).values)
    return builder.build(), obs


def success(policy, eval_env) -> float:
    return summarize(evaluate_in_process(policy, eval_env, EVAL_IDS))["eval/success_once"]


def ppo_on_colour_targets(
    policy_config: PolicyConfig, iterations: int, seed: int = 0, actor: ActorConfig = ACTOR
) -> dict[str, float]:
    """Eval success before and after `iterations` PPO iterations (one thread, seeded), and after training with
    blank images ("blank_images"). `actor`: the update's settings (ACTOR unless a check says why not)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    env, eval_env = make_env(ENV), make_env(ENV.replace(num_envs=64, seed=1))
    try:
        policy = make_policy(policy_config, env.spec)
        optimizer = build_optimizer(policy, actor)
        generator = torch.Generator().manual_seed(seed)
        results = {"before": success(policy, eval_env)}
        obs = env.reset(seed=seed)
        for i in range(iterations):
            schedule_lr(optimizer, actor, i / iterations)
            trajectory, obs = collect(env, policy, obs, num_steps=12)
            ppo_update(
                policy, optimizer, build_train_batch(trajectory, ALGORITHM, 1), actor, ALGORITHM, generator
            )
        results["after"] = success(policy, eval_env)
        results["blank_images"] = success(WithoutTargets(policy), eval_env)
        print(f"colour_targets success_once (deterministic eval, 64 episodes): {results}")
        return results
    finally:
        torch.set_num_threads(threads)
        env.close()
        eval_env.close()
