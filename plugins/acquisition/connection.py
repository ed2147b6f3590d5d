"""The hook's connection to the daemon: one DEALER socket, replaced when the daemon goes silent.

This is the "Lazy Pirate" of the ZeroMQ guide as ``docs/protocol.md`` asks for it: sends never
block, any message from the daemon counts as a sign of life, a heartbeat goes out when nothing has
been heard for ``heartbeat_s``, and a daemon silent for ``ack_timeout_s`` while an answer is due is
presumed dead, so the owner calls :meth:`DaemonConnection.reconnect` and announces the run again.

It knows messages, not frames: what is unacknowledged and what to resend is
:class:`~lowdose.plugins.acquisition.unacked.UnackedFrames`' business. Used by the sender thread only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import zmq
import zmq.auth

from lowdose.wire.hook_config import HookConfig
from lowdose.wire.keyfiles import check_secret_key
from lowdose.wire.protocol import Heartbeat, Message, ProtocolError, decode, encode

# Replies are small (acks, heartbeats); room for a few hundred keeps a burst of acks from
# being dropped while the sender thread is busy spooling.
_RCVHWM = 256
# While a send is refused (no completed connection yet), how soon to try again: IMMEDIATE
# gives no POLLOUT to wait for.
_BLOCKED_RETRY_S = 0.01


class DaemonConnection:
    """A DEALER socket to ``cfg.endpoint`` with the timing that tells a live daemon from a dead one."""

    def __init__(self, cfg: HookConfig, run: str) -> None:
        self.cfg = cfg
        self.run = run
        self.reconnects = 0  # sockets replaced because the daemon went silent
        self.last_rx = 0.0  # monotonic time of the last message from the daemon; 0: none yet
        self.awaiting_since: float | None = None  # first send not yet followed by any reply
        self.send_blocked = False  # the last send found no room (or no connection)
        self._last_heartbeat = 0.0
        self._ctx: zmq.Context | None = None
        self._wake: zmq.Socket | None = None
        self._sock: zmq.Socket | None = None
        self._poller = zmq.Poller()

    def open(self, ctx: zmq.Context, wake: zmq.Socket, session: int) -> None:
        """Connect the first socket; ``wake`` (polled with it) is the acquisition thread's doorbell."""
        self._ctx = ctx
        self._wake = wake
        self._poller.register(wake, zmq.POLLIN)
        self._connect(session)

    def reconnect(self, session: int) -> None:
        """Lazy Pirate: drop the socket (and whatever ZeroMQ still queues in it), open a fresh one."""
        self._close_socket()
        self.reconnects += 1
        self.forget_wait()
        self._connect(session)

    def close(self) -> None:
        self._close_socket()
        if self._wake is not None:
            self._poller.unregister(self._wake)
            self._wake = None

    # ---------------------------------------------------------------- traffic

    def send(self, parts: list[Any]) -> bool:
        """Queue one multipart message without blocking or copying; False if there is no room now."""
        try:
            self._sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)  # type: ignore[union-attr]
        except zmq.Again:
            self.send_blocked = True
            return False
        self.send_blocked = False
        if self.awaiting_since is None:
            self.awaiting_since = time.monotonic()
        return True

    def receive(self) -> Iterator[Message | ProtocolError]:
        """Every message waiting now, decoded; an unusable one comes as its :class:`ProtocolError`."""
        sock = self._sock
        assert sock is not None
        # EVENTS rather than catching zmq.Again: an exception per wakeup costs more
        # than the rest of handling an ack.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            parts = sock.recv_multipart(zmq.NOBLOCK)
            self.last_rx = time.monotonic()
            self.awaiting_since = None
            try:
                msg, _ = decode(parts)
            except ProtocolError as exc:
                yield exc
                continue
            yield msg

    def maybe_heartbeat(self, now: float) -> None:
        """Ask for a sign of life when the daemon has said nothing for ``heartbeat_s``."""
        hb = self.cfg.heartbeat_s
        if now - self.last_rx >= hb and now - self._last_heartbeat >= hb:
            # a heartbeat that cannot go out now waits for the next interval, not the next loop turn
            self.send(encode(Heartbeat(run=self.run)))
            self._last_heartbeat = now

    def poll(self, timeout_s: float) -> tuple[bool, bool]:
        """Wait up to ``timeout_s`` for the daemon or the doorbell: (daemon has sent, doorbell rang)."""
        events = dict(self._poller.poll(max(0, int(timeout_s * 1000))))
        return self._sock in events, self._wake in events

    # ---------------------------------------------------------------- timing

    def forget_wait(self) -> None:
        """Whatever was sent is void (a new session): no answer is due, no send is stuck."""
        self.awaiting_since = None
        self.send_blocked = False

    def silent_too_long(self, now: float) -> bool:
        """An answer has been due for longer than ``ack_timeout_s``: presume the daemon dead."""
        return self.awaiting_since is not None and now - self.awaiting_since > self.cfg.ack_timeout_s

    def wait_limit(self, now: float) -> float:
        """How long the owner may sleep before this connection needs attention again."""
        timeout_s = self.cfg.heartbeat_s / 2
        if self.awaiting_since is not None:
            timeout_s = min(timeout_s, self.awaiting_since + self.cfg.ack_timeout_s - now)
        if self.send_blocked:
            timeout_s = min(timeout_s, _BLOCKED_RETRY_S)
        return timeout_s

    def alive(self, now: float) -> bool:
        return self.last_rx != 0.0 and now - self.last_rx < self.cfg.ack_timeout_s

    # ---------------------------------------------------------------- the socket

    def _connect(self, session: int) -> None:
        assert self._ctx is not None
        # One identity per connection incarnation: a ROUTER may still hold the old
        # peer's identity when we reconnect, and would refuse a duplicate. The random part keeps
        # it unguessable: a client that took "<run>.<n>" first would otherwise lock us out of the
        # daemon (without CURVE, identities are all a ROUTER goes by). The run id stays for logs.
        identity = f"{self.run[:64]}.{session}.{secrets.token_hex(8)}"
        self._sock = dealer_socket(self._ctx, self.cfg, identity.encode())
        self._poller.register(self._sock, zmq.POLLIN)

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._poller.unregister(self._sock)
            self._sock.close(0)
            self._sock = None


