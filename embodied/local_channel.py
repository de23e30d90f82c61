"""The fast path of channels between workers on one machine: a Unix socket per receiving process, and a wire
format that pickles CPU tensors as numpy arrays.

Measured on the 2-core machine (two processes on one core, an `EnvStep`-sized item of three small tensors,
/tmp/ping-pong of December 6): a Ray actor call carrying torch tensors took 2.0-2.4 ms per message, the same
over a Unix socket 0.8-1.0 ms, and 0.12-0.13 ms once the tensors travel as numpy arrays. Pickling a small
torch tensor costs ~0.1-0.2 ms each way (torch's own reduction), a numpy array ~5 us; Ray's actor call adds
~1.3 ms of its own (task submission, gRPC, the reply). An env worker and its rollout worker exchange two
messages per chunk step, so on a 2-core machine this is ~10 % of a PushCube rollout.

The receiver listens on an abstract Unix socket (Linux: a name, no file to clean up) from a daemon thread
that hands each frame to the process's mailbox; the sender keeps one connection per receiver. An abstract
socket has no file permissions, so the listener accepts only processes of its own user (SO_PEERCRED): frames
are unpickled, and another user's process must not be able to send one. Where this is
not possible (another machine, another OS, a receiver that has gone), `embodied.channel` falls back to Ray.
"""

from __future__ import annotations

import io
import os
import pickle
import socket
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import torch

_HEADER = struct.Struct("!II")  # bytes of the pickled (channel, key, seq), bytes of the payload
_NUMPY_DTYPES = {
    torch.float16, torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64,
    torch.uint8, torch.bool, torch.complex64, torch.complex128,
}  # fmt: skip


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array if array.flags.writeable else array.copy())


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if (
            type(obj) is torch.Tensor
            and obj.layout == torch.strided
            and obj.device.type == "cpu"
            and obj.dtype in _NUMPY_DTYPES
            and not obj.requires_grad
            and not obj.is_conj()
            and not obj.is_neg()
        ):
            return _tensor, (obj.numpy(),)
        return NotImplemented


def encode(item: Any) -> bytes:
    """`item` as bytes; CPU tensors of numpy's dtypes as numpy arrays (~100x cheaper than torch's pickling),
    others (bf16, CUDA, needing grad) as torch pickles them. `decode` gives tensors back."""
    buffer = io.BytesIO()
    _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(item)
    return buffer.getvalue()


def decode(data: bytes | bytearray) -> Any:
    return pickle.loads(data)


def _recv_exactly(conn: socket.socket, size: int) -> bytearray | None:
    buffer = bytearray(size)
    view, got = memoryview(buffer), 0
    while got < size:
        n = conn.recv_into(view[got:])
        if n == 0:
            return None
        got += n
    return buffer


class Listener:
    """An abstract Unix socket in this process whose frames go to `deliver(channel, key, seq, payload)`."""

    def __init__(self, deliver: Callable[[str, Hashable, int, bytearray], None]) -> None:
        self.name = f"inflow-mailbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self._deliver = deliver
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind("\0" + self.name)
        self._server.listen(64)
        threading.Thread(target=self._accept, name="mailbox-listener", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            if peer_uid(conn) != os.getuid():  # abstract sockets have no file permissions: check the peer
                conn.close()
                continue
            threading.Thread(target=self._read, args=(conn,), name="mailbox-reader", daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            while True:
                header = _recv_exactly(conn, _HEADER.size)
                if header is None:
                    return
                head_size, payload_size = _HEADER.unpack(header)
                head, payload = _recv_exactly(conn, head_size), _recv_exactly(conn, payload_size)
                if head is None or payload is None:
                    return
                channel, key, seq = pickle.loads(head)
                self._deliver(channel, key, seq, payload)


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end of a Unix socket (SO_PEERCRED: pid, uid, gid)."""
    _, uid, _ = struct.unpack(
        "3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    )
    return uid


def supported() -> bool:
    """Abstract Unix sockets: Linux only."""
    return sys.platform.startswith("linux")


class Senders:
    """This process's connections to other processes' listeners, one per listener (with its lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connections: dict[str, tuple[socket.socket, threading.Lock]] = {}

    def _connection(self, name: str) -> tuple[socket.socket, threading.Lock]:
        with self._lock:
            if name not in self._connections:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect("\0" + name)
                self._connections[name] = (conn, threading.Lock())
            return self._connections[name]

    def send(self, name: str, channel: str, key: Hashable, seq: int, payload: bytes) -> bool:
        """Send one frame to listener `name`; False (and the connection dropped) when it cannot be reached."""
        head = pickle.dumps((channel, key, seq), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            conn, lock = self._connection(name)
            with lock:
                conn.sendall(_HEADER.pack(len(head), len(payload)) + head + payload)
            return True
        except OSError:
            with self._lock:
                dropped = self._connections.pop(name, None)
            if dropped is not None:
                dropped[0].close()
            return False
