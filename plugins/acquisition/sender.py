"""The hooks' client: frames from an acquisition thread to the daemon, never lost.

:class:`FrameSender` is shared by every hook. Its contract:

* :meth:`FrameSender.submit` runs in the acquisition thread and does O(1) work:
  it numbers the frame, appends a reference to it to an in-process queue and
  returns. No I/O, no copy, no lock contention with the network (rule 1 of
  ``docs/design.md``; the queue is :class:`~.handoff.Handoff`).
* One sender thread owns the DEALER socket (:class:`~.connection.DaemonConnection`).
  It announces the run (``Start``), sends frames zero-copy with at most
  ``window_frames`` unacknowledged on the wire, and drops a frame only when an
  ``Ack`` says it is durably written (rule 2). Unacked frames past ``memory_mb``
  go to the run's :class:`Spool` on local disk, oldest first, and are read back
  for resending (the bookkeeping is :class:`~.unacked.UnackedFrames`).
* A daemon that stays silent for ``ack_timeout_s`` while something is
  outstanding is presumed dead: the socket is closed and recreated (the Lazy
  Pirate pattern of the ZeroMQ guide) and ``Start`` plus every unacked frame is
  sent again. A daemon that restarted and answers ``unknown_run`` gets the same, and so does
  one that answers with a new instance id (it restarted quickly and resumed the run).
  Resends reuse sequence numbers; the daemon's writes are idempotent by seq.
* A frame the daemon refuses for good (any code not in ``TRANSIENT_ERRORS``) is
  counted as rejected and kept in the spool's ``rejected/`` folder; it is never resent.
* :meth:`FrameSender.finish` sends ``End`` after every frame and waits up to
  ``close_timeout_s`` for the acks; whatever is still unacked is written to the
  spool (where :func:`replay_spool` can send it later) and reported.

This module is the run's state machine (:class:`SenderPhase`) and the thread that drives the parts;
each part does one job and is tested on its own.
"""

from __future__ import annotations

import atexit
import logging
import math
import re
import threading
import time
import uuid
import weakref
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from lowdose.wire.frame_header import FrameFields, encode_frame_header
from lowdose.wire.hook_config import HookConfig
from lowdose.wire.protocol import (
    TRANSIENT_ERRORS,
    Ack,
    End,
    Error,
    ErrorCode,
    new_owner_token,
    FrameIndex,
    ProtocolError,
    Start,
    encode,
)

from .connection import DaemonConnection
from .handoff import EndRequest, Handoff
from .spool import Spool, SpoolError, run_dirs
from .unacked import UnackedFrames

log = logging.getLogger(__name__)

_RETRY_DELAY_S = 0.5  # after a transient error: the daemon's disk or queue needs a moment
# Re-announcing a run at most this often: a daemon that cannot open the run answers
# every frame with unknown_run, and each answer must not cost a full resend.
_RESTART_MIN_INTERVAL_S = 1.0


