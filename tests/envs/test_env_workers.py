"""`ProcessVectorEnv`: same results as in-process, one message per chunk, errors and cleanup of workers."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from env_toys import CountdownConfig, gone, spawned_children, wait_gone

from envs import make_env
from envs.workers import EnvWorkerError, ProcessVectorEnv, split_envs


def rollout(env, chunks: int = 4, chunk: int = 3):
    """Everything an env returns over a short rollout with auto-resets, as plain lists."""
    torch.manual_seed(0)
    out = [env.reset(seed=3)["states"].tolist()]
    for _ in range(chunks):
        obs, rewards, terms, truncs, infos = env.chunk_step(
            torch.rand(env.num_envs, chunk, env.spec.action_dim)
        )
        out += [
            obs["states"].tolist(),
            obs["task_descriptions"],
            rewards.tolist(),
            terms.tolist(),
            truncs.tolist(),
            infos["final_observation"]["states"].tolist(),
            infos["episode_done"].tolist(),
            {k: v.tolist() for k, v in infos["episode"].items()},
            infos["success"].tolist(),
        ]
    return out


def test_split_envs_is_balanced_and_contiguous():
    assert split_envs(7, 3) == [range(0, 3), range(3, 5), range(5, 7)]
    assert split_envs(4, 4) == [range(i, i + 1) for i in range(4)]


def test_workers_give_the_same_rollout_as_one_process():
    config = CountdownConfig(num_envs=6, group_size=2, period=3, max_episode_steps=4)
    expected = rollout(make_env(config))
    env = make_env(config.replace(num_workers=3))
    assert isinstance(env, ProcessVectorEnv) and len(env.worker_pids) == 3
    try:
        assert rollout(env) == expected
        obs = env.reset(initial_state_ids=[5, 4, 3, 2, 1, 0])
        assert obs["states"][:, 0].tolist() == [5, 4, 3, 2, 1, 0]
        assert obs["states"][:, 2].tolist() == [0, 1, 2, 3, 4, 5]  # each worker holds its own slice
        assert obs["main_images"].shape == (6, 4, 4, 3) and obs["main_images"].dtype == torch.uint8
        obs, rewards, *_ = env.step(torch.zeros(6, 2))
        assert rewards.shape == (6,) and obs["states"].shape == (6, 3)
        with pytest.raises(ValueError, match="actions must be"):
            env.chunk_step(torch.zeros(5, 1, 2))
    finally:
        pids = env.worker_pids
        env.close()
    assert all(gone(p) for p in pids)
    env.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        env.chunk_step(torch.zeros(6, 1, 2))


@pytest.mark.parametrize("failure", ["fail_at_step", "crash_at_step"])
def test_a_failing_worker_raises_in_the_parent_and_all_workers_stop(failure):
    env = make_env(CountdownConfig(num_envs=4, num_workers=2, fail_env=3, **{failure: 2}))
    pids = env.worker_pids
    env.reset()
    env.chunk_step(torch.zeros(4, 1, 2))
    with pytest.raises(EnvWorkerError) as err:
        env.chunk_step(torch.zeros(4, 1, 2))
    message = str(err.value)
    assert "env worker 1 (envs 2-3 of 'countdown')" in message
    if failure == "fail_at_step":
        assert "RuntimeError: countdown failed on purpose" in message
        assert "Worker traceback" in message and "env_toys.py" in message  # the worker's own frames
    else:
        assert "died (exit code 3)" in message
    assert wait_gone(pids, timeout=2.0)


def test_a_worker_failing_to_start_raises_with_its_error():
    before = spawned_children()
    with pytest.raises(EnvWorkerError, match="fail_on_init"):
        make_env(CountdownConfig(num_envs=4, num_workers=2, fail_env=0, fail_on_init=True))
    assert spawned_children() - before == set()


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[2])]!r}
        from env_toys import CountdownConfig, gone, spawned_children, wait_gone
        from envs import make_env
        if __name__ == "__main__":
            env = make_env(CountdownConfig(num_envs=2, num_workers=2))
            env.reset()
            print(*env.worker_pids, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    (tmp_path / "parent.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "parent.py")], capture_output=True, text=True, timeout=120
    )
    pids = [int(p) for p in proc.stdout.split()]
    assert len(pids) == 2, proc.stderr
    assert wait_gone(pids, timeout=10.0)


def test_a_script_without_a_main_guard_is_told_to_add_one(tmp_path):
    script = textwrap.dedent(f"""
        import sys
        sys.path[:0] = {[str(Path(__file__).parent), str(Path(__file__).parents[2])]!r}
        from env_toys import CountdownConfig, gone, spawned_children, wait_gone
        from envs import make_env
        make_env(CountdownConfig(num_envs=2, num_workers=2))
    """)
    (tmp_path / "unguarded.py").write_text(script)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "unguarded.py")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert "EnvWorkerError" in proc.stderr and 'if __name__ == "__main__":' in proc.stderr
