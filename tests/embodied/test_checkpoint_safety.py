"""Checkpoints that cannot hurt: a file that would run code while loading is refused, a damaged or foreign
checkpoint is named with its mismatch before any worker starts, and a checkpoint that does not fit on the
disk fails with the folder and the space it needs while the previous one stays loadable."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from embodied import fsdp
from embodied.checkpoint import (
    LAYOUT_VERSION,
    Checkpointer,
    CheckpointError,
    CheckpointWriteError,
    latest_checkpoint,
    load_torch_file,
    restore_driver_rng,
)
from embodied.checkpoint_check import verify_checkpoint
from embodied.config import ActorConfig
from embodied.training import build_optimizer
from envs.base import EnvSpec
from policies.base import PolicyConfig, make_policy

SPEC = EnvSpec(3, (-1.0,) * 3, (1.0,) * 3, 5, None, False, 20, None)
MARKER = "inflow_payload_ran"


def mlp(hidden: list[int]) -> PolicyConfig:
    return PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": hidden}, path="policy")


def write_state(config: PolicyConfig):
    """What the workers write into a checkpoint folder: weights, optimizer (keyed by name), RNG states."""

    def write(folder: Path) -> None:
        policy = make_policy(config, SPEC)
        optimizer = build_optimizer(policy, ActorConfig())
        policy.save_pretrained(folder / "policy")
        torch.save(fsdp.full_optimizer_state(policy, optimizer), folder / "optimizer.pt")
        (folder / "actor.json").write_text(json.dumps({"version": 3}))
        torch.save(
            {"rng": {"torch": torch.get_rng_state()}, "generator": torch.get_rng_state()},
            folder / "rng_actor_0.pt",
        )
        torch.save({"torch": torch.get_rng_state()}, folder / "rng_rollout_0.pt")

    return write


def save(run_dir: Path, iteration: int, hidden: list[int] = [8]) -> Path:  # noqa: B006 - read only
    checkpointer = Checkpointer(run_dir, keep=2)
    return checkpointer.save(iteration, write_state(mlp(hidden)), {"env_steps": 10 * iteration}, {"run": {}})


def replace_file(checkpoint: Path, name: str, data: bytes) -> None:
    """Put `data` in place of a checkpoint file, with a matching recorded size (a tampered checkpoint)."""
    (checkpoint / name).write_bytes(data)
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"][name] = len(data)
    (checkpoint / "state.json").write_text(json.dumps(state))


class Payload:
    """Unpickling this calls a function: what a malicious checkpoint file would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_driver.pt", "rng_actor_0.pt", "rng_rollout_0.pt"])
@pytest.mark.parametrize("form", ["torch.save", "raw pickle"])
def test_a_file_that_would_run_code_is_refused_and_named(tmp_path, name, form):
    checkpoint = save(tmp_path / "run", 1)
    marker = tmp_path / MARKER
    target = checkpoint / name
    if form == "torch.save":
        torch.save({"state": Payload(marker)}, tmp_path / "payload.pt")
        replace_file(checkpoint, name, (tmp_path / "payload.pt").read_bytes())
    else:
        replace_file(checkpoint, name, pickle.dumps({"state": Payload(marker)}))
    named = r".*\(posix.mkdir\)" if form == "torch.save" else ""  # the function it would have called
    with pytest.raises(CheckpointError, match=rf"{name}: refused to load{named}"):
        load_torch_file(target)
    with pytest.raises(CheckpointError, match=rf"{name}: refused to load"):
        verify_checkpoint(checkpoint, mlp([8]))
    if name == "rng_driver.pt":
        with pytest.raises(CheckpointError, match="refused to load"):
            restore_driver_rng(checkpoint)
    assert not marker.exists(), "the payload ran"


def test_every_file_of_a_checkpoint_loads_without_running_code(tmp_path):
    checkpoint = save(tmp_path / "run", 1)
    state = verify_checkpoint(checkpoint, mlp([8]))
    assert state["layout"] == LAYOUT_VERSION and state["files"]["optimizer.pt"] > 0
    for path in checkpoint.glob("*.pt"):
        load_torch_file(path)  # weights_only=True, numpy's RNG state included
    restore_driver_rng(checkpoint)


@pytest.mark.parametrize("name", ["optimizer.pt", "policy/model.safetensors", "rng_driver.pt"])
@pytest.mark.parametrize("layout", [1, 2])
def test_a_truncated_file_is_named(tmp_path, name, layout):
    checkpoint = save(tmp_path / "run", 1)
    if layout == 1:  # written before layout versions: no recorded sizes, the file's own structure tells
        state = json.loads((checkpoint / "state.json").read_text())
        del state["layout"], state["files"]
        (checkpoint / "state.json").write_text(json.dumps(state))
    path = checkpoint / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expected = "truncated" if layout == 2 or name.endswith(".safetensors") else "truncated or damaged"
    with pytest.raises(CheckpointError, match=rf"{name}.* {expected}"):
        verify_checkpoint(checkpoint, mlp([8]))


