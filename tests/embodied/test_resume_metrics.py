"""A resumed run's metrics: what the stopped run logged after the checkpoint is dropped from TensorBoard and
metrics.csv, so every step appears once, with the resumed run's values."""

from __future__ import annotations

import csv

from embodied.config import LoggerConfig
from embodied.logger import CSV_FILE, MetricLogger

OFF = LoggerConfig.from_dict({"wandb": {"mode": "disabled"}})


def log_steps(run_dir, steps, value, resume_step=None, cut_last_row=False):
    logger = MetricLogger(run_dir, OFF, {"run": {"name": "t"}}, "t", resume_step=resume_step)
    for step in steps:
        logger.log({"progress/iteration": step / 10, "env/return": value}, step=step)
    logger.close()
    if cut_last_row:  # a kill in the middle of a write
        path = run_dir / CSV_FILE
        path.write_bytes(path.read_bytes()[:-7])


def tensorboard_scalars(run_dir, key):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(key)]


def csv_rows(run_dir, key):
    with open(run_dir / CSV_FILE, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "key", "value"]
    return [(int(s), float(v)) for s, k, v in rows[1:] if k == key]


def test_a_resumed_run_replaces_what_was_logged_after_its_checkpoint(tmp_path):
    log_steps(tmp_path, [10, 20, 30, 40], value=1.0, cut_last_row=True)  # killed after step 40
    log_steps(tmp_path, [30, 40, 50], value=2.0, resume_step=20)  # resumed from the checkpoint at step 20
    expected = [(10, 1.0), (20, 1.0), (30, 2.0), (40, 2.0), (50, 2.0)]
    assert csv_rows(tmp_path, "env/return") == expected
    assert tensorboard_scalars(tmp_path, "env/return") == expected
    iterations = [v for _, v in csv_rows(tmp_path, "progress/iteration")]
    assert iterations == [1, 2, 3, 4, 5]  # no iteration twice, none missing


def test_a_resume_within_the_same_second_is_read_after_the_stopped_run(tmp_path, monkeypatch):
    """TensorBoard reads event files in name order (second, host, pid, then a per-process writer counter
    compared as text): with the counter at 9 and 10 in the same second, the resumed run's file sorted first
    and its purge came before the stopped run's steps (seen in CI, where earlier tests had made writers)."""
    from tensorboard.summary.writer import event_file_writer

    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    log_steps(tmp_path, [10, 20, 30, 40], value=1.0)
    log_steps(tmp_path, [30, 40, 50], value=2.0, resume_step=20)
    expected = [(10, 1.0), (20, 1.0), (30, 2.0), (40, 2.0), (50, 2.0)]
    assert tensorboard_scalars(tmp_path, "env/return") == expected


def test_a_resumed_run_sends_wandb_the_steps_a_killed_driver_lost(tmp_path):
    """W&B's client and service buffer rows: a driver killed with SIGKILL loses the last ones. The resumed run
    sends the steps up to its checkpoint again from metrics.csv; W&B keeps the first value per step."""
    import shutil

    import wandb
    from drills import wandb_after_sync, wandb_segments

    offline = LoggerConfig.from_dict({"wandb": {"mode": "offline"}})
    logger = MetricLogger(tmp_path, offline, {"run": {"name": "t"}}, "t")
    for i in (1, 2, 3, 4):
        logger.log({"progress/iteration": i}, step=10 * i)
    logger.close()
    for segment in tmp_path.glob("wandb/offline-run-*"):  # as if the kill lost every W&B row
        shutil.rmtree(segment)
    logger = MetricLogger(tmp_path, offline, {"run": {"name": "t"}}, "t", resume_step=30)
    for i in (4, 5):
        logger.log({"progress/iteration": i}, step=10 * i)
    logger.close()
    # finish() returns once the service has the exit record; its file writer may still hold the last rows
    # (CI once read an empty segment here). teardown() waits for the service to stop, files closed.
    wandb.teardown()
    assert wandb_after_sync(wandb_segments(tmp_path)) == [1, 2, 3, 4, 5]