class SenderPhase(str, Enum):
    """Where a run stands on the sender thread; only that thread changes it.

    ``announcing -> streaming``: the socket took the ``Start``. ``streaming -> ending``: the end
    was requested and no frame waits to be sent, and the socket took the ``End``.
    ``ending -> settled``: nothing is unacked and the daemon confirmed the end (or
    ``2 x ack_timeout_s`` passed without it). Any of the first three goes back to ``announcing``
    when a new session begins (the daemon went silent: a new socket; it answered ``unknown_run``;
    or a new daemon instance answered), and to ``abandoned`` on the close timeout, :meth:`FrameSender.abort_to_spool`
    or a failure of the thread. ``settled`` and ``abandoned`` are final.
    """

    ANNOUNCING = "announcing"  # Start not yet on the wire in this session
    STREAMING = "streaming"  # Start sent; frames go out, End not yet
    ENDING = "ending"  # End sent: waiting for the last acks and the daemon's confirmation
    SETTLED = "settled"  # stopped with nothing at risk: every frame acked or rejected
    ABANDONED = "abandoned"  # stopped early (close timeout, abort, failure): the rest is in the spool

    def __str__(self) -> str:
        return self.value


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
    restarts: int  # runs re-announced: the daemon answered unknown_run, or a new daemon instance answered
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
class _Tally:
    """What the sender thread counts (and only it writes); read for :class:`SenderCounters`."""

    adopted: int = 0  # frames taken over from an earlier process's spool
    sent: int = 0
    resent: int = 0
    acked: int = 0
    rejected: int = 0
    restarts: int = 0
    last_ack_time: float | None = None
    daemon: str = ""
    last_error: str | None = None


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
        self.run = start.run
        self._spool = Spool(cfg.spool_dir, start.run, fsync=cfg.spool_fsync if spool_fsync is None else spool_fsync)
        self._adopt = adopt_spool
        if start.owner is None:
            # Drawn once per run and kept in the spool's start.msgpack with the rest of the Start, so a
            # reconnect, a restarted daemon and a later replay_spool all prove the same ownership.
            start = start.model_copy(update={"owner": self._spooled_owner() or new_owner_token()})
        self.start_msg = start
        self._handoff = Handoff(start.run, first_seq)  # the acquisition thread's side
        # the sender thread's side: only that thread writes these once it runs
        self._ledger = UnackedFrames(self._spool, encode(start)[1], int(cfg.memory_mb * 1024 * 1024))
        self._conn = DaemonConnection(cfg, start.run)
        self._tally = _Tally()
        self._stop_now = threading.Event()  # abandon sending: spool everything and stop
        self._orphan_lock = threading.Lock()  # the sender thread's last spooling vs. late submits
        self._driver = _Driver(cfg, start, self._handoff, self._ledger, self._conn, self._tally, self._stop_now)

        self._ctx: zmq.Context | None = None
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
        wake = self._handoff.open(self._ctx)
        self._thread = threading.Thread(
            target=self._thread_main, args=(wake,), name=f"lowdose-sender-{self.run}", daemon=True
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
        seq = self._handoff.submit(pixels, index, ts, elapsed_ms, exposure_ms, metadata)
        if self._handoff.orphaned:
            self._keep_orphans()
        return seq

    def _keep_orphans(self) -> None:
        """The sender thread died (or stopped) before this frame: write it to the spool here.

        Disk I/O in the acquisition thread breaks rule 1, but only once the sender is gone, when
        the alternative is losing the frame (rule 2 wins); the report then counts it as unacked.
        """
        with self._orphan_lock:
            try:
                self._driver.spool_all()
            except Exception as exc:  # the frame stays in RAM, and the report says so
                log.exception("could not spool a frame of run %s after its sender stopped", self.run)
                self._tally.last_error = f"spooling after the sender stopped failed: {exc!r}"
            if self._done.is_set():
                self._report = self._make_report()

    def finish(self, reason: str = "finished", *, frames: int | None = None, wait: bool = True,
               timeout: float | None = None) -> FinishReport | None:
        """End the run: ``End`` goes after every submitted frame.

        With ``wait`` (default), blocks up to ``timeout`` (default
        ``close_timeout_s``) for the acks and returns the report; otherwise the
        sender thread finishes in the background (see :meth:`wait`).
        """
        self.start()
        self._handoff.request_end(reason, frames, self.cfg.close_timeout_s if timeout is None else timeout)
        return self.wait(timeout) if wait else None

    def wait(self, timeout: float | None = None) -> FinishReport | None:
        """Wait for the sender thread to finish (after :meth:`finish`); the report, or None."""
        grace = (self.cfg.close_timeout_s if timeout is None else timeout) + 5.0
        if self._thread is not None and not self._done.wait(grace):
            return None
        return self._report

    def close(self, timeout: float | None = None, *, reason: str = "finished") -> FinishReport | None:
        """Finish the run (if not yet) and release sockets; returns the report."""
        report = self.wait(timeout) if self.end_requested else self.finish(reason, timeout=timeout)
        self._release()
        return report

    def abort_to_spool(self, timeout: float = 10.0) -> None:
        """Stop sending now; every unacked frame is written to the spool for a later replay."""
        self._stop_now.set()
        self._handoff.ring()
        if self._thread is not None:
            self._done.wait(timeout)
        self._release()

    # ---------------------------------------------------------------- state

    @property
    def phase(self) -> SenderPhase:
        """Where the run stands on the sender thread (see :class:`SenderPhase`)."""
        return self._driver.phase

    @property
    def end_requested(self) -> bool:
        """:meth:`finish` (or :meth:`close`) was called: no frame can be submitted any more."""
        return self._handoff.end_requested

    @property
    def spool_dir(self) -> Path:
        return self._spool.dir

    @property
    def next_seq(self) -> int:
        return self._handoff.next_seq

    def counters(self) -> SenderCounters:
        t, led, handoff = self._tally, self._ledger, self._handoff
        return SenderCounters(
            run=self.run,
            queued=handoff.queued + t.adopted,
            sent=t.sent,
            resent=t.resent,
            acked=t.acked,
            spooled=led.spooled,
            spooled_now=led.spooled_now,
            rejected=t.rejected,
            unacked=handoff.queued + t.adopted - t.acked - t.rejected,
            in_memory_bytes=led.in_memory_bytes + handoff.pending_bytes,
            in_flight=len(led.in_flight),
            reconnects=self._conn.reconnects,
            restarts=t.restarts,
            daemon_alive=self._conn.alive(time.monotonic()),
            last_ack_time=t.last_ack_time,
            daemon=t.daemon,
            last_error=t.last_error,
        )

    def _release(self) -> None:
        if self._atexit is not None and (self._thread is None or self._done.is_set()):
            atexit.unregister(self._atexit)
            self._atexit = None

    def _spooled_owner(self) -> str | None:
        """The owner token of an earlier process's Start for this run, when adopting its spool."""
        if not (self._adopt and self._spool.has_start()):
            return None
        try:
            return self._spool.read_start().owner
        except SpoolError:
            return None

    def _adopt_spool(self) -> None:
        """Take over frames a previous process left in this run's spool."""
        end = self._spool.read_end()
        if end is not None:
            self._driver.end = end
        adopted, errors = self._ledger.adopt()
        self._tally.adopted += adopted
        if errors:
            self._tally.last_error = errors[-1]

    # ---------------------------------------------------------------- sender thread

    def _thread_main(self, wake: zmq.Socket) -> None:
        try:
            self._driver.run_thread(self._ctx, wake)  # type: ignore[arg-type]
        except Exception as exc:  # the thread must leave the frames safe whatever happens
            log.exception("lowdose sender for run %s failed", self.run)
            self._tally.last_error = f"sender thread failed: {exc!r}"
            self._driver.phase = SenderPhase.ABANDONED
        finally:
            with self._orphan_lock:
                # from here on a producer keeps what it submits (see _keep_orphans): none is dropped
                self._handoff.orphan()
                try:
                    self._driver.spool_all()
                except Exception as exc:
                    log.exception("could not spool the unacked frames of run %s", self.run)
                    self._tally.last_error = f"spooling at close failed: {exc!r}"
            self._conn.close()
            self._handoff.close()
            if self._ctx is not None:
                self._ctx.term()  # every socket of this context is closed by now
                self._ctx = None
            with self._orphan_lock:
                self._report = self._make_report()
                self._done.set()

    # ---------------------------------------------------------------- reporting

    def _make_report(self) -> FinishReport:
        counters = self.counters()
        left = len(self._ledger)
        rejected = len(self._spool.rejected())
        end = self._driver.end
        return FinishReport(
            run=self.run,
            reason=end.reason if end is not None else "aborted",
            frames=end.frames if end is not None else self._handoff.next_seq,
            acked=self._tally.acked,
            unacked=left,
            rejected=max(rejected, self._tally.rejected),
            finished=self._driver.end_confirmed,
            spool_dir=self._spool.dir if (left or rejected) else None,
            counters=counters,
        )


class _Driver:
    """The sender thread's state machine: what to send next, and what each reply means.

    It owns the run's :class:`SenderPhase` and session and moves the parts: frames from the
    :class:`Handoff` into the :class:`UnackedFrames`, from there onto the :class:`DaemonConnection`,
    and acks and errors back. Only the sender thread calls it; :class:`FrameSender` reads
    ``phase``, ``end`` and ``end_confirmed`` for its report.
    """

    def __init__(self, cfg: HookConfig, start: Start, handoff: Handoff, ledger: UnackedFrames,
                 conn: DaemonConnection, tally: _Tally, stop_now: threading.Event) -> None:
        self.cfg = cfg
        self.start_msg = start
        self.run = start.run
        self._handoff = handoff
        self._ledger = ledger
        self._conn = conn
        self._tally = tally
        self._stop_now = stop_now
        self.phase = SenderPhase.ANNOUNCING
        self.session = 0  # bumped whenever what is on the wire no longer counts
        self.end: End | None = None
        self.end_confirmed = False  # the daemon said every frame up to End is written
        self._deadline: float | None = None  # from the end request: when to stop waiting for acks
        self._settle_since: float | None = None  # all acked, End sent, confirmation still missing
        self._restart_due = False
        self._owner_refused = False  # the daemon said our start is not the run's owner: final
        self._last_restart = -math.inf
        self._retry_at = 0.0
        self._daemons_seen: set[str] = set()  # instance ids that have answered this run
        self._finished_heard = False  # a daemon said every frame up to the run's end is written

    def run_thread(self, ctx: zmq.Context, wake: zmq.Socket) -> None:
        self._conn.open(ctx, wake, self.session)
        self._loop()

    def spool_all(self) -> None:
        """The thread is stopping: whatever is unacked (or not yet taken) goes to the spool."""
        self._drain_pending()
        self._ledger.spool_all(encode(self.end)[1] if self.end is not None else None)

    def _loop(self) -> None:
        """Turn after turn: take new frames, spill, send, then stop, reconnect or sleep."""
        while not self._stop_now.is_set():
            self._drain_pending()
            self._ledger.spill()
            self._send_some()
            now = time.monotonic()
            if self._settled(now) or self._past_deadline(now):
                return
            if self._restart_due and now - self._last_restart >= _RESTART_MIN_INTERVAL_S:
                self._tally.restarts += 1
                self._restart_session()
            if self.phase is not SenderPhase.ANNOUNCING:
                self._conn.maybe_heartbeat(now)
            if self._conn.silent_too_long(now):
                # Lazy Pirate: the daemon is gone (or the connection is): a fresh
                # socket, then Start and every unacked frame again.
                self._restart_session()
                self._conn.reconnect(self.session)
                continue
            self._sleep(now)
        self.phase = SenderPhase.ABANDONED

    def _settled(self, now: float) -> bool:
        """ENDING with nothing unacked becomes SETTLED once the daemon confirms the end, or after
        a short grace without the confirmation: no frame is at risk any more either way."""
        if self.phase is not SenderPhase.ENDING or len(self._ledger):
            return False
        if not self.end_confirmed:
            self._settle_since = self._settle_since or now
            if now - self._settle_since <= 2 * self.cfg.ack_timeout_s:
                return False
            self._tally.last_error = self._tally.last_error or "the daemon did not confirm the end of the run"
        self.phase = SenderPhase.SETTLED
        return True

    def _past_deadline(self, now: float) -> bool:
        if self._deadline is None or now < self._deadline:
            return False
        self._tally.last_error = self._tally.last_error or "close timeout: unacked frames left in the spool"
        self.phase = SenderPhase.ABANDONED
        return True

    def _sleep(self, now: float) -> None:
        """Wait for the daemon, a new frame or the next thing due (heartbeat, retry, deadline)."""
        timeout_s = self._conn.wait_limit(now)
        if self._deadline is not None:
            timeout_s = min(timeout_s, self._deadline - now)
        if self._retry_at > now and self._ledger.to_send:
            timeout_s = min(timeout_s, self._retry_at - now)
        if not self._handoff.going_idle() or self._stop_now.is_set():
            self._handoff.awake()
            timeout_s = 0
        readable, rang = self._conn.poll(timeout_s)
        self._handoff.awake()
        if rang:
            self._handoff.clear_doorbell()
        if readable:
            self._receive()

    def _restart_session(self) -> None:
        """Forget what is on the wire: Start, every unacked frame and End go again."""
        self.session += 1
        self.phase = SenderPhase.ANNOUNCING
        self._ledger.resend_all()
        self._conn.forget_wait()
        self._last_restart = time.monotonic()
        self._restart_due = False
        self._settle_since = None

    # ---------------------------------------------------------------- frames in and out

    def _drain_pending(self) -> None:
        for item in self._handoff.take():
            if isinstance(item, EndRequest):
                frames = self._handoff.next_seq if item.frames is None else item.frames
                self.end = End(run=self.run, frames=frames, reason=item.reason)  # type: ignore[arg-type]
                self._deadline = item.deadline
            else:
                self._accept(item)

    def _accept(self, item: FrameFields) -> None:
        try:
            header = encode_frame_header(self.run, item)
        except Exception as exc:
            # Unsendable (a shape or dtype the protocol does not carry): keep it on
            # disk as rejected so the raw data still exists, and say so.
            self._tally.rejected += 1
            self._tally.last_error = f"seq {item.seq}: not sendable: {exc}"
            log.error("lowdose: frame %d of run %s cannot be sent: %s", item.seq, self.run, exc)
            self._ledger.keep_unsendable(item.seq, item.pixels, str(exc))
            return
        self._ledger.accept(item.seq, header, item.pixels)

    def _send_some(self) -> None:
        """Start first (in ANNOUNCING), then frames up to the window, then End once none is left."""
        conn = self._conn
        if self.phase is SenderPhase.ANNOUNCING:
            if not conn.send(encode(self.start_msg)):
                return
            self.phase = SenderPhase.STREAMING
        if not self._send_frames():
            return
        if self.phase is SenderPhase.STREAMING and self.end is not None and not self._ledger.to_send:
            if conn.send(encode(self.end)):
                self.phase = SenderPhase.ENDING
                self.end_confirmed = self.end_confirmed or self._finished_heard

    def _send_frames(self) -> bool:
        """Fill the window; False if the socket had no room for a frame."""
        led, tally = self._ledger, self._tally
        now = time.monotonic()
        if now < self._retry_at:
            return True
        while len(led.in_flight) < self.cfg.window_frames:
            entry = led.next_to_send()
            if entry is None:
                break
            try:
                parts = led.frame_parts(entry)
            except SpoolError as exc:
                # A spool file we cannot read can never be delivered: say so loudly.
                tally.last_error = f"seq {entry.seq}: {exc}"
                log.error("lowdose: spooled frame unreadable, it cannot be resent: %s", exc)
                led.drop(entry.seq)
                tally.rejected += 1
                continue
            if not self._conn.send(parts):
                return False
            led.mark_sent(entry, self.session, now)
            tally.sent += 1
            if entry.sends > 1:
                tally.resent += 1
        return True

    # ---------------------------------------------------------------- replies

    def _receive(self) -> None:
        for msg in self._conn.receive():
            if isinstance(msg, ProtocolError):
                self._tally.last_error = f"bad reply from daemon: {msg}"
                continue
            self._note_daemon(getattr(msg, "daemon", None))
            if isinstance(msg, Ack):
                self._on_ack(msg)
            elif isinstance(msg, Error):
                self._on_error(msg)
            # Heartbeats and status replies only prove the daemon alive, which the connection has
            # noted; any other kind a daemon should not send, and it is ignored.

    def _note_daemon(self, daemon: str | None) -> None:
        """A reply from a daemon instance never heard before, after another one: re-announce and resend.

        The new process lost whatever was in flight to the old one without saying so: it resumes the
        run from its records (no unknown_run) and answers heartbeats at once, so the ack timeout never
        runs out. Only its id tells, and waiting on the lost acks would hold the window shut for good
        (rule 2). Ids already seen are ignored: a late reply from the old process is no new restart.
        """
        if not daemon or daemon == self._tally.daemon:
            return
        previous, self._tally.daemon = self._tally.daemon, daemon
        if daemon in self._daemons_seen:
            return
        self._daemons_seen.add(daemon)
        if previous:
            self._tally.restarts += 1
            log.warning("lowdose: daemon %s replaced by %s: re-announcing run %s with every unacked frame",
                        previous, daemon, self.run)
            self._restart_session()

    def _on_ack(self, msg: Ack) -> None:
        if msg.run != self.run:
            return
        self._tally.last_ack_time = time.time()
        for first, last in msg.ranges:
            self._tally.acked += self._ledger.ack(first, last)
        if msg.finished:
            # Also before our End is out: a restarted daemon that resumed the run complete says so in
            # its reply to the Start, and the End sent after it gets no second confirmation.
            self._finished_heard = True
            if self.phase is SenderPhase.ENDING:
                self.end_confirmed = True

    def _on_error(self, msg: Error) -> None:
        if msg.run is not None and msg.run != self.run:
            return
        self._tally.last_error = f"{msg.code}: {msg.reason}"
        if msg.code == ErrorCode.UNKNOWN_RUN:
            self._on_unknown_run(msg.seq)
            return
        if msg.code == ErrorCode.NOT_OWNER:
            if msg.seq is None:
                # our own start was refused: the run id is another client's; our frames stay ours
                self._owner_refused = True
                log.error("lowdose: daemon refused run %s: %s", self.run, self._tally.last_error)
            if msg.seq is not None and not self._owner_refused:
                # the daemon does not know this connection as the run's (it restarted, or we
                # reconnected): announce again with our token, then resend
                self._on_unknown_run(msg.seq)
                return
        seq = msg.seq
        if seq is None or seq not in self._ledger:
            if seq is None and self.phase is SenderPhase.ENDING and msg.code not in TRANSIENT_ERRORS:
                log.error("lowdose: daemon refused run %s: %s", self.run, self._tally.last_error)
            return
        if msg.code in TRANSIENT_ERRORS:
            self._ledger.requeue(seq)
            self._retry_at = time.monotonic() + _RETRY_DELAY_S
            return
        log.error("lowdose: daemon rejected frame %d of run %s: %s", seq, self.run, self._tally.last_error)
        self._ledger.reject(seq, self._tally.last_error)
        self._tally.rejected += 1

    def _on_unknown_run(self, seq: int | None) -> None:
        """The daemon does not know the run (it restarted): announce it again, with every frame."""
        if seq is not None:
            entry = self._ledger.get(seq)
            if entry is None or entry.session < self.session:
                return  # about a frame sent before we already re-announced the run
        if time.monotonic() - self._last_restart < _RESTART_MIN_INTERVAL_S:
            self._restart_due = True  # again soon, not once per reply
            return
        self._tally.restarts += 1
        log.warning("lowdose: daemon does not know run %s (restarted?): resending", self.run)
        self._restart_session()


def _spool_at_exit(ref: weakref.ref[FrameSender]) -> None:
    sender = ref()
    if sender is None or sender._done.is_set():
        return
    if sender.end_requested and sender.wait() is not None:
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
    clean = re.sub(r"[^A-Za-z0-9_.\-]", "_", prefix).strip("._-") or "run"
    return f"{clean[:96]}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
