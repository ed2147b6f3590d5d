"""The daemon's ROUTER socket: options, CURVE, and binding without stealing a live daemon's endpoint."""

from __future__ import annotations

import os

import zmq

from lowdose.wire.keyfiles import check_secret_key

from .client import DaemonUnreachable, query_status
from .config import ServerConfig


class DaemonError(RuntimeError):
    """The daemon cannot start; the message says why and what to change."""


def bind_router(ctx: zmq.Context, scfg: ServerConfig):
    """A ROUTER bound on every ``scfg.endpoints`` entry, and its CURVE authenticator (or None).

    On a :class:`DaemonError` nothing is left open.
    """
    sock = ctx.socket(zmq.ROUTER)
    # small high-water marks: the frames waiting belong on the hook's side, not in here
    sock.setsockopt(zmq.RCVHWM, scfg.rcvhwm_frames)
    sock.setsockopt(zmq.SNDHWM, scfg.sndhwm_messages)
    sock.setsockopt(zmq.LINGER, 0)
    auth = None
    try:
        if scfg.curve.enabled:
            auth = _setup_curve(ctx, scfg, sock)
        for endpoint in scfg.endpoints:
            _refuse_live_ipc(endpoint)
            try:
                sock.bind(endpoint)
            except zmq.ZMQError as exc:
                raise DaemonError(
                    f"cannot bind {endpoint}: {exc}. Is another lowdose daemon running? "
                    "Change server.endpoints in config.yaml or stop the other one."
                ) from None
    except DaemonError:
        sock.close(linger=0)
        if auth is not None:
            auth.stop()
        raise
    return sock, auth


def _refuse_live_ipc(endpoint: str) -> None:
    # binding ipc:// silently unlinks a live daemon's socket file and steals its clients
    path = endpoint.removeprefix("ipc://")
    if not endpoint.startswith("ipc://") or not os.path.exists(path):
        return
    try:
        query_status(endpoint, timeout=0.5)
    except DaemonUnreachable:
        return  # a stale socket file left by a crashed daemon: safe to take over
    raise DaemonError(
        f"cannot bind {endpoint}: another lowdose daemon is serving it. "
        "Stop it, or change server.endpoints in config.yaml."
    )


def _setup_curve(ctx: zmq.Context, scfg: ServerConfig, sock: zmq.Socket):
    import zmq.auth
    from zmq.auth.thread import ThreadAuthenticator

    curve = scfg.curve
    if curve.server_secret_key is None or curve.authorized_keys_dir is None:
        raise DaemonError("server.curve.enabled needs server_secret_key and authorized_keys_dir")
    check_secret_key(curve.server_secret_key, DaemonError)
    public, secret = zmq.auth.load_certificate(str(curve.server_secret_key))
    if secret is None:
        raise DaemonError(f"{curve.server_secret_key} holds no secret key (use the .key_secret file)")
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=str(curve.authorized_keys_dir))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth
