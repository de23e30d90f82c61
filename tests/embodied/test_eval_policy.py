"""scripts/eval_policy.sh (`embodied.eval_policy`): the report writer, per-task schedules, per-episode videos,
task passes and checkpoint look-up/checks (fast, in one process), and whole evaluations on real Ray with real
simulators (`sim`): a checkpoint written by a short ManiSkill training, and a fresh tiny policy on LIBERO."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from embodied.eval_checkpoint import CheckpointError, check_policy_matches, resolve_checkpoint
from embodied.eval_policy import interrupted_message, main, task_passes
from embodied.eval_report import CSV, JSON, MARKDOWN, PLOT, write_report
from embodied.evaluation import EvalEpisodes, task_schedules
from envs.base import EnvConfig, EnvSpec, make_env
from policies.base import PolicyConfig, make_policy
from tests.embodied.test_interrupt import plain_interrupt_after_sigterm

SPEC = EnvSpec(3, (-1.0,) * 3, (1.0,) * 3, 5, None, False, 20, None)


def episode(task: int, success: float, length: int, state: int) -> dict:
    return {
        "task_id": task,
        "task_description": f"do task {task}",
        "initial_state_id": state,
        "env": 0,
        "success_once": success,
        "success_at_end": success,
        "return": 2.0 * success,
        "episode_len": length,
    }


def check_png(path: Path) -> None:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


# -- the report ------------------------------------------------------------------------------------------------
def test_report_table_csv_json_and_plot_from_episodes(tmp_path):
    episodes = [episode(3, 1.0, 10, 0), episode(3, 0.0, 30, 1), episode(3, 1.0, 20, 2)]
    episodes += [episode(7, 0.0, 40, 0), episode(7, 1.0, 5, 1)]
    table, metrics = write_report(tmp_path, episodes, {"config": "test"})

    rows = [line for line in table.splitlines() if line.startswith("| ")][1:]  # after the header
    assert len(rows) == 3 and rows[-1].startswith("| **all** ")
    assert rows[0].split(" | ")[:4] == ["| 3", "do task 3", "3", "0.667"]
    assert rows[1].split(" | ")[:4] == ["| 7", "do task 7", "2", "0.500"]
    assert (tmp_path / MARKDOWN).read_text().endswith(table)

    with open(tmp_path / CSV) as f:
        written = list(csv.DictReader(f))
    assert [r["task_id"] for r in written] == ["3", "7", "all"]
    assert [int(r["episodes"]) for r in written] == [3, 2, 5]
    assert [int(r["length_min"]) for r in written] == [10, 5, 5]
    assert [int(r["length_max"]) for r in written] == [30, 40, 40]

    record = json.loads((tmp_path / JSON).read_text())
    assert record["overall"]["success"] == pytest.approx(3 / 5) == metrics["eval/success_once"]
    assert record["overall"]["length_mean"] == pytest.approx(21.0) == metrics["eval/episode_len"]
    assert [t["success"] for t in record["tasks"]] == pytest.approx([2 / 3, 1 / 2])
    assert metrics["eval/success_mean_over_tasks"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics["eval/task_007/success_once"] == pytest.approx(0.5)
    assert len(record["episodes"]) == 5 and record["meta"] == {"config": "test"}
    check_png(tmp_path / PLOT)


def test_report_refuses_an_evaluation_without_episodes(tmp_path):
    with pytest.raises(ValueError, match="no episodes"):
        write_report(tmp_path, [], {})


# -- schedules, episodes, videos -------------------------------------------------------------------------------
def test_task_schedules_run_every_initial_state_once_per_task():
    tasks = [0, 1, 0, 1, 0]  # task 0 on envs 0, 2, 4; task 1 on envs 1, 3
    schedules = task_schedules(tasks, [10, 11, 12, 13])
    assert schedules == [[10, 13], [10, 12], [11], [11, 13], [12]]
    for task in (0, 1):
        ids = sorted(i for env, s in enumerate(schedules) if tasks[env] == task for i in s)
        assert ids == [10, 11, 12, 13]


def colour_env(num_envs: int):
    config = {"name": "colour_targets", "num_envs": num_envs, "max_episode_steps": 6, "image_size": 32}
    return make_env(EnvConfig.from_dict(config, path="env"))


def test_per_env_schedules_of_different_lengths_record_first_episodes_only():
    env = colour_env(3)
    episodes = EvalEpisodes.per_env(env, [[5, 6, 7], [8], []])
    obs, chunks = episodes.start(), 0
    while obs is not None:
        obs, _ = episodes.step(torch.zeros(3, 2, env.spec.action_dim))
        chunks += 1
    assert sorted((e["env"], e["initial_state_id"]) for e in episodes.episodes) == [
        (0, 5),
        (0, 6),
        (0, 7),
        (1, 8),
    ]
    assert episodes.num_rounds == 3 and chunks == 9  # 3 rounds of 6 steps in chunks of 2
    env.close()


def test_episode_videos_have_one_frame_per_step_plus_the_reset_frame(tmp_path):
    import imageio.v2 as imageio

    from embodied.workers.eval_videos import EpisodeVideos

    env = colour_env(2)
    tracker = EvalEpisodes.per_env(env, [[1, 2], [3]])
    videos = EpisodeVideos(tracker, tmp_path, name=lambda row: f"env{row}_state{tracker.round_ids[row]}")
    obs = tracker.start()
    videos.start_round(obs)
    while obs is not None:
        tracked, round_before = tracker.tracked.copy(), tracker.round
        obs, infos = tracker.step(torch.full((2, 4, env.spec.action_dim), 0.3))  # chunks of 4: 6 = 4 + 2
        videos.add(infos, tracked)
        if obs is not None and tracker.round != round_before:
            videos.start_round(obs)
    videos.close()
    files = sorted(tmp_path.glob("*.mp4"))
    assert len(files) == 3 and all(f.name.endswith(("_success.mp4", "_fail.mp4")) for f in files)
    lengths = {e["initial_state_id"]: int(e["episode_len"]) for e in tracker.episodes}
    for f in files:
        state = int(f.name.split("_state")[1].split("_")[0])
        frames = imageio.mimread(f, memtest=False)
        assert len(frames) == lengths[state] + 1
        assert frames[0].shape[1] == 256  # scaled up, captioned (envs.video.annotate)
    env.close()


# -- task passes -------------------------------------------------------------------------------------------------
def libero_config(**overrides) -> EnvConfig:
    return EnvConfig.from_dict(
        {"name": "libero", "suite": "libero_goal", "num_envs": 10, **overrides}, path="env"
    )


def test_a_ctrl_c_that_ray_raised_as_python_own_keyboard_interrupt_still_names_the_report():
    """Ctrl-C reaches the driver either as the runtime's Interrupted or, where Ray's code held the SIGINT handler,
    as Python's own KeyboardInterrupt: both name SIGINT and the folder with the finished passes."""
    exc = KeyboardInterrupt()
    exc.out_dir, exc.episodes = Path("/runs/eval-1"), [{}] * 4
    message = interrupted_message(exc, ["eval_libero"])
    assert message.startswith(
        "interrupted by SIGINT; the report of the finished passes (4 episodes, marked incomplete) is in /runs/eval-1."
    )
    assert interrupted_message(KeyboardInterrupt(), ["eval_libero"]).startswith(
        "interrupted by SIGINT; nothing was written."
    )
    # a SIGTERM the handler saw before Ray's get re-raised it as a plain KeyboardInterrupt (embodied.interrupt)
    plain = plain_interrupt_after_sigterm()
    assert interrupted_message(plain, ["eval_libero"]).startswith("interrupted by SIGTERM; nothing")


