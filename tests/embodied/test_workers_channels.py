"""Worker groups and channels on a real Ray: fan-out, chosen ranks, failures with rank and traceback, dead
workers, fail-fast waits, timings; keyed FIFO channels with out-of-order delivery, any-key reads, timeouts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from embodied.channel import Channel, ChannelTimeout, payload_bytes
from embodied.worker import Worker, WorkerError, WorkerGroup, WorkerInfo, wait_all

pytestmark = pytest.mark.usefixtures("ray_cluster")


class Echo(Worker):
    """A worker with methods that succeed, fail, die, block, and use channels."""

    def times_rank(self, x: int) -> int:
        return x * self.info.rank

    def boom(self) -> None:
        raise ValueError(f"rank {self.info.rank} refuses")

    def die(self) -> None:
        os._exit(3)

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def send(self, channel: Channel, items: list, key, rank: int) -> None:
        for item in items:
            channel.put(item, key=key, rank=rank)

    def send_counting_socket_frames(self, channel: Channel, items: list, key, rank: int) -> int:
        """Send `items`; how many of them went over the same-machine socket instead of Ray."""
        from embodied import channel as channels

        sent, send = [], channels._SENDERS.send
        channels._SENDERS.send = lambda *args: sent.append(send(*args)) or sent[-1]
        try:
            self.send(channel, items, key, rank)
        finally:
            channels._SENDERS.send = send
        return sum(sent)

    def receive(self, channel: Channel, key, count: int) -> list:
        return [channel.get(key) for _ in range(count)]

    def receive_any(self, channel: Channel, keys: list, count: int) -> list:
        return [channel.get_any(keys) for _ in range(count)]


def make_group(ray, size: int, name: str = "echo") -> WorkerGroup:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    remote = ray.remote(Echo)
    infos = [WorkerInfo(name, r, size, r, None, "cpu", 1) for r in range(size)]
    handles = [remote.options(num_cpus=0.01, max_concurrency=8).remote(info) for info in infos]
    return WorkerGroup(name, handles, infos)


@pytest.fixture(scope="module")
def group(ray_cluster):
    g = make_group(ray_cluster, 2)
    yield g
    g.kill()


def test_fan_out_to_all_or_chosen_ranks(group):
    assert group.times_rank(5).wait() == [0, 5]
    assert group.call("times_rank", 3, ranks=[1]).wait() == [3]


def test_a_failure_names_group_rank_method_and_traceback(group):
    with pytest.raises(WorkerError) as info:
        group.call("boom", ranks=[1]).wait()
    text = str(info.value)
    assert "echo worker rank 1" in text and "failed in boom" in text and "ValueError: rank 1 refuses" in text
    assert "Worker traceback" in text and "in boom" in text


def test_fail_fast_while_a_peer_blocks(group):
    start = time.monotonic()
    with pytest.raises(WorkerError, match="rank 0 .*failed in boom"):
        wait_all(group.call("sleep", 20.0, ranks=[1]), group.call("boom", ranks=[0]))
    assert time.monotonic() - start < 15


def test_timings_are_recorded(group):
    call = group.sleep(0.3)
    call.wait()
    assert min(call.seconds) >= 0.3 and group.timings["sleep"] >= 0.3


def test_a_dead_worker_is_reported_not_waited_for(ray_cluster):
    doomed = make_group(ray_cluster, 1, name="env")
    with pytest.raises(WorkerError, match="env worker rank 0 died while running die"):
        doomed.die().wait()
    doomed.kill()


def test_channel_keeps_fifo_order_per_key(ray_cluster, group):
    channel = Channel("numbers", group.handles, timeout=30)
    items = list(range(50))
    consumer = group.call("receive", channel, "a", 50, ranks=[1])
    group.call("send", channel, items, "a", 1, ranks=[0]).wait()
    assert consumer.wait() == [items]


def test_mailbox_reorders_out_of_order_deliveries(ray_cluster, group):
    channel = Channel("shuffled", group.handles, timeout=30)
    handle = group.handles[0]
    ray_cluster.get([handle.deliver.remote("shuffled", "k", seq, f"item{seq}") for seq in (2, 0, 3, 1)])
    assert group.call("receive", channel, "k", 4, ranks=[0]).wait() == [["item0", "item1", "item2", "item3"]]


def test_get_any_returns_the_key_that_has_an_item(ray_cluster, group):
    channel = Channel("stages", group.handles, timeout=30)
    reader = group.call("receive_any", channel, [0, 1], 1, ranks=[1])
    group.call("send", channel, ["late stage"], 1, 1, ranks=[0]).wait()
    assert reader.wait() == [[(1, "late stage")]]


def test_large_items_travel_by_reference_and_arrive_intact(ray_cluster, group):
    channel = Channel("big", group.handles, timeout=30)
    big = {"images": torch.arange(300_000, dtype=torch.float32)}
    assert payload_bytes(big) > 64 * 1024
    reader = group.call("receive", channel, "x", 1, ranks=[1])
    group.call("send", channel, [big], "x", 1, ranks=[0]).wait()
    torch.testing.assert_close(reader.wait()[0][0]["images"], big["images"])


def test_connected_channels_carry_items_over_a_socket_between_workers_on_one_machine(ray_cluster, group):
    channel = Channel.connect("local", group.handles, timeout=30)
    here = ray_cluster.get_runtime_context().get_node_id()
    assert [address[0] for address in channel.addresses] == [here, here]
    items = [{"obs": torch.full((4, 3), float(i)), "done": torch.tensor([i % 2 == 0])} for i in range(20)]
    items.append({"images": torch.arange(300_000, dtype=torch.uint8)})  # larger than Ray's inline size
    reader = group.call("receive", channel, "env0", len(items), ranks=[1])
    assert group.call("send_counting_socket_frames", channel, items, "env0", 1, ranks=[0]).wait() == [
        len(items)
    ]
    for got, sent in zip(reader.wait()[0], items):
        assert got.keys() == sent.keys()
        for key in sent:
            torch.testing.assert_close(got[key], sent[key])


def test_an_unreachable_socket_falls_back_to_ray_in_order(ray_cluster, group):
    here = ray_cluster.get_runtime_context().get_node_id()
    channel = Channel("fallback", group.handles, 30, addresses=[(here, "inflow-mailbox-gone")] * 2)
    reader = group.call("receive", channel, "k", 5, ranks=[1])
    assert group.call("send_counting_socket_frames", channel, list(range(5)), "k", 1, ranks=[0]).wait() == [0]
    assert reader.wait() == [list(range(5))]


def test_a_silent_peer_times_out_with_a_clear_error(ray_cluster, group):
    channel = Channel("silent", group.handles, timeout=0.5)
    with pytest.raises(WorkerError, match=r"no item on channel 'silent' for keys \['nothing'\]"):
        group.call("receive", channel, "nothing", 1, ranks=[0]).wait()
    assert issubclass(ChannelTimeout, RuntimeError)


def test_a_worker_told_to_exit_inside_a_finalizer_exits_quietly():
    """Ray stops a worker with SIGTERM, raised as SystemExit; inside a finalizer Python would print a traceback
    into the run's output and carry on (seen in the kill drill when a run tore down after a worker died)."""
    script = (
        "import embodied.worker as w\n"
        "w.Worker(w.WorkerInfo('g', 0, 1, 0, None, 'cpu', 1, niceness=19))\n"
        "class Finalized:\n"
        "    def __del__(self):\n"
        "        raise SystemExit(143)\n"
        "Finalized()\n"
        "print('carried on')\n"
    )
    repo = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, timeout=120
    )
    assert done.returncode == 143, done.stderr
    assert "Traceback" not in done.stderr and "carried on" not in done.stdout
