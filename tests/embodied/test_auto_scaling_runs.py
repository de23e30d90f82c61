"""End to end: `cluster=auto` profiles, picks a placement and trains (the math GRPO path: no simulator to
start); online scaling through the real runtime keeps every micro-batch on-policy and hands the new weights
back to the slots it borrowed."""

from __future__ import annotations

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from embodied.compose import load_config
from embodied.train import train

pytestmark = pytest.mark.slow

QUIET = [
    "eval.every_n_iterations=0",
    "eval.at_end=false",
    "checkpoint.every_n_iterations=0",
    "checkpoint.at_end=false",
    "logger.wandb.mode=disabled",
    "logger.console=plain",
]


def test_auto_picks_a_placement_and_trains(tmp_path, capsys):
    config, tree = load_config(
        "math_grpo", ["cluster=auto", "run.total_env_steps=320", *QUIET, f"run.output_dir={tmp_path}"]
    )
    train(config, tree)
    out = capsys.readouterr().out
    assert "auto placement: profiled in" in out and "inference ms by batch size" in out
    assert "| **best** |" in out and "auto placement: chose " in out
    assert "auto placement: predicted " in out and "(median of iterations 2-4)" in out
    (run_dir,) = (tmp_path / "math_grpo").iterdir()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["cluster"]["auto"] is False and set(saved["cluster"]["component_placement"]) == {
        "env",
        "rollout",
        "actor",
    }
    assert saved["rollout"]["pipeline_stages"] in (1, 2, 4)
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    steps = [e.value for e in events.Scalars("train/actor/minibatch_steps")]
    assert len(steps) == 5 and all(s >= 1 for s in steps)
    (error,) = [e.value for e in events.Scalars("plan/prediction_error")]
    (measured,) = [e.value for e in events.Scalars("plan/measured_iteration_s")]
    assert measured > 0 and -0.67 < error < 2.0, f"prediction off by {error:+.0%}: not a model of this run"


def test_online_scaling_keeps_every_micro_batch_on_policy():
    """Two updates on colour_targets with the MLP (hybrid: actor on slot 0, the rollout worker on slot 1
    helps): every micro-batch of update u was collected by weights v(u-1) and computed with them, on both
    members; the helper holds the actor's weights after the update, before any weight sync."""
    import ray

    from embodied.cluster import Cluster
    from embodied.components import Components

    config, _ = load_config(
        "maniskill_ppo_pushcube",
        [
            "env=colour_targets",
            "env.num_envs=8",
            "rollout.num_steps=6",
            "actor.update_epochs=2",
            "cluster.online_scaling=true",
            *QUIET,
        ],
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        cluster = Cluster(config.cluster)
        workers = Components(cluster, config)
        assert workers.scaling is not None and workers.scaling.helpers == [1]
        workers.sync_weights()
        for update in (1, 2):
            workers.rollout_epoch()
            workers.compute_advantages()
            metrics = workers.train()
            assert 0 <= metrics["time/scale_switch"] < 5.0
            actor_state = workers.actor.sync_weights().wait()[0]["state"]
            helper_state = workers.rollout.state_dict().wait()[1]  # rank 1: slot 1, not yet synced
            for name, tensor in actor_state.items():
                torch.testing.assert_close(helper_state[name], tensor, rtol=0, atol=0)
            assert workers.sync_weights() == update
        records = workers.scaling.records()
        for update in (1, 2):
            mine = [r for r in records if r["update"] == update]
            assert {r["member"] for r in mine} == {0, 1}
            assert all(r["data_version"] == r["weights_version"] == update - 1 for r in mine)
            # 2 epochs x 48 samples, shared between the two members
            assert sum(r["samples"] for r in mine) == 2 * 8 * 6
        cluster.shutdown()
    finally:
        ray.shutdown()