def test_task_passes_hold_the_envs_of_their_tasks():
    passes = task_passes(libero_config(), tasks_per_pass=4, units=2)
    assert [p.selected_task_ids for p in passes] == [(0, 1, 2, 3), (4, 5, 6, 7), (8, 9)]
    assert [p.num_envs for p in passes] == [4, 4, 2]
    for p in passes:  # every env of a pass runs one of its tasks, every task has an env
        assert {p.task_of_env(i) for i in range(p.num_envs)} == set(p.selected_task_ids)
    rounded = task_passes(libero_config(num_envs=20), tasks_per_pass=3, units=4)
    assert [p.num_envs for p in rounded] == [8, 8, 8, 4]  # 2 envs per task, rounded up to 4 units
    (single,) = task_passes(libero_config(task_ids=[2, 5]), tasks_per_pass=None)
    assert single.selected_task_ids == (2, 5) and single.num_envs == 10


def test_libero_gripper_opening_convention_bounds_the_spec_and_converts_actions():
    from envs.libero.batch import libero_spec
    from envs.libero.convert import gripper_from_opening

    assert libero_spec(libero_config(gripper="opening")).action_low == (-1.0,) * 6 + (0.0,)
    assert libero_spec(libero_config()).action_low == (-1.0,) * 7
    opening = torch.tensor([[0.1] * 6 + [1.0], [0.1] * 6 + [0.2]])
    assert gripper_from_opening(opening)[:, 6].tolist() == [-1.0, 1.0]  # open -> -1, mostly closed -> +1


