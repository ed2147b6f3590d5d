"""A bare protocol client for tests: speaks the wire protocol directly, no hook logic."""

from __future__ import annotations

import uuid

import numpy as np
import zmq

from lowdose.wire import protocol as p


class WireClient:
    def __init__(self, endpoint: str, ctx: zmq.Context | None = None):
        self.ctx = ctx or zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IDENTITY, f"test-{uuid.uuid4().hex[:8]}".encode())
        self.sock.connect(endpoint)

    def send(self, msg, payload=None):
        self.sock.send_multipart(p.encode(msg, payload))

    def send_raw(self, parts):
        self.sock.send_multipart(parts)

    def send_frame(self, run, seq, pixels, **index):
        msg = p.Frame(run=run, seq=seq, shape=pixels.shape, dtype=str(pixels.dtype), index=p.FrameIndex(**index))
        self.sock.send_multipart(p.encode_frame(msg, pixels))

    def recv(self, timeout=10.0):
        if not self.sock.poll(int(timeout * 1000)):
            raise TimeoutError("no reply from the daemon")
        msg, _ = p.decode(self.sock.recv_multipart())
        return msg

    def recv_until(self, predicate, timeout=20.0):
        import time

        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            msg = self.recv(max(deadline - time.monotonic(), 0.01))
            seen.append(msg)
            if predicate(msg):
                return msg, seen
        raise TimeoutError(f"condition not met; got {seen}")

    def close(self):
        self.sock.close(linger=0)


def acked(msgs) -> set[int]:
    out: set[int] = set()
    for m in msgs:
        if isinstance(m, p.Ack):
            for a, b in m.ranges:
                out.update(range(a, b + 1))
    return out


def ramp(seq: int, shape=(32, 48)) -> np.ndarray:
    """A frame whose pixels encode its seq, so misplaced frames are detectable."""
    return (np.arange(shape[0] * shape[1], dtype=np.uint32).reshape(shape) + seq * 7).astype(np.uint16)
