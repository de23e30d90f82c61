"""The runtime on real Ray and real ManiSkill, with tiny budgets: every placement mode with pipeline_stages 1
and 2, weight sync (actor == rollout after a sync), evaluation, core pinning, and no process left behind."""

from __future__ import annotations

import time

import pytest
import torch
from conftest import pids_alive

from embodied.cluster import Cluster
from embodied.components import Components
from embodied.compose import load_config

pytestmark = [pytest.mark.sim, pytest.mark.usefixtures("ray_cluster")]

TINY = [
    "env.num_envs=4",
    "env.max_episode_steps=10",
    "rollout.num_steps=12",  # longer than an episode: truncations are bootstrapped
    "actor.num_minibatches=2",
    "actor.update_epochs=2",
    "eval.num_episodes=6",
    "logger.wandb.mode=disabled",
]
MODES = {
    "collocated": ["cluster=collocated"],
    "disaggregated": ["cluster=disaggregated"],
    "hybrid": ["cluster=hybrid_pipelined"],
}


def all_pids(processes: dict) -> list[int]:
    return [pid for infos in processes.values() for info in infos for pid in [info["pid"], *info["children"]]]


def weights_equal_after_sync(workers: Components) -> None:
    call = workers.actor.sync_weights()
    actor_state = call.wait()[0]["state"]
    workers.rollout.load_weights(call.result_refs[0]).wait()
    for rollout_state in workers.rollout.state_dict().wait():
        assert actor_state.keys() == rollout_state.keys()
        for name, tensor in actor_state.items():
            torch.testing.assert_close(rollout_state[name], tensor, rtol=0, atol=0)


@pytest.mark.parametrize("stages", [1, 2])
@pytest.mark.parametrize("mode", list(MODES))
def test_one_iteration_in_every_mode(mode, stages):
    config, _ = load_config(
        "maniskill_ppo_pushcube", [*TINY, *MODES[mode], f"rollout.pipeline_stages={stages}"]
    )
    cluster = Cluster(config.cluster)
    try:
        assert cluster.placement.mode == mode
        workers = Components(cluster, config)
        processes = workers.worker_processes()
        if mode == "disaggregated":  # 3 slots on 2 cores: env on core 0, rollout on core 1
            assert processes["env"][0]["cores"] == [0] and processes["rollout"][0]["cores"] == [1]
        initial = workers.rollout.state_dict().wait()[0]
        workers.sync_weights()
        rollout = workers.rollout_epoch()
        assert rollout["env_steps"] == 4 * 12
        assert rollout["episodes"] and all(e["episode_len"] <= 10 for e in rollout["episodes"])
        stats = workers.compute_advantages()
        assert "rollout/reward_mean" in stats
        metrics = workers.train()
        assert metrics["train/actor/minibatch_steps"] >= 1 and "train/critic/value_loss" in metrics
        assert workers.sync_weights() == 1
        weights_equal_after_sync(workers)
        trained = workers.rollout.state_dict().wait()[0]
        assert any(not torch.equal(trained[k], initial[k]) for k in initial), "training changed nothing"
        eval_metrics, _ = workers.evaluate(config.eval, video_dir=None)
        assert eval_metrics["eval/num_episodes"] == 6
        assert workers.rollout_epoch()["env_steps"] == 4 * 12  # training resumes after an evaluation
    finally:
        cluster.shutdown()
    deadline = time.monotonic() + 20
    while pids_alive(all_pids(processes)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pids_alive(all_pids(processes)), "worker or simulator processes outlived the cluster"


def test_placement_asking_for_more_slots_than_exist():
    from algorithms.schema import ConfigError

    config, _ = load_config("maniskill_ppo_pushcube", ["cluster.component_placement.actor=0-3"])
    with pytest.raises(ConfigError, match=r"actor='0-3' asks for slots 2, 3 but the cluster has 2 slots"):
        Cluster(config.cluster)


def test_eval_only_run_starts_env_and_rollout_workers_and_loads_a_checkpoint(tmp_path):
    from envs.base import make_env
    from policies.base import make_policy

    config, _ = load_config("maniskill_ppo_pushcube", [*TINY, "cluster=hybrid_pipelined"])
    with make_env(config.env.replace(num_envs=1)) as env:
        spec = env.spec
    torch.manual_seed(123)
    saved = make_policy(config.policy, spec)
    saved.save_pretrained(tmp_path / "policy")
    cluster = Cluster(config.cluster, components=("env", "rollout"))
    try:
        workers = Components(cluster, config)
        assert workers.actor is None and set(workers.worker_processes()) == {"env", "rollout"}
        workers.load_policy(tmp_path / "policy")
        loaded = workers.rollout.state_dict().wait()[0]
        for name, tensor in saved.state_dict().items():
            torch.testing.assert_close(loaded[name], tensor)
        metrics, _ = workers.evaluate(config.eval, video_dir=None)
        assert metrics["eval/num_episodes"] == 6 and 0.0 <= metrics["eval/success_once"] <= 1.0
    finally:
        cluster.shutdown()
