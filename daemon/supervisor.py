"""Crash-only: when one of the daemon's loops dies, the whole daemon goes (rule 2 of ``docs/design.md``).

The daemon is three threads. If the write loop or the restore loop died and the I/O
thread went on, it would keep answering heartbeats for a daemon that will never ack
or restore again, and hooks would hold their frames for it instead of resending them
to a healthy one. So each loop runs in a :class:`LoopThread`, which keeps the exception
that ended it, and a :class:`Supervisor` watches them: the first death is logged and
handed to the daemon, which stops answering, and ``lowdose serve`` exits with
:data:`EX_SOFTWARE` for a service manager to start a fresh one (``docs/lowdose.service``).
Nothing is repaired in place: a fresh process rebuilds its state from the stores, and
the hooks resend what was never acknowledged.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("lowdose.daemon")

#: sysexits.h EX_SOFTWARE, "internal software error"; any non-zero code restarts a unit
#: with Restart=on-failure, this one says in the journal that the daemon chose to die.
EX_SOFTWARE = 70


@dataclass(frozen=True)
class LoopDeath:
    """Which loop ended while the daemon was serving, and of what (None: it returned by itself)."""

    loop: str
    error: BaseException | None

    def __str__(self) -> str:
        if self.error is None:
            return f"the {self.loop} ended without being asked to stop"
        return f"the {self.loop} died of {type(self.error).__name__}: {self.error}"


class DaemonFailed(RuntimeError):
    """A loop of a serving daemon died; the daemon stopped answering. ``death`` says which and why."""

    def __init__(self, death: LoopDeath):
        super().__init__(str(death))
        self.death = death


class LoopThread(threading.Thread):
    """A daemon thread that keeps, in ``fatal``, the exception that ended it.

    Subclasses implement :meth:`loop`, or pass the loop as ``target``. The exception is
    kept rather than re-raised: the supervisor logs it once, with its traceback.
    """

    def __init__(self, *, name: str, role: str, target: Callable[[], None] | None = None):
        super().__init__(name=name, daemon=True)
        self.role = role
        self._target_loop = target
        self.fatal: BaseException | None = None

    def loop(self) -> None:
        if self._target_loop is None:
            raise NotImplementedError("a LoopThread needs a target or a loop() method")
        self._target_loop()

    def run(self) -> None:
        try:
            self.loop()
        except BaseException as exc:  # whatever ended the loop, the supervisor must hear of it
            self.fatal = exc


class Supervisor:
    """Watches loop threads from its own thread; reports the first that ends to ``on_death``, once."""

    def __init__(self, on_death: Callable[[LoopDeath], None], *, poll_s: float = 0.05):
        self._on_death = on_death
        self._poll_s = poll_s
        self._loops: list[LoopThread] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="lowdose-supervisor", daemon=True)
        self.death: LoopDeath | None = None

    def watch(self, *loops: LoopThread) -> None:
        self._loops.extend(loops)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Call before stopping the loops: from here on a loop that ends is expected, not a death."""
        self._stopping.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stopping.wait(self._poll_s):
            ended = next((t for t in self._loops if not t.is_alive()), None)
            if ended is None:
                continue
            self.death = LoopDeath(ended.role, ended.fatal)
            log.critical("%s; the daemon stops answering and exits (crash-only, rule 2)", self.death,
                         exc_info=ended.fatal)
            self._on_death(self.death)
            return
