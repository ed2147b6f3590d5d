"""The lowdose daemon: one ROUTER socket for every microscope, three threads.

* I/O thread (this module): receives and validates messages, answers heartbeats
  and status requests, queues frames for writing, forwards replies from the
  other threads. It stops reading the socket while the write queue is full, so
  memory stays bounded and frames wait on the hook's side instead.
* write loop (``write_loop.py``): raw frames to disk, then acks.
* restore loop (``restore_loop.py``): batches to the denoiser, restored frames
  to disk, previews to viewers, backfill, finalization.

A supervisor (``supervisor.py``) watches the three: if one dies, the daemon closes
its ROUTER (no more heartbeats) and :func:`serve` raises :class:`DaemonFailed`, so
``lowdose serve`` exits non-zero for a service manager to restart it (rule 2).
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
import uuid
from typing import Callable

import zmq

from lowdose import __version__
from lowdose.plugins.denoisers.interface import Denoiser
from lowdose.plugins.denoisers.registry import create_denoiser, resolve_device

from .config import LowdoseConfig
from .dashboard import Dashboard, PreviewMailbox, start_dashboard
from .metrics import DaemonMetrics, RunCounters
from lowdose.wire.protocol import (
    Ack,
    End,
    Error,
    ErrorCode,
    Frame,
    Heartbeat,
    ProtocolError,
    Start,
    StatusReply,
    StatusRequest,
    decode,
    encode,
    frame_pixels,
    owner_digest,
)
from .admission import finished_run_reply, frame_refusal
from .resume import reopen_if_idle, resume_unfinished
from .restore_loop import RestoreLoop
from .runs import FinishedRun, RunRegistry, RunState
from .scheduler import Scheduler
from .status import status_reply
from .sockets import DaemonError, bind_router
from .supervisor import DaemonFailed, LoopDeath, LoopThread, Supervisor
from .write_loop import EndReceived, Received, WriteLoop
from .store import RunStore, StoreError

log = logging.getLogger("lowdose.daemon")

MAX_MESSAGES_PER_POLL = 64

__all__ = ["Daemon", "DaemonError", "DaemonFailed", "serve"]


class Daemon:
    """Serve hooks until :meth:`stop` or until a loop dies (then ``failure`` says which).

    Usable in-process (tests) or via :func:`serve`.
    """

    def __init__(self, cfg: LowdoseConfig, denoiser_factory: Callable[[], Denoiser] | None = None):
        self.cfg = cfg
        self.id = uuid.uuid4().hex[:12]
        self.started_at = time.time()
        self.metrics = DaemonMetrics()
        self.runs = RunRegistry(keep_finished=cfg.storage.keep_finished_runs)
        self.scheduler = Scheduler(
            batch_size=cfg.restore.batch_size,
            queue_frames=cfg.restore.queue_frames,
            default_policy=cfg.restore.policy,
        )
        self.device = resolve_device(cfg.restore.device)
        self._denoiser_factory = denoiser_factory or (
            lambda: create_denoiser(cfg.restore.denoiser, cfg.restore.denoiser_options, device=self.device)
        )
        self.ctx = zmq.Context()
        self._outbox_address = f"inproc://lowdose-outbox-{self.id}"
        self._inbox: queue.Queue = queue.Queue(maxsize=cfg.storage.write_queue_frames)
        self._stop = threading.Event()
        self._io_thread: LoopThread | None = None
        self._router: zmq.Socket | None = None
        self._pull: zmq.Socket | None = None
        self._auth = None
        self._peer_key: str | None = None  # CURVE key of the message being handled (I/O thread only)
        self.write_loop: WriteLoop | None = None
        self.restore_loop: RestoreLoop | None = None
        self.supervisor = Supervisor(self._fail)
        self.failure: LoopDeath | None = None  # set once a loop died: the daemon no longer answers
        self.failed = threading.Event()
        self._run_cz: dict[str, tuple[int, int]] = {}  # run -> (C, Z) its frames reached: see _frame_refusal
        self.previews = PreviewMailbox()  # newest frames, offered by the loops, rendered by the dashboard
        self.dashboard: Dashboard | None = None

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        self.cfg.storage.output_dir.mkdir(parents=True, exist_ok=True)
        self.restore_loop = RestoreLoop(
            ctx=self.ctx,
            denoiser_factory=self._denoiser_factory,
            runs=self.runs,
            scheduler=self.scheduler,
            metrics=self.metrics,
            restore_cfg=self.cfg.restore,
            server_cfg=self.cfg.server,
            idle_close_s=self.cfg.storage.idle_close_s,
            previews=self.previews,
        )
        self.restore_loop.start()
        self.restore_loop.ready.wait()
        if self.restore_loop.startup_error is not None:
            self.ctx.term()
            raise DaemonError(
                f"cannot build denoiser {self.cfg.restore.denoiser!r}: {self.restore_loop.startup_error}"
            )
        self._resume_unfinished()
        self._pull = self.ctx.socket(zmq.PULL)
        self._pull.bind(self._outbox_address)
        try:
            self._router, self._auth = bind_router(self.ctx, self.cfg.server)
        except DaemonError:
            self.restore_loop.stopping.set()
            self.restore_loop.join(10)
            self._pull.close(linger=0)
            self.ctx.term()
            raise
        self.write_loop = WriteLoop(
            ctx=self.ctx,
            outbox_address=self._outbox_address,
            inbox=self._inbox,
            runs=self.runs,
            scheduler=self.scheduler,
            metrics=self.metrics,
            daemon_id=self.id,
            previews=self.previews,
        )
        self.write_loop.start()
        if self.cfg.metrics.port:
            self.metrics.serve_http(self.cfg.metrics.port, self.cfg.metrics.address)
        self.dashboard = start_dashboard(self.cfg.dashboard, self.status, self.previews)
        self._io_thread = LoopThread(name="lowdose-io", role="I/O thread", target=self._io_loop)
        self._io_thread.start()
        self.supervisor.watch(self.restore_loop, self.write_loop, self._io_thread)
        self.supervisor.start()
        log.info("lowdose daemon %s listening on %s (denoiser %s on %s)", self.id,
                 ", ".join(self.cfg.server.endpoints), self.cfg.restore.denoiser, self.device)

    def _resume_unfinished(self) -> None:
        for state in resume_unfinished(self.cfg.storage, self.cfg.restore.policy):
            self.runs.add(state)  # complete before the restore loop can see it
            self.scheduler.add_run(state.run)
        self.metrics.active_runs.set(len(self.runs.active()))

    def stop(self, timeout: float = 60.0) -> None:
        """Stop receiving, write everything already received, finish the current batch."""
        self.supervisor.stop()  # loops that end from here on were asked to
        self._stop.set()
        if self.dashboard is not None:
            self.dashboard.stop()
        if self._io_thread is not None:
            self._io_thread.join(timeout)
        if self.write_loop is not None:
            self.write_loop.stopping.set()
            self.write_loop.join(timeout)
        if self.restore_loop is not None:
            self.restore_loop.stopping.set()
            self.scheduler.close()
            self.restore_loop.join(timeout)
        for state in self.runs.active():
            try:
                state.store.close()
            except Exception:  # closing must not hide the other runs
                log.exception("closing store of run %s", state.run)
        for sock in (self._router, self._pull):
            if sock is not None:
                sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self.ctx.term()

    def _fail(self, death: LoopDeath) -> None:
        """The supervisor saw a loop die: stop answering now; the stores stay as their records say."""
        self.failure = death
        self.failed.set()
        self._stop.set()  # the I/O thread closes the ROUTER when it sees this (a dead one cannot)

    def wait_idle(self, timeout: float) -> bool:
        """True once every run that ended is finished (tests and `demo` use this)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = self.runs.all()
            if runs and all(r.finished or r.end is None for r in runs) and any(r.finished for r in runs):
                return True
            time.sleep(0.05)
        return False

    # -- sockets ----------------------------------------------------------------------

    def _io_loop(self) -> None:
        assert self._router is not None and self._pull is not None
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._router, zmq.POLLIN)
        reading = True
        last_busy_beat = 0.0
        while not self._stop.is_set():
            full = self._inbox.full()
            if full and reading:
                poller.modify(self._router, 0)
                reading = False
            elif not full and not reading:
                poller.modify(self._router, zmq.POLLIN)
                reading = True
            if not reading and time.monotonic() - last_busy_beat >= self.cfg.server.heartbeat_s:
                # Hooks hear nothing while we do not read: without a sign of life they would take us
                # for dead, reconnect and resend every unacked frame, adding load to a full queue.
                for state in self.runs.active():
                    self._reply(state.identity, Heartbeat(run=state.run, daemon=self.id))
                last_busy_beat = time.monotonic()
            events = dict(poller.poll(20 if not reading else 100))
            if self._pull in events:
                self._forward_replies()
            if self._router in events:
                for _ in range(MAX_MESSAGES_PER_POLL):
                    if self._inbox.full() or self.failed.is_set():  # failed: not one more answer
                        break
                    try:
                        parts = self._router.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._peer_key = client_key(self._auth, parts[0])
                    self._handle(parts[0].bytes, parts[1:])
        if self.failed.is_set():
            # Silence, at once: a hook that still hears us would wait for acks that never come
            # instead of resending to the daemon that replaces us (rule 2).
            self._router.close(linger=0)
            return
        self._forward_replies()

    def _forward_replies(self) -> None:
        assert self._router is not None and self._pull is not None
        while True:
            try:
                parts = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                self._router.send_multipart(parts, zmq.NOBLOCK)
            except zmq.ZMQError:
                pass  # that hook is gone; it will resend and get a fresh reply

    def _reply(self, identity: bytes, msg) -> None:
        assert self._router is not None
        try:
            self._router.send_multipart([identity, *encode(msg)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    # -- message handling ---------------------------------------------------------------

    def _handle(self, identity: bytes, parts: list) -> None:
        """Answer one message. Whatever goes wrong with it is that client's answer, never the I/O
        thread's death: rule 5 says a bad message is refused and every other microscope still served."""
        msg = None
        try:
            msg, payload = decode(parts)
            self._dispatch(identity, msg, payload, parts)
        except ProtocolError as exc:
            self.metrics.messages_rejected.labels(exc.code).inc()
            log.warning("rejected message from %r: %s", identity[:64], exc)
            self._reply(identity, Error(code=exc.code, reason=exc.reason, run=exc.run, seq=exc.seq, daemon=self.id))
        except Exception as exc:
            # A bug met on this message: a store nobody could write is the daemon's to report, but
            # this thread keeps serving (the data path, the write and restore loops, still dies loudly).
            log.exception("internal error on a message from %r", identity[:64])
            self.metrics.messages_rejected.labels(ErrorCode.INTERNAL).inc()
            run = getattr(msg, "run", None)
            seq = getattr(msg, "seq", None) if isinstance(msg, Frame) else None
            self._reply(identity, Error(code=ErrorCode.INTERNAL, run=run if isinstance(run, str) else None, seq=seq,
                                        daemon=self.id, reason=f"the daemon failed on this message "
                                        f"({type(exc).__name__}: {exc}); it is logged there: report it"))

    def _dispatch(self, identity: bytes, msg, payload, parts: list) -> None:
        if isinstance(msg, Frame):
            self._on_frame(identity, msg, payload, parts[2])
        elif isinstance(msg, Start):
            self._on_start(identity, msg)
        elif isinstance(msg, End):
            self._on_end(identity, msg)
        elif isinstance(msg, Heartbeat):
            if msg.run is not None and self.runs.get(msg.run) is None:
                self._unknown_run(identity, msg.run, None)
            else:
                self._reply(identity, Heartbeat(run=msg.run, daemon=self.id))
        elif isinstance(msg, StatusRequest):
            self._reply(identity, StatusReply(daemon=self.id, status=self.status()))
        else:
            self.metrics.messages_rejected.labels(ErrorCode.UNEXPECTED_KIND).inc()
            self._reply(identity, Error(code=ErrorCode.UNEXPECTED_KIND, daemon=self.id,
                                        reason=f"a daemon does not accept {msg.kind!r} messages"))

    def _unknown_run(self, identity: bytes, run: str, seq: int | None) -> None:
        self._reply(
            identity,
            Error(
                code=ErrorCode.UNKNOWN_RUN,
                reason=f"run {run!r} has not been started on this daemon (send start first)",
                run=run,
                seq=seq,
                daemon=self.id,
            ),
        )

    def _on_start(self, identity: bytes, start: Start) -> None:
        state = self.runs.get(start.run)
        if state is not None:
            if (state.start.shape, state.start.dtype) != (start.shape, start.dtype):
                self._reply(identity, Error(code=ErrorCode.START_MISMATCH, run=start.run, daemon=self.id,
                                            reason=f"run {start.run!r} already exists with frames "
                                                   f"{state.start.shape} {state.start.dtype}; use a new run id"))
                return
            refusal = state.admit(identity, start, self._peer_key)
            if refusal is not None:
                self._not_owner(identity, start.run, None, refusal)
                return
            if isinstance(state, FinishedRun):
                self._reply(identity, Ack(run=start.run, ranges=list(state.ranges), daemon=self.id, finished=True))
                return
            if not self._ensure_open(state, identity):
                return
        else:
            # The store keeps only a digest of the owner token (bound to the CURVE key): reading
            # the store must not let anyone take the run over.
            start = start.model_copy(update={"owner": owner_digest(start.owner, self._peer_key)})
            try:
                store = RunStore.open(
                    self.cfg.storage.output_dir, start, self.cfg.storage, __version__, policy=self.cfg.restore.policy
                )
            except StoreError as exc:
                self._reply(identity, Error(code=ErrorCode.STORE_FAILED, reason=str(exc), run=start.run,
                                            daemon=self.id))
                return
            counters = RunCounters(
                run=start.run, instrument=start.instrument, store=str(store.path), policy=self.cfg.restore.policy
            )
            state = RunState(start=start, store=store, identity=identity, counters=counters,
                             owner_key=self._peer_key)
            self.runs.add(state)
            self.scheduler.add_run(start.run)
            self.metrics.active_runs.set(len(self.runs.active()))
            log.info("run %s started by %s (%s) -> %s", start.run, start.instrument, start.source, store.path)
        # tell the hook what is already stored (after a daemon restart it can drop those frames)
        stored = state.store.raw_seq_ranges()
        self._reply(identity, Ack(run=start.run, ranges=stored, daemon=self.id, finished=state.raw_complete))

    def _on_frame(self, identity: bytes, frame: Frame, payload, zmq_part) -> None:
        state = self.runs.get(frame.run)
        if state is None:
            self._unknown_run(identity, frame.run, frame.seq)
            return
        if (tuple(frame.shape), frame.dtype) != (tuple(state.start.shape), state.start.dtype):
            self.metrics.messages_rejected.labels(ErrorCode.SHAPE_MISMATCH).inc()
            self._reply(identity, Error(code=ErrorCode.SHAPE_MISMATCH, run=frame.run, seq=frame.seq, daemon=self.id,
                                        reason=f"frame is {tuple(frame.shape)} {frame.dtype} but run started with "
                                               f"{tuple(state.start.shape)} {state.start.dtype}"))
            return
        if not self._admitted(identity, state, frame.seq):
            return
        refusal = frame_refusal(state, frame, self._run_cz)
        if refusal is not None:
            code, reason = refusal
            self.metrics.messages_rejected.labels(code).inc()
            self._reply(identity, Error(code=code, run=frame.run, seq=frame.seq, daemon=self.id, reason=reason))
            return
        now = time.time()
        c = state.counters
        c.frames_received += 1
        c.first_frame_at = c.first_frame_at or now
        c.last_frame_at = now
        self.metrics.frames_received.labels(frame.run).inc()
        pixels = frame_pixels(frame, payload)
        self._inbox.put(Received(frame=frame, pixels=pixels, received_at=time.monotonic(), keepalive=zmq_part))

    def _on_end(self, identity: bytes, end: End) -> None:
        state = self.runs.get(end.run)
        if state is None:
            self._unknown_run(identity, end.run, None)
            return
        if not self._admitted(identity, state, None):
            return
        try:
            # durable before the write loop can answer finished (rule 2); a restarted daemon reads it back
            state.store.record_end(end)
        except StoreError as exc:
            self._reply(identity, Error(code=ErrorCode.STORE_FAILED, reason=str(exc), run=end.run, daemon=self.id))
            return
        self._inbox.put(EndReceived(end=end))

    def _admitted(self, identity: bytes, state: RunState | FinishedRun, seq: int | None) -> bool:
        """Whether a frame or end may go on: it comes from the connection bound to the run.

        Anyone else gets ``not_owner`` and changes nothing, above all not where acks go (the
        legitimate hook re-announces and is bound again). A finished run is answered from its
        record; an idle one has its store reopened.
        """
        if not state.owns(identity, self._peer_key):
            self.metrics.messages_rejected.labels(ErrorCode.NOT_OWNER).inc()
            self._not_owner(identity, state.run, seq, f"this connection has not started run {state.run!r}; "
                            "send its start (with the run's owner token) first")
            return False
        if isinstance(state, FinishedRun):
            reply = finished_run_reply(state, seq, self.id)
            if isinstance(reply, Error):
                self.metrics.messages_rejected.labels(reply.code).inc()
            self._reply(identity, reply)
            return False
        state.last_heard = time.monotonic()
        return self._ensure_open(state, identity)

    def _ensure_open(self, state: RunState, identity: bytes) -> bool:
        """Reopen the store of a run the restore loop closed while it was idle; False (and an error) if it fails."""
        try:
            reopen_if_idle(state, self.cfg.storage)
        except StoreError as exc:
            self._reply(identity, Error(code=ErrorCode.STORE_FAILED, reason=str(exc), run=state.run, daemon=self.id))
            return False
        return True

    def _not_owner(self, identity: bytes, run: str, seq: int | None, reason: str) -> None:
        log.warning("refused a message for run %s from %r: %s", run, identity, reason)
        self._reply(identity, Error(code=ErrorCode.NOT_OWNER, reason=reason, run=run, seq=seq, daemon=self.id))

    # -- status -----------------------------------------------------------------------

    def write_queue_frames(self) -> int:
        return self._inbox.qsize()

    def status(self) -> dict:
        return status_reply(self)

def client_key(auth, part: zmq.Frame) -> str | None:
    """The CURVE public key (Z85) the ZAP handler authenticated this message's peer with, or None."""
    if auth is None:
        return None
    try:
        return part.get("User-Id")
    except zmq.ZMQError:
        return None


def serve(cfg: LowdoseConfig, *, ready: Callable[[Daemon], None] | None = None) -> None:
    """Run a daemon until SIGINT or SIGTERM, then finish what it holds and return.

    If one of its loops dies, the daemon stops answering and this raises :class:`DaemonFailed`:
    the caller exits non-zero and a service manager starts a fresh daemon (crash-only, rule 2).
    """
    daemon = Daemon(cfg)
    daemon.start()
    stop = threading.Event()

    def _on_signal(signum, _frame):
        log.info("signal %d: finishing what the daemon holds, then exiting", signum)
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if ready is not None:
            ready(daemon)
        while not stop.is_set() and not daemon.failed.wait(0.2):
            pass
    finally:
        daemon.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if daemon.failure is not None:
        raise DaemonFailed(daemon.failure)
