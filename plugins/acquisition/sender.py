"""The hooks' client: frames from an acquisition thread to the daemon, never lost.

:class:`FrameSender` is shared by every hook. Its contract:

* :meth:`FrameSender.submit` runs in the acquisition thread and does O(1) work:
  it numbers the frame, appends a reference to it to an in-process queue and
  returns. No I/O, no copy, no lock contention with the network (rule 1 of ``docs/design.md``).
* One sender thread owns the DEALER socket. It announces the run (``Start``),
  sends frames zero-copy with at most ``window_frames`` unacknowledged on the
  wire, and drops a frame only when an ``Ack`` says it is durably written
  (rule 2). Unacked frames past ``memory_mb`` go to the run's :class:`Spool` on
  local disk, oldest first, and are read back for resending.
* A daemon that stays silent for ``ack_timeout_s`` while something is
  outstanding is presumed dead: the socket is closed and recreated (the Lazy
  Pirate pattern of the ZeroMQ guide) and ``Start`` plus every unacked frame is
  sent again. A daemon that restarted and answers ``unknown_run`` gets the same.
  Resends reuse sequence numbers; the daemon's writes are idempotent by seq.
* A frame the daemon refuses as malformed is counted as rejected and kept in
  the spool's ``rejected/`` folder; it is never resent.
* :meth:`FrameSender.finish` sends ``End`` after every frame and waits up to
  ``close_timeout_s`` for the acks; whatever is still unacked is written to the
  spool (where :func:`replay_spool` can send it later) and reported.
"""

from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import zmq
import zmq.auth

from lowdose.wire.hook_config import HookConfig
from lowdose.wire.keyfiles import check_secret_key
from lowdose.wire.protocol import (
    Ack,
    End,
    Error,
    Frame,
    FrameIndex,
    Heartbeat,
    ProtocolError,
    Start,
    StatusReply,
    FRAME_DTYPES,
    MAX_FRAME_SIDE,
    TAG,
    decode,
    encode,
)

from lowdose.wire.jsonsafe import jsonable

from .spool import Spool, SpoolError, run_dirs

log = logging.getLogger(__name__)

#: Error codes after which a frame is worth sending again later (the daemon is
#: busy or its store hiccuped); any other error naming a seq rejects that frame.
TRANSIENT_CODES = frozenset(
    {"store_failed", "busy", "overloaded", "write_failed", "shutting_down", "not_ready", "internal"}
)
_RETRY_DELAY_S = 0.5  # after a transient error: the daemon's disk or queue needs a moment
# Re-announcing a run at most this often: a daemon that cannot open the run answers
# every frame with unknown_run, and each answer must not cost a full resend.
_RESTART_MIN_INTERVAL_S = 1.0
UNKNOWN_RUN = "unknown_run"


@dataclass(frozen=True)
class SenderCounters:
    """A snapshot of a sender's progress; every field is a plain value."""

    run: str
    queued: int  # frames submitted by the acquisition
    sent: int  # frame messages put on the wire, resends included
    resent: int  # of which resends
    acked: int  # distinct frames acknowledged as written
    spooled: int  # frames written to the spool (ever)
    spooled_now: int  # frames on disk in the spool right now
    rejected: int  # frames the daemon refused as malformed (kept in rejected/)
    unacked: int  # frames submitted and not yet acknowledged (RAM + spool + pending)
    in_memory_bytes: int  # pixel bytes held in RAM for unacked frames
    in_flight: int  # frames on the wire awaiting an ack
    reconnects: int  # sockets recreated after the daemon went silent
    restarts: int  # runs re-announced after the daemon answered unknown_run
    daemon_alive: bool
    last_ack_time: float | None  # time.time() of the last ack
    daemon: str  # the daemon's instance id, from its last reply
    last_error: str | None


@dataclass(frozen=True)
class FinishReport:
    """How a run ended on the hook's side."""

    run: str
    reason: str
    frames: int  # frames produced (seq 0 .. frames-1)
    acked: int
    unacked: int  # left in the spool
    rejected: int
    finished: bool  # the daemon confirmed the end (every frame written)
    spool_dir: Path | None  # where unacked / rejected frames are, if any
    counters: SenderCounters

    @property
    def ok(self) -> bool:
        return self.unacked == 0 and self.rejected == 0 and self.finished


