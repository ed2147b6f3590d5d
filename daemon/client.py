"""Short request/reply exchanges with a running daemon (status, health checks)."""

from __future__ import annotations

import uuid

import zmq

from .protocol import Error, ProtocolError, StatusReply, StatusRequest, decode, encode


class DaemonUnreachable(RuntimeError):
    """No daemon answered; the message says where we looked and what to check."""


def query_status(endpoint: str, timeout: float = 3.0) -> dict:
    """The daemon's status map, or :class:`DaemonUnreachable` after ``timeout`` seconds."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, f"status-{uuid.uuid4().hex[:8]}".encode())
        sock.connect(endpoint)
        sock.send_multipart(encode(StatusRequest()))
        if not sock.poll(int(timeout * 1000)):
            raise DaemonUnreachable(
                f"no lowdose daemon answered at {endpoint} within {timeout:g} s; "
                "is `lowdose serve` running, and does the endpoint match its server.endpoints?"
            )
        try:
            msg, _ = decode(sock.recv_multipart())
        except ProtocolError as exc:
            raise DaemonUnreachable(f"{endpoint} answered with something that is not lowdose: {exc}") from None
        if isinstance(msg, Error):
            raise DaemonUnreachable(f"daemon at {endpoint} refused the status request: {msg.reason}")
        if not isinstance(msg, StatusReply):
            raise DaemonUnreachable(f"daemon at {endpoint} answered {msg.kind!r} to a status request")
        return msg.status
    finally:
        sock.close(linger=0)
        ctx.term()