# -- checkpoints -------------------------------------------------------------------------------------------------
def mlp_config(hidden: list[int]) -> PolicyConfig:
    return PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": hidden}, path="policy")


def save_checkpoint(run_dir: Path, iteration: int, hidden: list[int]) -> Path:
    """A training checkpoint as the runner writes it: the policy folder, then the atomic commit."""
    from embodied.checkpoint import Checkpointer

    checkpointer = Checkpointer(run_dir, keep=3)
    folder = checkpointer.begin(iteration)
    make_policy(mlp_config(hidden), SPEC).save_pretrained(folder / "policy")
    return checkpointer.commit(folder, iteration, {"env_steps": 100 * iteration}, {"run": {"name": "x"}})


def test_checkpoint_lookup_of_every_form(tmp_path):
    run = tmp_path / "runs" / "x" / "20250101-000000"
    save_checkpoint(run, 1, [8])
    newest = save_checkpoint(run, 2, [8])
    for form in (run, run / "checkpoints", newest, newest / "policy"):
        source = resolve_checkpoint(str(form), None)
        assert source.checkpoint == newest and source.policy_dir == newest / "policy"
        assert source.env_steps == 200 and source.config_file == newest / "config.yaml"
    latest = resolve_checkpoint("latest", tmp_path / "runs" / "x")
    assert latest.checkpoint == newest
    make_policy(mlp_config([8]), SPEC).save_pretrained(tmp_path / "exported")
    exported = resolve_checkpoint(str(tmp_path / "exported"), None)
    assert exported.policy_dir == tmp_path / "exported" and exported.checkpoint is None
    fresh = resolve_checkpoint("none", None)
    assert fresh.policy_dir is None and fresh.env_steps == 0


