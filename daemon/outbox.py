"""Replies from worker threads back to the ROUTER socket's thread.

ZeroMQ sockets must not be shared between threads, so the write and restore
loops each own a PUSH socket into an inproc PULL that the I/O thread polls and
forwards through the ROUTER (the pyzmq guide's pattern).
"""

from __future__ import annotations

import zmq

from lowdose.wire.protocol import encode


class OutboxWriter:
    """One thread's end of the outbox. Create it in the thread that uses it."""

    def __init__(self, ctx: zmq.Context, address: str):
        self._sock = ctx.socket(zmq.PUSH)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(address)

    def send(self, identity: bytes, msg) -> None:
        self._sock.send_multipart([identity, *encode(msg)])

    def close(self) -> None:
        self._sock.close(linger=0)
