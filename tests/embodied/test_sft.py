"""Supervised fine-tuning through the runtime (embodied/sft.py): on a handful of oracle demonstrations in the
colour_targets env, the validation loss falls, and the checkpoint is the RL config's policy as it is.

The run uses two actor ranks (FSDP2 over gloo: each rank its share of every epoch), env and rollout workers for
the in-simulator evaluation, checkpoints, and resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from embodied.compose import load_config
from embodied.sft import main as sft_main
from embodied.sft import supervise
from embodied.sft_config import SFTConfig
from embodied.sft_data import DemoBatches
from envs.base import make_env
from envs.colour_targets import ColourTargetsConfig
from envs.demos import open_demos
from policies.base import make_policy, supervised_note, supervised_record
from tests.embodied.sft_demos import RING, write_colour_target_demos

RL_CONFIG = {
    "defaults": [
        {"env": "colour_targets"},
        {"algorithm": "ppo"},
        {"policy": "cnn"},
        {"cluster": "collocated"},
        "_self_",
    ],
    "run": {"name": "ct_ppo", "total_env_steps": 64},
    "cluster": {"component_placement": {"env": "0", "rollout": "0", "actor": "all"}},  # two actor ranks
    "env": {"num_envs": 4, **RING},
    "policy": {
        "channels": [8, 8, 8],
        "feature_dim": 32,
        "head_hidden": 32,
        "init_log_std": -1.0,
        "normalize_states": True,  # SFT sets the statistics from its training demos; the checkpoint carries them
    },
    "rollout": {"num_steps": 8},
    "actor": {"num_minibatches": 2, "update_epochs": 1},
    "eval": {"every_n_iterations": 0, "at_end": False, "num_episodes": 8},
    "checkpoint": {"every_n_iterations": 0, "at_end": False},
    "logger": {"wandb": {"mode": "disabled"}},
}

SFT_CONFIG = """
defaults:
  - ct_ppo
  - _self_
run: {name: ct_sft}
sft: {steps: 60, batch_size: 16, steps_per_iteration: 20, val_fraction: 0.25}
actor: {lr: 3.0e-3, max_grad_norm: 1.0}
eval: {every_n_iterations: 3, at_end: true, num_episodes: 8}
checkpoint: {every_n_iterations: 1, at_end: true}
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    (root / "ct_ppo.yaml").write_text(yaml.safe_dump(RL_CONFIG))
    (root / "ct_sft.yaml").write_text(SFT_CONFIG)
    demos = write_colour_target_demos(root / "demos", ColourTargetsConfig(**RING), episodes=24)
    return root, demos


@pytest.fixture(scope="module")
def sft_run(ray_cluster, setup):
    """60 optimizer steps with two actor ranks; (config, final metrics, run folder)."""
    root, demos = setup
    overrides = [f"sft.demos={demos}", f"run.output_dir={root / 'runs'}"]
    config, tree = load_config(str(root / "ct_sft.yaml"), overrides, schema=SFTConfig)
    final = supervise(config, tree)
    (run_dir,) = (root / "runs" / "ct_sft").iterdir()
    return config, final, run_dir


def scalars(run_dir, tag: str) -> dict[int, float]:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_sft_lowers_the_validation_loss_and_its_checkpoint_is_the_rl_policy(setup, sft_run):
    root, demos = setup
    config, final, run_dir = sft_run
    val = scalars(run_dir, "val/loss")
    assert sorted(val) == [0, 20, 40, 60]
    assert val[60] < 0.5 * val[0], f"validation loss {val}"
    assert "eval/success_once" in final and set(scalars(run_dir, "eval/success_once")) == {60}
    checkpoint = run_dir / "checkpoints" / "iter_000003"
    record = supervised_record(checkpoint / "policy")
    assert record["steps"] == 60 and record["untrained"] == ["log_std", "value_head"]
    assert record["state_normalization"] is True
    note = supervised_note(checkpoint / "policy")  # what an RL run starting there prints
    assert "start untrained here: log_std, value_head" in note

    # the RL config builds its policy from the checkpoint (policy.pretrained), as its actor and rollout workers do
    rl_config, _ = load_config(str(root / "ct_ppo.yaml"), [f"policy.pretrained={checkpoint / 'policy'}"])
    env = make_env(rl_config.env)
    obs = env.reset(seed=7)
    env.close()
    rl_policy = make_policy(rl_config.policy, env.spec)
    # ... and acts as the SFT run's policy with those weights: its validation loss is the one the run logged
    sft_policy = make_policy(config.policy, env.spec)
    sft_policy.load_weights(checkpoint / "policy")
    torch.testing.assert_close(
        rl_policy.predict(obs, mode="eval").actions, sft_policy.predict(obs, mode="eval").actions
    )
    batches = DemoBatches(open_demos(demos), rl_policy.action_horizon, 0.25, config.run.seed)
    # the state standardisation is that of the training frames (both ranks fitted the same), now the RL policy's
    train_states = torch.from_numpy(batches.dataset.states[batches.train_frames]).double()
    torch.testing.assert_close(rl_policy.state_mean, train_states.mean(0).float())
    assert not torch.equal(rl_policy.state_std, torch.ones_like(rl_policy.state_std))
    losses = [(rl_policy.supervised_loss(b)[0].item(), len(b["actions"])) for b in batches.val_batches(16)]
    recomputed = sum(loss * n for loss, n in losses) / sum(n for _, n in losses)
    assert recomputed == pytest.approx(val[60], rel=1e-4)


