"""Channels: asynchronous FIFOs between worker groups, with keyed sub-queues.

A `Channel` is a name plus the handles of its consumer workers. `put(item, key, rank)` in a producer sends
the item straight into consumer `rank`'s `Mailbox` (a Ray actor call that returns at once), so no queue actor
sits in the middle and no data passes through the driver. Items larger than `INLINE_BYTES` travel as
object refs (`ray.put` in the producer; the consumer fetches from the object store); small ones inline in the
call. `get(key)` in the consumer blocks on its local mailbox; `get_any(keys)` returns whichever key has an
item first, which is what lets a rollout worker serve pipeline stages in the order the env finishes them.

Each key is one producer's ordered stream: items carry a sequence number and the mailbox hands them out in
that order even when Ray delivers calls to a threaded actor out of order.

Between processes on one machine (a channel made with `Channel.connect`, which asks each consumer for its
mailbox's address), items skip Ray: they travel over a Unix socket in the wire format of
`embodied.local_channel` (CPU tensors as numpy arrays), ~15x cheaper per message than a Ray call.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import defaultdict
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from embodied import local_channel

INLINE_BYTES = 64 * 1024


class ChannelTimeout(RuntimeError):
    """No item arrived in time: the peer that should have sent it is stuck or gone."""


@dataclasses.dataclass
class _ByRef:
    """An item stored in Ray's object store; the mailbox resolves it on `get`."""

    ref: Any


@dataclasses.dataclass
class _Packed:
    """An item in the wire format of `embodied.local_channel`; the mailbox decodes it on `get`."""

    data: bytes | bytearray


def payload_bytes(item: Any) -> int:
    """Bytes of the tensors inside `item` (nested dicts, lists, tuples, dataclasses)."""
    if isinstance(item, torch.Tensor):
        return item.element_size() * item.nelement()
    if isinstance(item, dict):
        return sum(payload_bytes(v) for v in item.values())
    if isinstance(item, (list, tuple)):
        return sum(payload_bytes(v) for v in item)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return sum(payload_bytes(getattr(item, f.name)) for f in dataclasses.fields(item))
    return 0


class Mailbox:
    """The per-process receiving end of all channels: (channel, key) -> items by sequence number."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._items: dict[tuple[str, Hashable], dict[int, Any]] = defaultdict(dict)
        self._expected: dict[tuple[str, Hashable], int] = defaultdict(int)
        self._listener: local_channel.Listener | None = None

    def address(self) -> tuple[str, str] | None:
        """(node id, socket name) where producers on this node can reach this mailbox without Ray; None
        where abstract Unix sockets do not exist. Starts the listener on the first call."""
        if not local_channel.supported():
            return None
        with self._cond:
            if self._listener is None:
                self._listener = local_channel.Listener(
                    lambda channel, key, seq, data: self.deliver(channel, key, seq, _Packed(data))
                )
        return _node_id(), self._listener.name

    def deliver(self, channel: str, key: Hashable, seq: int, item: Any) -> None:
        with self._cond:
            self._items[(channel, key)][seq] = item
            self._cond.notify_all()

    def _ready(self, channel: str, keys: Sequence[Hashable]) -> Hashable | None:
        for key in keys:
            if self._expected[(channel, key)] in self._items[(channel, key)]:
                return key
        return None

    def get_any(self, channel: str, keys: Sequence[Hashable], timeout: float) -> tuple[Hashable, Any]:
        """The next item of whichever of `keys` has one first (ties: the earlier key)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            key = self._ready(channel, keys)
            while key is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ChannelTimeout(
                        f"no item on channel {channel!r} for keys {list(keys)} within {timeout:.0f}s: the worker "
                        "that sends them is stuck or gone (raise rollout.channel_timeout_s if it is just slow)"
                    )
                self._cond.wait(left)
                key = self._ready(channel, keys)
            slot = (channel, key)
            item = self._items[slot].pop(self._expected[slot])
            self._expected[slot] += 1
        if isinstance(item, _ByRef):
            import ray

            item = ray.get(item.ref)
        if isinstance(item, _Packed):
            item = local_channel.decode(item.data)
        return key, item

    def pending(self) -> int:
        """Items delivered but not yet taken (all channels)."""
        with self._cond:
            return sum(len(v) for v in self._items.values())


_LOCAL_MAILBOX = Mailbox()
_SENDERS = local_channel.Senders()


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def local_mailbox() -> Mailbox:
    """This process's mailbox (each worker process has exactly one)."""
    return _LOCAL_MAILBOX


class Channel:
    """A named FIFO from one worker group to the workers `consumers` (Ray actor handles, by rank)."""

    def __init__(
        self,
        name: str,
        consumers: Sequence[Any],
        timeout: float = 600.0,
        addresses: Sequence[tuple[str, str] | None] | None = None,
    ) -> None:
        self.name = name
        self.consumers = list(consumers)
        self.timeout = timeout
        # per consumer: (node id, socket name) of its mailbox, or None: Ray calls only
        self.addresses = list(addresses) if addresses is not None else [None] * len(self.consumers)
        self._next_seq: dict[tuple[Hashable, int], int] = defaultdict(int)
        self._here: str | None = None

    @classmethod
    def connect(cls, name: str, consumers: Sequence[Any], timeout: float = 600.0) -> Channel:
        """A channel whose items reach consumers on the producer's machine over Unix sockets (the consumers
        are `embodied.worker.Worker`s; this asks each for its mailbox's address)."""
        import ray

        return cls(name, consumers, timeout, ray.get([c.mailbox_address.remote() for c in consumers]))

    def __getstate__(self) -> dict:
        # each process that receives a copy starts its own sequence numbers: keys have one producer each
        return {
            "name": self.name,
            "consumers": self.consumers,
            "timeout": self.timeout,
            "addresses": self.addresses,
        }

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["consumers"], state["timeout"], state["addresses"])

    def _local_name(self, rank: int) -> str | None:
        """The socket name of consumer `rank`'s mailbox if it is on this machine."""
        address = self.addresses[rank]
        if address is None:
            return None
        if self._here is None:
            self._here = _node_id()
        return address[1] if address[0] == self._here else None

    def put(self, item: Any, key: Hashable, rank: int) -> None:
        """Send `item` under `key` to consumer `rank`; returns at once."""
        import ray

        seq = self._next_seq[(key, rank)]
        self._next_seq[(key, rank)] = seq + 1
        local = self._local_name(rank)
        if local is not None:
            data = local_channel.encode(item)
            if _SENDERS.send(local, self.name, key, seq, data):
                return
            item = _Packed(data)  # the consumer is gone or unreachable: Ray reports what happened to it
        size = len(item.data) if isinstance(item, _Packed) else payload_bytes(item)
        if size > INLINE_BYTES:
            item = _ByRef(ray.put(item))
        self.consumers[rank].deliver.remote(self.name, key, seq, item)

    def get(self, key: Hashable) -> Any:
        """The next item under `key` in this process's mailbox (blocks up to the channel's timeout)."""
        return local_mailbox().get_any(self.name, [key], self.timeout)[1]

    def get_any(self, keys: Sequence[Hashable]) -> tuple[Hashable, Any]:
        """(key, item): the next item of whichever of `keys` has one first."""
        return local_mailbox().get_any(self.name, keys, self.timeout)
