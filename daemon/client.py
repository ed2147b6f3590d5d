"""Short request/reply exchanges with a running daemon (status, health checks)."""

from __future__ import annotations

import time
import uuid
from typing import Callable

import zmq

from lowdose.wire.hook_config import check_endpoint
from lowdose.wire.protocol import Error, ProtocolError, StatusReply, StatusRequest, decode, encode

from .phase import RunPhase


class DaemonUnreachable(RuntimeError):
    """No daemon answered; the message says where we looked and what to check."""


def query_status(endpoint: str, timeout: float = 3.0) -> dict:
    """The daemon's status map, or :class:`DaemonUnreachable` after ``timeout`` seconds."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, f"status-{uuid.uuid4().hex[:8]}".encode())
        try:
            sock.connect(check_endpoint(endpoint))
        except (ValueError, zmq.ZMQError) as exc:
            raise DaemonUnreachable(
                f"cannot connect to {endpoint!r}: {exc}; a daemon endpoint looks like "
                "tcp://127.0.0.1:5571 or ipc:///tmp/lowdose.sock (its server.endpoints)"
            ) from None
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


def wait_run_finished(
    endpoint: str,
    run: str,
    timeout: float,
    *,
    on_status: Callable[[dict], None] | None = None,
    poll_s: float = 0.2,
) -> dict:
    """Poll the daemon until ``run`` is finished (raw complete, restored, finalized); its status.

    ``on_status`` sees every status of the run on the way (progress bars).
    Raises :class:`TimeoutError` with the last status seen.
    """
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        status = query_status(endpoint, timeout=5.0)
        last = next((r for r in status["runs"] if r["run"] == run), {})
        if on_status is not None and last:
            on_status(last)
        if last.get("state") == RunPhase.FINISHED:
            return last
        time.sleep(poll_s)
    raise TimeoutError(f"run {run!r} did not finish within {timeout:.0f} s; last status: {last}")