@dataclass
class _Entry:
    """An unacked frame, owned by the sender thread."""

    seq: int
    header: bytes
    pixels: np.ndarray | None  # None once only the spool holds it
    nbytes: int
    spooled: bool = False
    session: int = -1  # session of its last send; -1 never sent
    sends: int = 0


@dataclass
class _Item:
    """What the acquisition thread hands over: references only, nothing computed."""

    seq: int
    pixels: np.ndarray
    index: Any
    timestamp: float
    elapsed_ms: float | None
    exposure_ms: float | None
    metadata: Any


@dataclass
class _EndRequest:
    reason: str
    frames: int | None


@dataclass
class _State:
    """Everything the sender thread mutates; nothing else touches it."""

    unacked: dict[int, _Entry] = field(default_factory=dict)
    to_send: deque[int] = field(default_factory=deque)
    in_flight: dict[int, float] = field(default_factory=dict)
    mem_order: deque[int] = field(default_factory=deque)
    in_memory_bytes: int = 0
    session: int = 0
    start_sent: bool = False
    end: End | None = None
    end_sent: bool = False
    finished: bool = False
    last_rx: float = 0.0
    last_tx: float = 0.0
    last_hb: float = 0.0
    awaiting_since: float | None = None
    last_restart: float = -math.inf
    send_blocked: bool = False
    retry_at: float = 0.0
    settled_at: float | None = None
    restart_due: bool = False