def test_checkpoint_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(str(tmp_path / "missing"), None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no policy weights .* and no complete checkpoint"):
        resolve_checkpoint(str(tmp_path / "empty"), None)
    with pytest.raises(CheckpointError, match="no complete checkpoint in the runs"):
        resolve_checkpoint("latest", tmp_path / "runs" / "nothing")


def test_mismatched_policy_config_is_refused_before_anything_starts(tmp_path):
    make_policy(mlp_config([8, 8]), SPEC).save_pretrained(tmp_path)
    spec, differing = check_policy_matches(tmp_path, mlp_config([8, 8]))
    assert spec == SPEC and differing == []
    with pytest.raises(
        CheckpointError, match=r"shape \(8, 5\) in the checkpoint, \(16, 5\) in the policy"
    ) as err:
        check_policy_matches(tmp_path, mlp_config([16, 8]))
    assert "policy.hidden_sizes: [8, 8] -> [16, 8]" in str(err.value)
    with pytest.raises(CheckpointError, match="holds a 'mlp' policy but the config's policy is 'cnn'"):
        check_policy_matches(tmp_path, PolicyConfig.from_dict({"name": "cnn"}, path="policy"))


def test_command_line_fails_fast_on_a_bad_checkpoint(tmp_path, capsys):
    import ray

    assert main(["maniskill_ppo_pushcube", f"ckpt={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["maniskill_ppo_pushcube"]) == 2
    assert "give ckpt=PATH" in capsys.readouterr().err
    make_policy(mlp_config([8]), SPEC).save_pretrained(tmp_path / "small")
    assert main(["maniskill_ppo_pushcube", f"ckpt={tmp_path / 'small'}"]) == 2  # configs' mlp: 256 x 3
    assert "do not fit the policy config" in capsys.readouterr().err
    assert not ray.is_initialized()  # refused before any worker (or Ray) started


# -- whole evaluations on real simulators ---------------------------------------------------------------------
def the_eval_folder(root: Path) -> Path:
    (folder,) = root.glob("*/eval-*")
    return folder


def check_evaluation(folder: Path, tasks: int, episodes_per_task: int) -> dict:
    """The report's table, JSON, videos and plot agree with each other and with what was asked for."""
    import imageio.v2 as imageio

    record = json.loads((folder / JSON).read_text())
    episodes = record["episodes"]
    assert len(record["tasks"]) == tasks and len(episodes) == tasks * episodes_per_task
    assert all(t["episodes"] == episodes_per_task for t in record["tasks"])
    for t in record["tasks"]:
        assert 0.0 <= t["success"] <= 1.0
        mine = [e for e in episodes if e["task_id"] == t["task_id"]]
        assert t["success"] == pytest.approx(np.mean([e["success_once"] for e in mine]))
        assert sorted(e["initial_state_id"] for e in mine) == sorted({e["initial_state_id"] for e in mine})
    rows = [line for line in (folder / MARKDOWN).read_text().splitlines() if line.startswith("| ")][1:]
    assert len(rows) == tasks + 1 and f"| {record['overall']['success']:.3f} |" in rows[-1]
    assert f"| {len(episodes)} |" in rows[-1]
    assert len({e["video"] for e in episodes}) == len(episodes)
    for e in episodes:  # one video per episode: the reset frame + one frame per env step
        frames = imageio.mimread(folder / e["video"], memtest=False)
        assert len(frames) == int(e["episode_len"]) + 1
        assert e["video"].endswith("_success.mp4" if e["success_once"] else "_fail.mp4")
    check_png(folder / PLOT)
    scalars = tensorboard_scalars(folder / "tensorboard")
    assert scalars["eval/success_once"] == pytest.approx(record["overall"]["success"])
    assert scalars["eval/num_episodes"] == len(episodes)
    return record


def tensorboard_scalars(folder: Path) -> dict[str, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}


@pytest.mark.sim
def test_evaluate_a_checkpoint_written_by_a_short_maniskill_training(tmp_path):
    from embodied.compose import load_config
    from embodied.train import train

    training = [
        f"run.output_dir={tmp_path}",
        "run.total_env_steps=8",
        "env.num_envs=2",
        "env.max_episode_steps=4",
        "rollout.num_steps=4",
        "actor.num_minibatches=1",
        "actor.update_epochs=1",
        "eval.at_end=false",
        "policy.channels=[8,8,8]",
        "policy.feature_dim=16",
        "policy.head_hidden=16",
        "logger.wandb.mode=disabled",
        "cluster.startup_timeout_s=900",  # creating rgb ManiSkill envs on a busy 2-core machine takes minutes
    ]
    config, tree = load_config("maniskill_ppo_pushcube_rgb", training)
    train(config, tree)
    (run_dir,) = (tmp_path / "maniskill_ppo_pushcube_rgb").iterdir()
    # no CONFIG: the run's own config.yaml; W&B offline files go into the eval folder
    overrides = ["eval.num_episodes=3", "logger.wandb.mode=offline", "logger.console=plain"]
    assert main([f"ckpt={run_dir}", *overrides]) == 0
    folder = the_eval_folder(tmp_path)
    record = check_evaluation(folder, tasks=1, episodes_per_task=3)
    assert sorted(e["initial_state_id"] for e in record["episodes"]) == [1_000_000, 1_000_001, 1_000_002]
    assert all(e["episode_len"] <= 4 for e in record["episodes"])
    assert record["meta"]["checkpoint"].endswith("iter_000001")
    (wandb_log,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    assert b"eval/success_once" in wandb_log.read_bytes()


@pytest.mark.sim
def test_evaluate_a_fresh_tiny_policy_on_two_libero_tasks_in_two_passes(tmp_path, capsys):
    args = [
        "eval_libero",
        "ckpt=none",
        f"run.output_dir={tmp_path}",
        "env.task_ids=[4,7]",
        "env.num_envs=2",
        "eval.tasks_per_pass=1",  # one task per pass, each on fresh workers with 2 envs (one per env worker)
        "env.image_size=32",
        "env.max_episode_steps=3",
        "eval.num_episodes=2",
        "policy.num_action_chunks=2",  # episodes of 3 steps: a chunk of 2, then 1 step of the next
        "env.gripper=opening",  # the policy's gripper in [0, 1] (as OpenVLA's), converted by the env
        "logger.wandb.mode=disabled",
        "logger.console=plain",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pass 1/2: tasks [4]" in out and "pass 2/2: tasks [7]" in out
    record = check_evaluation(the_eval_folder(tmp_path), tasks=2, episodes_per_task=2)
    assert [t["task_id"] for t in record["tasks"]] == [4, 7]
    assert record["tasks"][0]["instruction"] != record["tasks"][1]["instruction"]
    for task in (4, 7):
        states = sorted(e["initial_state_id"] for e in record["episodes"] if e["task_id"] == task)
        assert states == [0, 1]
    assert all(e["episode_len"] == 3 for e in record["episodes"])  # a random tiny policy does not succeed
