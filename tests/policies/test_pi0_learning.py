"""Learning check (slow): tiny pi0 with Flow-Noise raises its success rate under PPO on colour_targets.

The whole path in one process: images + instruction -> tokens and SigLIP patches -> PaliGemma prefix -> the
action expert's stochastic denoising chain -> actions -> env; then GAE and the PPO update of the runtime's actor
(`embodied.training.ppo_update`, the same code the FSDP2 actor workers run). The settings are those of
configs/colour_targets_ppo_pi0.yaml (two coloured discs; the instruction names one). Success is measured with the
deterministic eval mode on 64 fixed initial states before and after training.
"""

import pytest
import torch

from algorithms.config import AlgorithmConfig
from embodied.config import ActorConfig
from embodied.evaluation import evaluate_in_process, summarize
from embodied.training import build_optimizer, ppo_update
from embodied.trajectory import EnvStep, TrajectoryBuilder, build_train_batch
from envs.base import make_env, select_obs
from envs.colour_targets import ColourTargetsConfig
from policies import make_policy
from policies.pi0 import Pi0Config

ITERATIONS = 60  # ~2-3 minutes on an idle 2-core CPU


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


@pytest.mark.slow
def test_tiny_pi0_flow_noise_learns_colour_targets():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        env_config = ColourTargetsConfig(
            num_envs=32, num_targets=2, target_radius=0.15, max_speed=0.12, time_limit=24, seed=0
        )
        env, eval_env = make_env(env_config), make_env(env_config.replace(num_envs=64, seed=1))
        policy = make_policy(
            Pi0Config(
                chunk_size=4, max_state_dim=32, tokenizer_max_length=12, noise_std_min=0.2, noise_std_max=0.5
            ),
            env.spec,
        )
        actor = ActorConfig(lr=1e-3, update_epochs=2, num_minibatches=4, max_grad_norm=1.0, target_kl=None)
        algorithm = AlgorithmConfig(
            gamma=0.95, gae_lambda=0.95, logprob_granularity="action", value_loss_type="plain"
        )
        optimizer = build_optimizer(policy, actor)
        generator = torch.Generator().manual_seed(0)
        eval_ids = list(range(1_000_000, 1_000_064))
        before = summarize(evaluate_in_process(policy, eval_env, eval_ids))["eval/success_once"]
        obs = env.reset(seed=0)
        for _ in range(ITERATIONS):
            trajectory, obs = collect(env, policy, obs, num_steps=12)
            ppo_update(
                policy, optimizer, build_train_batch(trajectory, algorithm, 1), actor, algorithm, generator
            )
        after = summarize(evaluate_in_process(policy, eval_env, eval_ids))["eval/success_once"]
        print(f"colour_targets success_once (deterministic eval, 64 episodes): {before:.3f} -> {after:.3f}")
        assert after >= before + 0.2 and after >= 0.5, (before, after)
    finally:
        torch.set_num_threads(threads)
        env.close()
        eval_env.close()