class FrameSender:
    """Sends one run's frames to the daemon; see the module docstring for the guarantees.

    ``start`` is the run's announcement (its ``run`` is the run id). Use it as a
    context manager, or call :meth:`start` then :meth:`finish` / :meth:`close`.
    """

    def __init__(
        self,
        cfg: HookConfig,
        start: Start,
        *,
        first_seq: int = 0,
        adopt_spool: bool = False,
        spool_fsync: bool | None = None,
    ) -> None:
        self.cfg = cfg
        self.start_msg = start
        self.run = start.run
        self._start_header = encode(start)[1]
        self._spool = Spool(cfg.spool_dir, start.run, fsync=cfg.spool_fsync if spool_fsync is None else spool_fsync)
        self._adopt = adopt_spool
        self._memory_limit = int(cfg.memory_mb * 1024 * 1024)

        # producer side: touched under _submit_lock only
        self._submit_lock = threading.Lock()
        self._next_seq = first_seq
        self._queued = 0
        self._submitted_bytes = 0
        self._pending: deque[_Item | _EndRequest] = deque()
        self._end_requested = False

        # sender side: written by the sender thread only
        self._drained_bytes = 0
        self._sent = 0
        self._resent = 0
        self._acked = 0
        self._spooled = 0
        self._spooled_now = 0
        self._rejected = 0
        self._reconnects = 0
        self._restarts = 0
        self._last_ack_time: float | None = None
        self._daemon_id = ""
        self._last_error: str | None = None
        self._st = _State()

        self._ctx: zmq.Context | None = None
        self._wake_tx: zmq.Socket | None = None
        self._wake_addr = f"inproc://lowdose-sender-wake-{id(self):x}-{time.monotonic_ns()}"
        self._idle = False  # the sender thread is (about to be) asleep in poll()
        self._stop_now = threading.Event()  # abandon sending: spool everything and stop
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._report: FinishReport | None = None
        self._atexit = None

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> FrameSender:
        self.start()
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(reason="finished" if exc_type is None else "error")

    def start(self) -> None:
        """Start the sender thread (idempotent)."""
        if self._thread is not None:
            return
        if self._adopt:
            self._adopt_spool()  # before the thread: counters are right from the start
        self._ctx = zmq.Context()
        wake_rx = self._ctx.socket(zmq.PAIR)
        wake_rx.bind(self._wake_addr)
        self._wake_tx = self._ctx.socket(zmq.PAIR)
        self._wake_tx.setsockopt(zmq.SNDHWM, 1)
        self._wake_tx.setsockopt(zmq.LINGER, 0)
        self._wake_tx.connect(self._wake_addr)
        self._thread = threading.Thread(
            target=self._thread_main, args=(wake_rx,), name=f"lowdose-sender-{self.run}", daemon=True
        )
        # If the program exits without finishing the run, whatever is unacked goes
        # to the spool rather than vanishing with the daemon thread.
        ref = weakref.ref(self)
        self._atexit = lambda: _spool_at_exit(ref)
        atexit.register(self._atexit)
        self._thread.start()

    def submit(
        self,
        pixels: np.ndarray,
        index: FrameIndex | dict[str, int] | None = None,
        *,
        timestamp: float | None = None,
        elapsed_ms: float | None = None,
        exposure_ms: float | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> int:
        """Queue one frame and return its sequence number. O(1), never blocks on I/O.

        ``pixels`` is kept by reference and sent zero-copy: do not modify it
        afterwards (MMCore hands every frame over as a fresh array).
        """
        ts = time.time() if timestamp is None else timestamp
        nbytes = pixels.nbytes
        with self._submit_lock:
            if self._end_requested:
                raise RuntimeError(f"run {self.run} has ended; no more frames can be submitted")
            seq = self._next_seq
            self._next_seq = seq + 1
            self._queued += 1
            self._submitted_bytes += nbytes
            self._pending.append(_Item(seq, pixels, index, ts, elapsed_ms, exposure_ms, metadata))
            self._wake_locked()
        return seq

    def finish(self, reason: str = "finished", *, frames: int | None = None, wait: bool = True,
               timeout: float | None = None) -> FinishReport | None:
        """End the run: ``End`` goes after every submitted frame.

        With ``wait`` (default), blocks up to ``timeout`` (default
        ``close_timeout_s``) for the acks and returns the report; otherwise the
        sender thread finishes in the background (see :meth:`wait`).
        """
        self.start()
        with self._submit_lock:
            if not self._end_requested:
                self._end_requested = True
                grace = self.cfg.close_timeout_s if timeout is None else timeout
                self._deadline = time.monotonic() + grace
                self._pending.append(_EndRequest(reason, frames))
                self._wake_locked()
        return self.wait(timeout) if wait else None

    def wait(self, timeout: float | None = None) -> FinishReport | None:
        """Wait for the sender thread to finish (after :meth:`finish`); the report, or None."""
        grace = (self.cfg.close_timeout_s if timeout is None else timeout) + 5.0
        if self._thread is not None and not self._done.wait(grace):
            return None
        return self._report

    def close(self, timeout: float | None = None, *, reason: str = "finished") -> FinishReport | None:
        """Finish the run (if not yet) and release sockets; returns the report."""
        report = self.finish(reason, timeout=timeout) if not self._end_requested else self.wait(timeout)
        self._release()
        return report

    def abort_to_spool(self, timeout: float = 10.0) -> None:
        """Stop sending now; every unacked frame is written to the spool for a later replay."""
        self._stop_now.set()
        with self._submit_lock:
            self._wake_locked()
        if self._thread is not None:
            self._done.wait(timeout)
        self._release()

    @property
    def spool_dir(self) -> Path:
        return self._spool.dir

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def counters(self) -> SenderCounters:
        st = self._st
        pending = self._submitted_bytes - self._drained_bytes
        return SenderCounters(
            run=self.run,
            queued=self._queued,
            sent=self._sent,
            resent=self._resent,
            acked=self._acked,
            spooled=self._spooled,
            spooled_now=self._spooled_now,
            rejected=self._rejected,
            unacked=self._queued - self._acked - self._rejected,
            in_memory_bytes=st.in_memory_bytes + pending,
            in_flight=len(st.in_flight),
            reconnects=self._reconnects,
            restarts=self._restarts,
            daemon_alive=self._daemon_alive(),
            last_ack_time=self._last_ack_time,
            daemon=self._daemon_id,
            last_error=self._last_error,
        )

    # ---------------------------------------------------------------- producer helpers

    def _wake_locked(self) -> None:
        # Only when the sender thread sleeps: at most one tiny in-process message
        # per idle-to-busy transition, never blocking (NOBLOCK, HWM 1).
        if self._idle and self._wake_tx is not None:
            self._idle = False
            try:
                self._wake_tx.send(b"", zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # a wakeup is already queued

    def _release(self) -> None:
        if self._atexit is not None and (self._thread is None or self._done.is_set()):
            atexit.unregister(self._atexit)
            self._atexit = None

    # ---------------------------------------------------------------- sender thread

    def _thread_main(self, wake_rx: zmq.Socket) -> None:
        sock: zmq.Socket | None = None
        try:
            sock = self._new_socket()
            self._loop(sock, wake_rx)
        except Exception as exc:  # the thread must leave the frames safe whatever happens
            log.exception("lowdose sender for run %s failed", self.run)
            self._last_error = f"sender thread failed: {exc!r}"
        finally:
            try:
                self._spool_everything()
            except Exception as exc:
                log.exception("could not spool the unacked frames of run %s", self.run)
                self._last_error = f"spooling at close failed: {exc!r}"
            if sock is not None:
                sock.close(0)
            wake_rx.close(0)
            with self._submit_lock:  # producers use wake_tx under this lock only
                if self._wake_tx is not None:
                    self._wake_tx.close(0)
                    self._wake_tx = None
            if self._ctx is not None:
                self._ctx.term()  # every socket of this context is closed by now
                self._ctx = None
            self._report = self._make_report()
            self._done.set()

    def _loop(self, sock: zmq.Socket, wake_rx: zmq.Socket) -> None:
        st = self._st
        cfg = self.cfg
        poller = zmq.Poller()
        poller.register(wake_rx, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        while True:
            if self._stop_now.is_set():
                return
            self._drain_pending()
            self._spill()
            self._send_some(sock)
            now = time.monotonic()
            if st.end_sent and not st.unacked:
                if st.finished:
                    return
                # Every frame is acked (or rejected) but the end is not confirmed: give
                # the daemon a moment, then stop; nothing is at risk any more.
                st.settled_at = st.settled_at or now
                if now - st.settled_at > 2 * cfg.ack_timeout_s:
                    self._last_error = self._last_error or "the daemon did not confirm the end of the run"
                    return
            if st.restart_due and now - st.last_restart >= _RESTART_MIN_INTERVAL_S:
                self._restarts += 1
                self._restart_session()
            if self._deadline is not None and now >= self._deadline:
                self._last_error = self._last_error or "close timeout: unacked frames left in the spool"
                return
            self._maybe_heartbeat(sock, now)
            if st.awaiting_since is not None and now - st.awaiting_since > cfg.ack_timeout_s:
                # Lazy Pirate: the daemon is gone (or the connection is): a fresh
                # socket, then Start and every unacked frame again.
                poller.unregister(sock)
                sock.close(0)
                self._reconnects += 1
                self._restart_session()
                sock = self._new_socket()
                poller.register(sock, zmq.POLLIN)
                continue

            timeout_s = cfg.heartbeat_s / 2
            if st.awaiting_since is not None:
                timeout_s = min(timeout_s, st.awaiting_since + cfg.ack_timeout_s - now)
            if self._deadline is not None:
                timeout_s = min(timeout_s, self._deadline - now)
            if st.send_blocked:
                timeout_s = min(timeout_s, 0.01)  # waiting for a connection: IMMEDIATE gives no POLLOUT
            if st.retry_at > now and st.to_send:
                timeout_s = min(timeout_s, st.retry_at - now)
            self._idle = True
            if self._pending or self._stop_now.is_set():
                self._idle = False
                timeout_s = 0
            events = dict(poller.poll(max(0, int(timeout_s * 1000))))
            self._idle = False
            if wake_rx in events:
                while wake_rx.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    wake_rx.recv(zmq.NOBLOCK)
            if sock in events:
                self._receive_all(sock)

    # ---------------------------------------------------------------- socket

    def _new_socket(self) -> zmq.Socket:
        assert self._ctx is not None
        st = self._st
        cfg = self.cfg
        check_secret_key(cfg.curve_client_secret_key)  # before the socket: a failure must not leave one open
        sock = self._ctx.socket(zmq.DEALER)
        # One identity per connection incarnation: a ROUTER may still hold the old
        # peer's identity when we reconnect, and would refuse a duplicate.
        sock.setsockopt(zmq.IDENTITY, f"{self.run}.{st.session}".encode())
        # Small high-water marks: the flow control is ours (the credit window);
        # ZeroMQ's default of 1000 messages would be gigabytes of frames.
        sock.setsockopt(zmq.SNDHWM, cfg.window_frames + 4)
        sock.setsockopt(zmq.RCVHWM, 256)
        sock.setsockopt(zmq.LINGER, 0)
        # Queue messages only on a completed connection, so frames wait here (in
        # RAM / the spool, accounted) while the daemon is down, not in ZeroMQ.
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if cfg.curve_server_public_key is not None or cfg.curve_client_secret_key is not None:
            if cfg.curve_server_public_key is None or cfg.curve_client_secret_key is None:
                raise ValueError("CURVE needs both hook.curve_server_public_key and hook.curve_client_secret_key")
            server_public, _ = zmq.auth.load_certificate(str(cfg.curve_server_public_key))
            client_public, client_secret = zmq.auth.load_certificate(str(cfg.curve_client_secret_key))
            if client_secret is None:
                raise ValueError(f"{cfg.curve_client_secret_key} holds no secret key")
            sock.curve_serverkey = server_public
            sock.curve_publickey = client_public
            sock.curve_secretkey = client_secret
        sock.connect(cfg.endpoint)
        return sock

    def _restart_session(self) -> None:
        """Forget what is on the wire: Start, every unacked frame and End go again."""
        st = self._st
        st.session += 1
        st.start_sent = False
        st.end_sent = False
        st.in_flight.clear()
        st.to_send = deque(sorted(st.unacked))
        st.awaiting_since = None
        st.send_blocked = False
        st.last_restart = time.monotonic()
        st.restart_due = False
        st.settled_at = None

    def _send(self, sock: zmq.Socket, parts: list[Any]) -> bool:
        try:
            sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._st.send_blocked = True
            return False
        now = time.monotonic()
        st = self._st
        st.send_blocked = False
        st.last_tx = now
        if st.awaiting_since is None:
            st.awaiting_since = now
        return True

    def _send_some(self, sock: zmq.Socket) -> None:
        st = self._st
        if not st.start_sent:
            if not self._send(sock, encode(self.start_msg)):
                return
            st.start_sent = True
        now = time.monotonic()
        while st.to_send and len(st.in_flight) < self.cfg.window_frames and now >= st.retry_at:
            seq = st.to_send[0]
            entry = st.unacked.get(seq)
            if entry is None or seq in st.in_flight:
                st.to_send.popleft()
                continue
            parts = self._frame_parts(entry)
            if parts is None:
                st.to_send.popleft()
                continue
            if not self._send(sock, parts):
                return
            st.to_send.popleft()
            st.in_flight[seq] = now
            entry.session = st.session
            entry.sends += 1
            self._sent += 1
            if entry.sends > 1:
                self._resent += 1
        if st.end is not None and not st.end_sent and not st.to_send:
            if self._send(sock, encode(st.end)):
                st.end_sent = True

    def _frame_parts(self, entry: _Entry) -> list[Any] | None:
        if entry.pixels is not None:
            return [TAG, entry.header, memoryview(entry.pixels).cast("B")]
        try:
            spooled = self._spool.get(entry.seq)
        except SpoolError as exc:
            # A spool file we cannot read can never be delivered: say so loudly.
            self._last_error = f"seq {entry.seq}: {exc}"
            log.error("lowdose: spooled frame unreadable, it cannot be resent: %s", exc)
            self._drop(entry.seq)
            self._rejected += 1
            return None
        return [TAG, spooled.header, spooled.pixels]

    def _maybe_heartbeat(self, sock: zmq.Socket, now: float) -> None:
        st = self._st
        hb = self.cfg.heartbeat_s
        if now - st.last_rx >= hb and now - st.last_hb >= hb and st.start_sent:
            # a heartbeat that cannot go out now waits for the next interval, not the next loop turn
            self._send(sock, encode(Heartbeat(run=self.run)))
            st.last_hb = now

    # ---------------------------------------------------------------- replies

    def _receive_all(self, sock: zmq.Socket) -> None:
        # EVENTS rather than catching zmq.Again: an exception per wakeup costs more
        # than the rest of handling an ack.
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            parts = sock.recv_multipart(zmq.NOBLOCK)
            st = self._st
            st.last_rx = time.monotonic()
            st.awaiting_since = None
            try:
                msg, _ = decode(parts)
            except ProtocolError as exc:
                self._last_error = f"bad reply from daemon: {exc}"
                continue
            daemon = getattr(msg, "daemon", None)
            if daemon:
                self._daemon_id = daemon
            if isinstance(msg, Ack):
                self._on_ack(msg)
            elif isinstance(msg, Error):
                self._on_error(msg)
            elif isinstance(msg, (Heartbeat, StatusReply)):
                pass
            # anything else a daemon should not send us; ignored

    def _on_ack(self, msg: Ack) -> None:
        if msg.run != self.run:
            return
        st = self._st
        self._last_ack_time = time.time()
        for first, last in msg.ranges:
            if last < first:
                continue
            if last - first + 1 <= len(st.unacked):
                seqs = range(first, last + 1)
            else:  # a cumulative range: walk what we hold rather than the range
                seqs = [s for s in st.unacked if first <= s <= last]
            for seq in seqs:
                if seq in st.unacked:
                    self._drop(seq)
                    self._acked += 1
        if msg.finished and st.end_sent:
            st.finished = True

    def _on_error(self, msg: Error) -> None:
        st = self._st
        if msg.run is not None and msg.run != self.run:
            return
        self._last_error = f"{msg.code}: {msg.reason}"
        if msg.code == UNKNOWN_RUN:
            entry = st.unacked.get(msg.seq) if msg.seq is not None else None
            if msg.seq is not None and (entry is None or entry.session < st.session):
                return  # about a frame sent before we already re-announced the run
            if time.monotonic() - st.last_restart < _RESTART_MIN_INTERVAL_S:
                st.restart_due = True  # again soon, not once per reply
                return
            self._restarts += 1
            log.warning("lowdose: daemon does not know run %s (restarted?): resending", self.run)
            self._restart_session()
            return
        if msg.seq is None or msg.seq not in st.unacked:
            if msg.seq is None and st.end_sent and msg.code not in TRANSIENT_CODES:
                log.error("lowdose: daemon refused run %s: %s", self.run, self._last_error)
            return
        seq = msg.seq
        st.in_flight.pop(seq, None)
        if msg.code in TRANSIENT_CODES:
            st.to_send.appendleft(seq)
            st.retry_at = time.monotonic() + _RETRY_DELAY_S
            return
        entry = st.unacked[seq]
        log.error("lowdose: daemon rejected frame %d of run %s: %s", seq, self.run, self._last_error)
        self._spool.reject(seq, entry.header, entry.pixels, f"{msg.code}: {msg.reason}")
        self._drop(seq, delete_spool=False)
        self._rejected += 1

    # ---------------------------------------------------------------- memory and spool

    def _drain_pending(self) -> None:
        st = self._st
        pending = self._pending
        while pending:
            item = pending.popleft()
            if isinstance(item, _EndRequest):
                frames = self._next_seq if item.frames is None else item.frames
                st.end = End(run=self.run, frames=frames, reason=item.reason)  # type: ignore[arg-type]
                continue
            self._drained_bytes += item.pixels.nbytes
            self._accept(item)

    def _accept(self, item: _Item) -> None:
        st = self._st
        pixels = item.pixels
        try:
            header = self._frame_header(item)
        except Exception as exc:
            # Unsendable (a shape or dtype the protocol does not carry): keep it on
            # disk as rejected so the raw data still exists, and say so.
            self._rejected += 1
            self._last_error = f"seq {item.seq}: not sendable: {exc}"
            log.error("lowdose: frame %d of run %s cannot be sent: %s", item.seq, self.run, exc)
            note = msgpack.packb(
                {"seq": item.seq, "shape": list(pixels.shape), "dtype": str(pixels.dtype)}, use_bin_type=True
            )
            self._spool.reject(item.seq, note, np.ascontiguousarray(pixels).view(np.uint8).ravel(), str(exc))
            return
        if not pixels.flags.c_contiguous:
            pixels = np.ascontiguousarray(pixels)
        entry = _Entry(item.seq, header, pixels, pixels.nbytes)
        st.unacked[item.seq] = entry
        st.to_send.append(item.seq)
        st.mem_order.append(item.seq)
        st.in_memory_bytes += entry.nbytes

    def _frame_header(self, item: _Item) -> bytes:
        """The encoded ``Frame`` header; the common case skips pydantic (it is per frame)."""
        fast = _fast_frame_header(self.run, item)
        return fast if fast is not None else self._frame_header_validated(item)

    def _frame_header_validated(self, item: _Item) -> bytes:
        index = item.index
        if index is None:
            index = FrameIndex()
        elif not isinstance(index, FrameIndex):
            index = FrameIndex(**index)
        msg = Frame(
            run=self.run,
            seq=item.seq,
            index=index,
            shape=tuple(item.pixels.shape),  # type: ignore[arg-type]
            dtype=str(item.pixels.dtype),
            timestamp=item.timestamp,
            elapsed_ms=item.elapsed_ms,
            exposure_ms=item.exposure_ms,
            metadata=item.metadata or {},
        )
        try:
            return encode(msg)[1]
        except (TypeError, ValueError, msgpack.PackException):
            # metadata that msgpack cannot carry: keep the frame, stringify the rest
            return encode(msg.model_copy(update={"metadata": jsonable(item.metadata)}))[1]

    def _spill(self) -> None:
        """Past the memory bound, move the oldest unacked frames not on the wire to disk."""
        st = self._st
        if st.in_memory_bytes <= self._memory_limit:
            return
        skipped: list[int] = []
        while st.in_memory_bytes > self._memory_limit and st.mem_order:
            seq = st.mem_order.popleft()
            entry = st.unacked.get(seq)
            if entry is None or entry.pixels is None:
                continue
            if seq in st.in_flight:
                skipped.append(seq)  # ZeroMQ holds these buffers until sent anyway
                continue
            self._spool_entry(entry)
        st.mem_order.extendleft(reversed(skipped))

    def _spool_entry(self, entry: _Entry) -> None:
        if entry.pixels is None:
            return
        if not self._spool.has_start():
            self._spool.write_start(self._start_header)
        self._spool.put(entry.seq, entry.header, entry.pixels)
        entry.pixels = None
        entry.spooled = True
        self._st.in_memory_bytes -= entry.nbytes
        self._spooled += 1
        self._spooled_now += 1

    def _drop(self, seq: int, *, delete_spool: bool = True) -> None:
        st = self._st
        entry = st.unacked.pop(seq, None)
        st.in_flight.pop(seq, None)
        if entry is None:
            return
        if entry.pixels is not None:
            st.in_memory_bytes -= entry.nbytes
            entry.pixels = None
        else:
            self._spooled_now -= 1
            if delete_spool:
                self._spool.delete(seq)
        # Acks mostly arrive in order, so the head of the spill order is what was just acked: trimming
        # it here keeps the deque at the unacked frames instead of one entry per frame of the run.
        order = st.mem_order
        while order and order[0] not in st.unacked:
            order.popleft()

    def _spool_everything(self) -> None:
        """At the end: every unacked frame (and the pending ones) to disk, with End if known."""
        self._drain_pending()
        st = self._st
        for entry in sorted(st.unacked.values(), key=lambda e: e.seq):
            self._spool_entry(entry)
        if st.unacked or self._spool.rejected():
            if not self._spool.has_start():
                self._spool.write_start(self._start_header)
            if st.end is not None:
                self._spool.write_end(encode(st.end)[1])
        else:
            self._spool.cleanup()

    def _adopt_spool(self) -> None:
        """Take over frames a previous process left in this run's spool."""
        st = self._st
        end = self._spool.read_end()
        if end is not None:
            st.end = end
        for seq in self._spool.seqs():
            try:
                spooled = self._spool.get(seq)
            except SpoolError as exc:
                self._last_error = str(exc)
                log.error("lowdose: skipping unreadable spool file: %s", exc)
                continue
            st.unacked[seq] = _Entry(seq, spooled.header, None, spooled.frame.nbytes, spooled=True)
            st.to_send.append(seq)
            self._queued += 1
            self._spooled_now += 1

    # ---------------------------------------------------------------- reporting

    def _daemon_alive(self) -> bool:
        st = self._st
        if st.last_rx == 0.0:
            return False
        return time.monotonic() - st.last_rx < self.cfg.ack_timeout_s

    def _make_report(self) -> FinishReport:
        st = self._st
        counters = self.counters()
        left = len(st.unacked)
        rejected = len(self._spool.rejected())
        end = st.end
        return FinishReport(
            run=self.run,
            reason=end.reason if end is not None else "aborted",
            frames=end.frames if end is not None else self._next_seq,
            acked=self._acked,
            unacked=left,
            rejected=max(rejected, self._rejected),
            finished=st.finished,
            spool_dir=self._spool.dir if (left or rejected) else None,
            counters=counters,
        )


_INDEX_KEYS = frozenset("tpcz")


def _fast_frame_header(run: str, item: _Item) -> bytes | None:
    """``encode(Frame(...))[1]`` without building the model, or None when unsure.

    Only plain, obviously valid frames take this path (a 2-D array of a protocol
    dtype, a dict index of non-negative ints, msgpack-able metadata); anything
    else goes through the pydantic model, which says precisely what is wrong.
    """
    pixels = item.pixels
    shape = pixels.shape
    dtype = pixels.dtype.name
    if len(shape) != 2 or dtype not in FRAME_DTYPES or not (
        0 < shape[0] <= MAX_FRAME_SIDE and 0 < shape[1] <= MAX_FRAME_SIDE
    ):
        return None
    index = item.index
    if index is None:
        index = {}
    elif isinstance(index, FrameIndex):
        index = index.model_dump()
    if type(index) is not dict or not _INDEX_KEYS.issuperset(index):
        return None
    for v in index.values():
        if type(v) is not int or v < 0:
            return None
    metadata = item.metadata if item.metadata is not None else {}
    if type(metadata) is not dict:
        return None
    header = {
        "kind": "frame",
        "run": run,
        "seq": item.seq,
        "index": {"t": index.get("t", 0), "p": index.get("p", 0), "c": index.get("c", 0), "z": index.get("z", 0)},
        "shape": [shape[0], shape[1]],
        "dtype": dtype,
        "timestamp": float(item.timestamp),
        "elapsed_ms": None if item.elapsed_ms is None else float(item.elapsed_ms),
        "exposure_ms": None if item.exposure_ms is None else float(item.exposure_ms),
        "metadata": metadata,
    }
    try:
        return msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, msgpack.PackException):
        header["metadata"] = jsonable(metadata)
        return msgpack.packb(header, use_bin_type=True)


def _spool_at_exit(ref: weakref.ref[FrameSender]) -> None:
    sender = ref()
    if sender is None or sender._done.is_set():
        return
    if sender._end_requested and sender.wait() is not None:
        return  # finished in the background within its close timeout
    log.warning("lowdose: run %s not finished at exit; unacked frames go to the spool", sender.run)
    sender.abort_to_spool(timeout=30.0)


def replay_spool(path: str | Path, cfg: HookConfig, *, timeout: float | None = None) -> list[FinishReport]:
    """Send frames left in a spool (by a crashed or timed-out hook) to the daemon.

    ``path`` is a run's spool directory or the spool root (every run under it).
    Each run is announced again with its stored ``Start``; its frames keep their
    sequence numbers; ``End`` is sent if the original run recorded one. Acked
    frames are deleted; a run's directory goes when nothing is left in it.
    """
    reports = []
    for run_dir in run_dirs(path):
        spool = Spool(run_dir.parent, run_dir.name)
        start = spool.read_start()
        seqs = spool.seqs()
        run_cfg = cfg.model_copy(update={"spool_dir": run_dir.parent})
        sender = FrameSender(run_cfg, start, first_seq=(seqs[-1] + 1) if seqs else 0, adopt_spool=True)
        end = spool.read_end()
        sender.start()
        if end is not None:
            report = sender.finish(end.reason, frames=end.frames, timeout=timeout)
        else:
            report = _drain_without_end(sender, timeout if timeout is not None else cfg.close_timeout_s)
        sender._release()
        if report is not None:
            reports.append(report)
    return reports


def _drain_without_end(sender: FrameSender, timeout: float) -> FinishReport | None:
    # The original run never ended (its process died): send what we hold, wait for
    # the acks, and leave the run open on the daemon's side.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and sender.counters().unacked > 0:
        time.sleep(0.02)
    sender.abort_to_spool(timeout=10.0)
    return sender._report


def make_run_id(prefix: str = "run") -> str:
    """A fresh run id: ``<prefix>-YYYYmmdd-HHMMSS-<6 hex>`` (valid as a store name)."""
    import re
    import uuid

    clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", prefix).strip("._-") or "run"
    return f"{clean[:96]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
