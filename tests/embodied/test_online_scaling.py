"""Online scaling's data-parallel update (two processes over a gloo group give the one-process update), its
on-policy version check, and the placements it refuses; no Ray."""

from __future__ import annotations

import multiprocessing as mp
import socket
import tempfile
from types import SimpleNamespace

import pytest
import torch
from test_trajectory_training import SPEC, random_batch

from algorithms.config import AlgorithmConfig
from algorithms.schema import ConfigError
from embodied.config import ActorConfig
from embodied.scaling import DataParallelCollectives, OnlineScaling
from embodied.training import Collectives, build_optimizer, ppo_update
from policies.base import PolicyConfig, make_policy

ACTOR = ActorConfig(update_epochs=2, num_minibatches=2, target_kl=None, max_grad_norm=0.5)
ALGORITHM = AlgorithmConfig(logprob_granularity="action")
VERSION = 3


def batch():
    b = random_batch(n=24, seed=1)
    b.version = VERSION
    return b


def policy():
    torch.manual_seed(0)
    return make_policy(PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": [16, 16]}), SPEC)


def member(rank: int, port: int, results) -> None:
    """One member of a 2-member update: member 0 steps the optimizer, member 1 only computes its share."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    store = dist.TCPStore("127.0.0.1", port, 2, rank == 0)
    group = dist.ProcessGroupGloo(dist.PrefixStore("test", store), rank, 2)
    comm = DataParallelCollectives(Collectives(), group, rank, 2)
    comm.begin(VERSION)
    model = policy()
    if rank == 0:  # the actor: a one-rank FSDP2 module (DTensor parameters and gradients), as the runtime's
        # actor is on a GPU or in bf16 (`embodied.fsdp.shard` keeps a one-CPU-rank fp32 actor plain)
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        own = dist.FileStore(f"{tempfile.gettempdir()}/test_online_scaling_{port}", 1)
        dist.init_process_group("gloo", store=own, rank=0, world_size=1)
        fully_shard(model)
        register_fsdp_forward_method(model, "evaluate")
    metrics = ppo_update(
        model,
        build_optimizer(model, ACTOR),
        batch(),
        ACTOR,
        ALGORITHM,
        torch.Generator().manual_seed(5),
        comm,
    )
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    state = {
        k: v.detach().numpy().copy() for k, v in full.items()
    }  # no shared-memory handle outlives the child
    results.put((rank, state, metrics, comm.log))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_members_give_the_one_process_update():
    alone = policy()
    expected = ppo_update(
        alone, build_optimizer(alone, ACTOR), batch(), ACTOR, ALGORITHM, torch.Generator().manual_seed(5)
    )
    context = mp.get_context("spawn")
    results = context.Queue()
    port = free_port()
    processes = [context.Process(target=member, args=(r, port, results)) for r in range(2)]
    for p in processes:
        p.start()
    out = dict(
        (r, (state, metrics, log)) for r, state, metrics, log in (results.get(timeout=120) for _ in processes)
    )
    for p in processes:
        p.join(timeout=30)
    for rank in (0, 1):  # member 1 holds the actor's weights after every step (broadcast)
        state, metrics, log = out[rank]
        for name, tensor in alone.state_dict().items():
            torch.testing.assert_close(torch.from_numpy(state[name]), tensor, rtol=1e-5, atol=1e-6)
        for key in (
            "train/actor/pg_loss",
            "train/critic/value_loss",
            "train/actor/approx_kl",
            "train/actor/grad_norm",
        ):
            assert metrics[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-7)
        # one micro-batch per member per mini-batch (the mini-batch of 12 is split in two): 2 epochs x 2
        assert len(log) == 4 and all(r["data_version"] == r["weights_version"] == VERSION for r in log)
        assert sum(r["samples"] for r in log) == 24  # half of 2 epochs x 24 samples


def test_a_micro_batch_from_other_weights_is_refused():
    comm = DataParallelCollectives(Collectives(), None, 0, 1)
    comm.begin(VERSION + 1)
    with pytest.raises(RuntimeError, match=r"holds weights v4 but its micro-batch was collected with v3"):
        comm.share([batch()])


def scaling_of(env, rollout, actor, num_slots=2, mechanism="ranks"):
    placement = SimpleNamespace(
        slots={"env": env, "rollout": rollout, "actor": actor},
        num_slots=num_slots,
        describe=lambda: f"env {env}, rollout {rollout}, actor {actor}",
    )
    workers = SimpleNamespace(cluster=SimpleNamespace(placement=placement), actor=[object()] * len(actor))
    return OnlineScaling(workers, mechanism)


def test_a_placement_with_nothing_to_free_is_refused():
    with pytest.raises(ConfigError, match="the actor already holds every slot"):
        scaling_of((0, 1), (0, 1), (0, 1))
    with pytest.raises(ConfigError, match="needs one actor rank"):
        scaling_of((0, 1, 2), (0, 1, 2), (0, 1), num_slots=3)
    threads = scaling_of((0, 1), (0, 1), (0,), mechanism="threads")
    assert threads.free_slots == (1,) and threads.helpers == [1]