@pytest.mark.slow
def test_a_resumed_run_continues_exactly_where_it_stopped(setup, sft_run, capsys):
    root, demos = setup
    out = root / "resume"
    base = [str(root / "ct_sft.yaml"), f"sft.demos={demos}", f"run.output_dir={out}", "eval.at_end=false"]
    assert sft_main([*base, "sft.steps=40"]) == 0
    (run_dir,) = (out / "ct_sft").iterdir()
    state = json.loads((run_dir / "checkpoints" / "iter_000002" / "state.json").read_text())
    assert state["optimizer_steps"] == 40 and state["iteration"] == 2
    sampler = json.loads((run_dir / "checkpoints" / "iter_000002" / "sft_sampler_1.json").read_text())
    assert sampler["cursor"] > 0  # rank 1 is part-way through an epoch
    assert sft_main([*base, "sft.steps=60", f"resume={run_dir}"]) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = scalars(run_dir, "train/sft/loss")
    assert sorted(resumed) == [20, 40, 60]
    # the same batches, optimizer state and weights as the uninterrupted run: the same losses
    straight = scalars(sft_run[2], "train/sft/loss")
    assert resumed[60] == pytest.approx(straight[60], rel=1e-5)
    assert scalars(run_dir, "val/loss")[60] == pytest.approx(scalars(sft_run[2], "val/loss")[60], rel=1e-5)


def test_demos_of_another_env_are_refused_before_anything_starts(setup, tmp_path, capsys):
    root, demos = setup
    code = sft_main(["sft_maniskill_pushcube", f"sft.demos={demos}", f"run.output_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "env_id='colour_targets'" in err and "env.task='PushCube-v1'" in err
    assert sft_main(["sft_maniskill_pushcube", f"sft.demos={tmp_path / 'none'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_each_rank_sees_its_share_of_every_epoch(setup):
    _, demos = setup
    dataset = open_demos(demos)
    ranks = [DemoBatches(dataset, 1, 0.25, seed=0, rank=r, world_size=2) for r in range(2)]
    frames = [r.train_frames[r._epoch_order(0)] for r in ranks]
    together = np.concatenate(frames)
    assert (
        len(frames[0]) == len(frames[1])
        and len(set(together.tolist())) == len(together) == ranks[0].epoch_size
    )
    assert not set(together.tolist()) & set(np.concatenate([r.val_frames for r in ranks]).tolist())
    per_rank = len(frames[0])
    ranks[0].train_batch(per_rank)
    assert (ranks[0].epoch, ranks[0].cursor) == (0, per_rank)
    ranks[0].train_batch(3)  # the next epoch starts, with a new order
    assert (ranks[0].epoch, ranks[0].cursor) == (1, 3)
    assert not np.array_equal(ranks[0]._epoch_order(1), ranks[0]._epoch_order(0))


def test_rl_with_the_demos_behaviour_cloning_term_on_two_actor_ranks(setup, sft_run):
    """actor.demos: the RL run from the SFT checkpoint adds the demos' supervised loss to every mini-batch step,
    weighted demo_coef * decay**k from the first policy update on (after one critic warm-up update), over FSDP2's
    two ranks; the term starts near the SFT run's own training loss (it starts from the weights SFT left)."""
    import csv

    from embodied.train import train

    root, demos = setup
    _, _, sft_dir = sft_run
    overrides = [
        f"policy.pretrained={sft_dir / 'checkpoints' / 'iter_000003' / 'policy'}",
        f"actor.demos={demos}",
        "actor.demo_coef=2.0",
        "actor.demo_coef_decay=0.5",
        "actor.demo_batch_size=8",
        "actor.critic_warmup_iterations=1",
        "run.total_env_steps=96",  # 3 iterations of 4 envs x 8 steps
        "checkpoint.at_end=true",
        f"run.output_dir={root / 'rl_demos'}",
    ]
    config, tree = load_config(str(root / "ct_ppo.yaml"), overrides)
    train(config, tree)
    (run_dir,) = (root / "rl_demos" / "ct_ppo").iterdir()
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    weights = {int(r["step"]): float(r["value"]) for r in rows if r["key"] == "train/actor/demo_weight"}
    losses = {int(r["step"]): float(r["value"]) for r in rows if r["key"] == "train/actor/demo_loss"}
    assert weights == {64: 2.0, 96: 1.0}  # none at 32: the critic warm-up update
    sft_loss = scalars(sft_dir, "train/sft/loss")[60]
    assert set(losses) == {64, 96} and all(0 < v < 3 * sft_loss + 0.05 for v in losses.values()), losses
    # each rank's place in the demos is in the checkpoint (resume continues there): 2 updates x 1 epoch x 2
    # mini-batches x 8 frames drawn from its share of all the demos' frames
    checkpoint = sorted((run_dir / "checkpoints").glob("iter_*"))[-1]
    share = DemoBatches(open_demos(demos), 1, 0.0, config.run.seed, 0, 2).epoch_size // 2
    epoch, cursor = divmod(32, share)
    for rank in (0, 1):
        saved = torch.load(checkpoint / f"rng_actor_{rank}.pt", weights_only=False)
        assert saved["demo"] == {"epoch": epoch, "cursor": cursor}, (saved["demo"], share)