def dealer_socket(ctx: zmq.Context, cfg: HookConfig, identity: bytes) -> zmq.Socket:
    """A DEALER connected to ``cfg.endpoint``, configured so that frames wait in the hook, not in ZeroMQ."""
    check_secret_key(cfg.curve_client_secret_key)  # before a socket exists that could be left open
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.IDENTITY, identity)
        # Small high-water marks: the flow control is ours (the credit window);
        # ZeroMQ's default of 1000 messages would be gigabytes of frames.
        sock.setsockopt(zmq.SNDHWM, cfg.window_frames + 4)
        sock.setsockopt(zmq.RCVHWM, _RCVHWM)
        # A closed socket's unsent frames are still unacked and will be resent: never wait for them.
        sock.setsockopt(zmq.LINGER, 0)
        # Queue messages only on a completed connection, so frames wait here (in
        # RAM / the spool, accounted) while the daemon is down, not in ZeroMQ.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        _use_curve(sock, cfg)
        sock.connect(cfg.endpoint)
    except Exception:
        sock.close(0)
        raise
    return sock


def _use_curve(sock: zmq.Socket, cfg: HookConfig) -> None:
    public_key, secret_key = cfg.curve_server_public_key, cfg.curve_client_secret_key
    if public_key is None and secret_key is None:
        return
    if public_key is None or secret_key is None:
        raise ValueError("CURVE needs both hook.curve_server_public_key and hook.curve_client_secret_key")
    server_public, _ = zmq.auth.load_certificate(str(public_key))
    client_public, client_secret = zmq.auth.load_certificate(str(secret_key))
    if client_secret is None:
        raise ValueError(f"{secret_key} holds no secret key")
    sock.curve_serverkey = server_public
    sock.curve_publickey = client_public
    sock.curve_secretkey = client_secret