def test_layout_1_checkpoints_still_load(tmp_path):
    checkpoint = save(tmp_path / "run", 1)
    state = json.loads((checkpoint / "state.json").read_text())
    del state["layout"], state["files"]
    (checkpoint / "state.json").write_text(json.dumps(state))
    assert verify_checkpoint(checkpoint, mlp([8]))["iteration"] == 1


def test_missing_files_a_newer_layout_and_a_damaged_state_are_named(tmp_path):
    checkpoint = save(tmp_path / "run", 1)
    (checkpoint / "actor.json").unlink()
    with pytest.raises(CheckpointError, match="actor.json is missing"):
        verify_checkpoint(checkpoint)
    checkpoint = save(tmp_path / "run", 2)
    state = json.loads((checkpoint / "state.json").read_text())
    (checkpoint / "state.json").write_text(json.dumps(state | {"layout": LAYOUT_VERSION + 1}))
    with pytest.raises(CheckpointError, match=rf"state.json: checkpoint layout version {LAYOUT_VERSION + 1}"):
        verify_checkpoint(checkpoint)
    (checkpoint / "state.json").write_text('{"iteration": ')
    with pytest.raises(CheckpointError, match="state.json cannot be read"):
        verify_checkpoint(checkpoint)


def test_a_checkpoint_of_another_policy_is_named_with_the_mismatch(tmp_path):
    checkpoint = save(tmp_path / "run", 1, hidden=[8])
    with pytest.raises(
        CheckpointError, match=r"policy.* shape \(8, 5\) in the checkpoint, \(16, 5\) in the policy"
    ):
        verify_checkpoint(checkpoint, mlp([16]))
    cnn = PolicyConfig.from_dict({"name": "cnn"}, path="policy")
    with pytest.raises(CheckpointError, match="holds a 'mlp' policy but the config's policy is 'cnn'"):
        verify_checkpoint(checkpoint, cnn)
    # weights of this policy, optimizer state of another
    other = save(tmp_path / "other", 1, hidden=[8, 8])
    replace_file(checkpoint, "optimizer.pt", (other / "optimizer.pt").read_bytes())
    with pytest.raises(
        CheckpointError,
        match=r"optimizer.pt holds optimizer state of 4 parameter\(s\) the policy does not have \(e.g. "
        r"'action_mean.4.weight'\)",
    ):
        verify_checkpoint(checkpoint, mlp([8]))


# -- a full disk ----------------------------------------------------------------------------------------------------
def test_a_write_that_runs_out_of_space_names_the_folder_and_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    previous = save(run, 1)
    size = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file())

    def fill_the_disk(folder: Path) -> None:
        write_state(mlp([8]))(folder)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "optimizer.pt"))

    with pytest.raises(CheckpointWriteError) as caught:
        Checkpointer(run, keep=2).save(2, fill_the_disk, {"env_steps": 20}, {})
    message = str(caught.value)
    assert f"no room for checkpoint iter_000002 in {run / 'checkpoints'}" in message
    assert f"it needs about {size / 2**20:.1f} MiB (the size of iter_000001)" in message
    assert f"the previous checkpoint {previous} is intact" in message
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".iter")], (
        "the partial write stayed"
    )
    assert latest_checkpoint(run) == previous
    verify_checkpoint(previous, mlp([8]))


def test_a_worker_error_text_of_a_full_disk_is_recognised(tmp_path):
    """A worker's failure reaches the driver as text (its errno lost), e.g. torch's zip writer."""
    from embodied.worker import WorkerError

    def worker_fails(folder: Path) -> None:
        raise WorkerError(
            "actor worker rank 0 failed in save_checkpoint: RuntimeError: [enforce fail at "
            "inline_container.cc:664] . unexpected pos 64 vs 0 ... file write failed"
        )

    with pytest.raises(CheckpointWriteError, match="no room for checkpoint iter_000001.*more than the"):
        Checkpointer(tmp_path / "run", keep=2).save(1, worker_fails, {"env_steps": 10}, {})


def test_too_little_free_space_is_reported_before_anything_is_written(tmp_path, monkeypatch):
    run = tmp_path / "run"
    previous = save(run, 1)
    written = []
    monkeypatch.setattr(
        shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)
    )
    with pytest.raises(CheckpointWriteError, match=r"iter_000002 .* 0.0 MiB are free"):
        Checkpointer(run, keep=2).save(2, written.append, {"env_steps": 20}, {})
    assert written == [] and latest_checkpoint(run) == previous


def test_other_write_errors_pass_through_and_leave_nothing_half_written(tmp_path):
    run = tmp_path / "run"
    previous = save(run, 1)

    def broken(folder: Path) -> None:
        (folder / "optimizer.pt").write_bytes(b"partial")
        raise RuntimeError("the actor died")

    with pytest.raises(RuntimeError, match="the actor died"):
        Checkpointer(run, keep=2).save(2, broken, {"env_steps": 20}, {})
    assert latest_checkpoint(run) == previous
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["iter_000001", "latest"]
