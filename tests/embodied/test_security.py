"""What a run exposes: an in-process Ray listens on 127.0.0.1 only (unless cluster.listen=network), the actor
ranks meet through a file instead of a TCP store on every interface, and the W&B API key appears in no file a
run writes (W&B's own files, TensorBoard, checkpoints, config dumps) and in nothing it prints."""

from __future__ import annotations

import ipaddress
import multiprocessing
import os
import secrets
import shutil
import tempfile
from pathlib import Path

import psutil
import pytest

from algorithms.schema import ConfigError
from embodied.checkpoint import Checkpointer
from embodied.compose import describe, load_config
from embodied.config import ClusterConfig, LoggerConfig


def listening_addresses(root: psutil.Process) -> dict[str, str]:
    """{ip:port: process name} of the TCP sockets `root`'s descendants listen on."""
    pids = {p.pid: p.name() for p in root.children(recursive=True)}
    return {
        f"{c.laddr.ip}:{c.laddr.port}": pids[c.pid]
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.pid in pids
    }


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # [::ffff:127.0.0.1]
    return (mapped or address).is_loopback


def test_an_in_process_ray_listens_on_localhost_only():
    import ray

    from embodied.cluster import Cluster
    from embodied.worker import Worker

    if ray.is_initialized():
        pytest.skip("Ray was started by an earlier test in this process")
    short = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay under 108 bytes
    config = ClusterConfig(temp_dir=short, startup_timeout_s=300)
    with Cluster(config, components=("env",)) as cluster:
        group = cluster.spawn("env", Worker)
        cluster.ready([group])
        addresses = listening_addresses(psutil.Process())
        assert ray.util.get_node_ip_address() == "127.0.0.1"
    assert addresses, "no listening socket found: the check looked at the wrong processes"
    exposed = {a: name for a, name in addresses.items() if not is_loopback(a.rsplit(":", 1)[0])}
    assert not exposed, f"listening beyond localhost: {exposed}"
    assert os.environ.get("INFLOW_RENDEZVOUS_DIR") is None  # set only for the processes Ray started
    shutil.rmtree(short, ignore_errors=True)


def _rank(rank: int, rendezvous: str, port: int, results) -> None:
    import torch
    import torch.distributed as dist

    from embodied import fsdp

    os.environ[fsdp.RENDEZVOUS_ENV] = rendezvous
    fsdp.init_process_group("127.0.0.1", port, rank, 2, "cpu")
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    own = {
        c.laddr.port for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN
    }
    results.put((rank, float(total), port in own))
    dist.destroy_process_group()


def test_actor_ranks_on_one_machine_meet_through_a_file_not_a_tcp_store(tmp_path):
    from embodied.fsdp import free_port

    port = free_port()
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    ranks = [context.Process(target=_rank, args=(r, str(tmp_path), port, results)) for r in range(2)]
    for p in ranks:
        p.start()
    out = sorted(results.get(timeout=120) for _ in ranks)
    for p in ranks:
        p.join(timeout=60)
    assert [(rank, total) for rank, total, _ in out] == [(0, 3.0), (1, 3.0)]
    assert not any(listens for _, _, listens in out), "rank 0 listened on MASTER_PORT (a TCP store)"
    assert (tmp_path / f"{port}-2").exists() or not list(tmp_path.iterdir())  # the store file (or cleaned up)


def test_the_listen_setting_is_validated():
    with pytest.raises(ConfigError, match="cluster.listen='public' is not allowed.*'localhost', 'network'"):
        load_config("maniskill_ppo_pushcube", ["cluster.listen=public"])


def test_the_wandb_api_key_is_in_no_file_and_no_output(tmp_path, monkeypatch, capsys):
    """W&B offline (the key set, as a user with an account has it), TensorBoard, a checkpoint and the config
    dumps of a run: none holds the key."""
    from embodied.logger import MetricLogger

    key = "inflow" + secrets.token_hex(18)  # 40 characters, like a real key
    monkeypatch.setenv("WANDB_API_KEY", key)
    config, tree = load_config("maniskill_ppo_pushcube", ["logger.wandb.mode=offline"])
    run_dir = tmp_path / "run"
    logger = MetricLogger(run_dir, LoggerConfig.from_dict({"wandb": {"mode": "offline"}}), tree, "t")
    logger.log({"env/return": 1.0}, step=1)
    logger.close()
    Checkpointer(run_dir, keep=1).save(1, lambda folder: None, {"env_steps": 1}, tree)
    (run_dir / "describe.txt").write_text("\n".join(describe(config)))
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".wandb" for p in files), "W&B wrote no offline run"
    holding = [str(p) for p in files if key.encode() in p.read_bytes()]
    assert not holding, f"the W&B API key is in {holding}"
    captured = capsys.readouterr()
    assert key not in captured.out + captured.err
    assert key not in Path(run_dir / "checkpoints" / "iter_000001" / "state.json").read_text()
