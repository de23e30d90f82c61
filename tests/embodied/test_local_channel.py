"""The same-machine path of channels without Ray: the wire format (CPU tensors as numpy arrays, the rest as
torch pickles it), a listener and its senders; and the one-CPU-rank actor that `embodied.fsdp.shard` keeps
plain."""

from __future__ import annotations

import dataclasses
import queue
import tempfile
import uuid

import pytest
import torch

from embodied import local_channel

pytestmark = pytest.mark.skipif(not local_channel.supported(), reason="abstract Unix sockets are Linux only")


@dataclasses.dataclass
class Step:
    obs: torch.Tensor
    info: dict


def test_wire_format_round_trips_tensors_of_every_kind_and_plain_objects():
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    item = {
        "f32": base,
        "i64": torch.tensor([1, -2, 3]),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "strided": base.t(),  # not contiguous
        "bf16": base.to(torch.bfloat16),  # no numpy dtype: torch pickles it
        "grad": torch.ones(2, requires_grad=True),  # numpy cannot carry requires_grad
        "step": Step(base[1], {"name": "PushCube-v1", "n": 3, "none": None}),
    }
    back = local_channel.decode(local_channel.encode(item))
    for key in ("f32", "i64", "bool", "scalar", "strided", "bf16", "grad"):
        assert back[key].dtype == item[key].dtype and back[key].shape == item[key].shape, key
        torch.testing.assert_close(back[key], item[key])
    assert back["grad"].requires_grad and not back["f32"].requires_grad
    assert isinstance(back["step"], Step) and torch.equal(back["step"].obs, base[1])
    assert back["step"].info == {"name": "PushCube-v1", "n": 3, "none": None}
    back["f32"] += 1  # received tensors are writable, not views of the message
    torch.testing.assert_close(back["f32"], base + 1)


def test_cpu_tensors_of_numpy_dtypes_skip_torch_pickling():
    assert b"_rebuild_tensor" not in local_channel.encode(
        {"x": torch.zeros(3), "y": torch.zeros(2, dtype=torch.uint8)}
    )
    assert b"_rebuild_tensor" in local_channel.encode(torch.zeros(3, dtype=torch.bfloat16))


def test_a_listener_receives_each_senders_frames_in_order():
    frames: queue.Queue = queue.Queue()
    listener = local_channel.Listener(
        lambda channel, key, seq, payload: frames.put((channel, key, seq, payload))
    )
    senders = local_channel.Senders()
    payloads = [bytes([i]) * (1 + 50_000 * i) for i in range(5)]  # the larger ones span many socket reads
    for seq, payload in enumerate(payloads):
        assert senders.send(listener.name, "observations", ("env", 1), seq, payload)
    got = [frames.get(timeout=10) for _ in payloads]
    assert got == [("observations", ("env", 1), seq, p) for seq, p in enumerate(payloads)]


def test_a_listener_drops_connections_from_another_user(monkeypatch):
    frames: queue.Queue = queue.Queue()
    listener = local_channel.Listener(lambda *frame: frames.put(frame))
    me = local_channel.os.getuid()
    # the listener now belongs to another user
    monkeypatch.setattr(local_channel.os, "getuid", lambda: me + 1)
    local_channel.Senders().send(listener.name, "c", "k", 0, b"not for you")
    with pytest.raises(queue.Empty):
        frames.get(timeout=1.0)


def test_sending_to_a_listener_that_does_not_exist_reports_false():
    assert not local_channel.Senders().send(f"inflow-nobody-{uuid.uuid4().hex}", "c", "k", 0, b"x")


def test_one_cpu_rank_in_fp32_trains_unsharded_and_its_checkpoint_loads_into_a_sharded_actor():
    import torch.distributed as dist
    from test_trajectory_training import SPEC

    from embodied import fsdp
    from policies.base import PolicyConfig, make_policy

    def policy(seed: int):
        torch.manual_seed(seed)
        return make_policy(PolicyConfig.from_dict({"name": "mlp", "hidden_sizes": [16, 16]}), SPEC)

    store = dist.FileStore(f"{tempfile.gettempdir()}/test_local_channel_{uuid.uuid4().hex}", 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        plain = fsdp.shard(policy(0), "cpu", "fp32", True)
        assert not any(hasattr(p, "full_tensor") for p in plain.parameters())
        sharded = fsdp.shard(policy(1), "cpu", "bf16", True)  # bf16 keeps FSDP2's mixed precision
        assert all(hasattr(p, "full_tensor") for p in sharded.parameters())
        saved = fsdp.full_state_dict(plain)
        assert saved.keys() == fsdp.full_state_dict(sharded).keys()
        fsdp.load_full_state_dict(sharded, dict(saved))  # it puts its shards into the dict it is given
        for key, value in fsdp.full_state_dict(sharded).items():
            torch.testing.assert_close(value, saved[key])
    finally:
        dist.destroy_process_group()
