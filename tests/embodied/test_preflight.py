"""What can be checked from the config and the disk fails before Ray or a simulator starts: exit code 2, one
line naming the key (or the checkpoint file) and what would work, no traceback, and Ray never imported."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from algorithms.schema import ConfigError
from embodied.compose import load_config
from embodied.preflight import check_before_start, check_output_dir, check_paths

# (arguments of `python -m embodied.train`, what the error line must say)
BAD_STARTS = [
    (
        ["policy=openvla_tiny", "policy.pretrained=/nonexistent"],
        "config error: policy.pretrained='/nonexistent': no such file or folder",
    ),
    (
        ["cluster.component_placement.actor=7"],
        "config error: cluster.component_placement.actor=7 asks for slot 7 but the cluster has",
    ),
    (
        ["cluster.component_placement.env=0-x"],
        "config error: cluster.component_placement.env='0-x' is not a slot set",
    ),
    (["env.num_envs=3"], "config error: env.num_envs=3 cannot be split into"),
    (
        ["cluster.num_slots=1", "rollout.pipeline_stages=3"],
        "config error: env.num_envs=16 cannot be split into 1 env",
    ),
    (
        ["run.output_dir=/proc/inflow_runs"],
        "config error: run.output_dir='/proc/inflow_runs': cannot write there",
    ),
    (
        ["resume=/nonexistent/run"],
        "checkpoint error: resume='/nonexistent/run': no complete checkpoint there",
    ),
]


def test_bad_starts_fail_in_seconds_without_ray_or_a_traceback(tmp_path):
    """All cases in one interpreter (start-up costs seconds): each returns 2 with its line, and at the end Ray
    was never imported, so no Ray process or worker started."""
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from embodied.train import main
        results = []
        for argv, _ in {BAD_STARTS!r}:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                rc = main(argv + ["run.output_dir={tmp_path}"] if "run.output_dir" not in str(argv) else argv)
            results.append((rc, err.getvalue()))
        print(json.dumps({{"results": results, "ray": "ray" in sys.modules}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, check=True
    )
    report = json.loads(out.stdout.strip().splitlines()[-1])
    for (argv, expected), (rc, err) in zip(BAD_STARTS, report["results"], strict=True):
        assert rc == 2 and expected in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not report["ray"], "Ray was imported before the config and the disk were checked"


def test_paths_resolve_as_the_policies_and_envs_do(tmp_path):
    config, _ = load_config("math_grpo")  # relative paths in the shipped config: from the repository root
    check_paths(config)
    bad, _ = load_config("math_grpo", [f"env.data_file={tmp_path / 'missing.jsonl'}"])
    with pytest.raises(ConfigError, match=r"env.data_file='.*missing.jsonl': no such file or folder"):
        check_paths(bad)
    builtin, _ = load_config("colour_targets_ppo_openvla_oft")  # policy.tokenizer=word: a name, not a path
    check_paths(builtin)
    missing, _ = load_config("colour_targets_ppo_openvla_oft", ["policy.tokenizer=./tok"])
    with pytest.raises(ConfigError, match=r"policy.tokenizer='./tok': no such file or folder"):
        check_paths(missing)


def test_the_output_folder_is_checked_without_being_created(tmp_path):
    target = tmp_path / "a" / "b"
    check_output_dir(target)
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="run.output_dir=.*cannot write there"):
        check_output_dir(tmp_path / "file" / "runs")


def test_joining_a_cluster_checks_the_slot_syntax_only():
    config, _ = load_config("maniskill_ppo_pushcube", ["cluster.address=10.0.0.1:6379"])
    check_before_start(config.replace(cluster=config.cluster.replace(component_placement={
        "env": "0-3", "rollout": "4", "actor": "5"})))  # fmt: skip
    with pytest.raises(ConfigError, match="is not a slot set"):
        check_before_start(config.replace(cluster=config.cluster.replace(component_placement={
            "env": "zero", "rollout": "4", "actor": "5"})))  # fmt: skip
