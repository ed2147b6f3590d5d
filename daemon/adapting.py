"""Online adaptation's place in the restore loop (``restore.adapt``): one session per run.

The restore loop asks which denoiser restores a run's next batch (the session's newest version,
else the configured one), hands each restored batch's raw frames to the session, and before it
finalizes a run asks whether the adaptation has settled: the session is told the run is over, trains
its final steps, and then every frame an earlier version made is restored again by backfill
(``restore.adapt_redo``). The session trains in its own thread; a session that fails or cannot
start is logged and restoration goes on with the newest good version (rule 3: complete
eventually, whatever the adaptation does).
"""

from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from lowdose.plugins.denoisers.adaptation import OnlineAdaptation, adaptation_of
from lowdose.plugins.denoisers.interface import Denoiser
from lowdose.wire.protocol import FrameIndex

from .config import RestoreConfig
from .runs import RunState
from .scheduler import LiveItem

log = logging.getLogger("lowdose.daemon.adapt")

Key = tuple[int, int, int, int]


@dataclass
class _RunAdaptation:
    session: OnlineAdaptation | None
    made_by: dict[Key, str] = field(default_factory=dict)  # frame -> checksum of the model that restored it
    redo: list[FrameIndex] | None = None  # frames to restore again with the final version, once known
    final: str = ""


def _key(i: FrameIndex) -> Key:
    return (i.p, i.t, i.c, i.z)


class RunAdaptations:
    """The adaptation sessions of the restore loop's runs; used by the restore thread only."""

    def __init__(self, cfg: RestoreConfig) -> None:
        self.cfg = cfg
        self._runs: dict[str, _RunAdaptation] = {}
        # set while no batch is being restored: on a GPU, sessions train only then
        self.idle = threading.Event()
        self.idle.set()

    @contextmanager
    def restoring(self) -> Iterator[None]:
        self.idle.clear()
        try:
            yield
        finally:
            self.idle.set()

    def _of(self, state: RunState, base: Denoiser) -> _RunAdaptation:
        ra = self._runs.get(state.run)
        if ra is None:
            session = None
            try:
                session = adaptation_of(base, {**self.cfg.adapt_settings(state.run), "idle": self.idle})
                if session is None:
                    log.warning("run %s: restore.adapt is on but denoiser %r cannot adapt; restoring without",
                                state.run, base.info.name)
            except Exception:
                log.exception("run %s: online adaptation could not start; restoring without", state.run)
            ra = self._runs[state.run] = _RunAdaptation(session)
        return ra

    def denoiser_for(self, state: RunState, base: Denoiser) -> Denoiser:
        """The model for the run's next batch: its newest adapted version, else ``base``."""
        ra = self._of(state, base)
        cur = ra.session.current() if ra.session is not None else None
        return base if cur is None else cur[1]

    def after_restore(self, state: RunState, items: tuple[LiveItem, ...], used: Denoiser) -> None:
        """Note who restored these frames, and offer their raw pixels to the session."""
        ra = self._runs.get(state.run)
        if ra is None:
            return
        for it in items:
            ra.made_by[_key(it.index)] = used.info.checksum
        if ra.session is not None and not ra.session.done:
            start = state.store.start
            ra.session.offer([((it.index.p, it.index.c, it.index.z), it.index.t, it.pixels) for it in items],
                             start.camera_offset, start.camera_gain)

    def settled(self, state: RunState, base: Denoiser) -> bool:
        """Whether the run may be finalized: adaptation over and nothing left to restore again."""
        ra = self._runs.get(state.run)
        if ra is None or ra.session is None:
            return True
        if not ra.session.done:
            ra.session.finish()
            return False
        if ra.redo is None:
            if ra.session.error:
                log.warning("run %s: adaptation failed (%s); the run ends with the last good version",
                            state.run, ra.session.error)
            cur = ra.session.current()
            ra.final = (base if cur is None else cur[1]).info.checksum
            # the redo is a backfill: without backfill there is none (the run would never settle)
            ra.redo = [] if not (self.cfg.adapt_redo and self.cfg.backfill) else [
                i for i in state.store.raw_indices() if ra.made_by.get(_key(i)) != ra.final]
            if ra.redo:
                log.info("run %s: restoring %d frames again with the final adapted version", state.run, len(ra.redo))
        return not ra.redo

    def redo_batch(self, state: RunState, limit: int) -> list[FrameIndex]:
        """The next frames to restore again with the final version (empty until the session is done)."""
        ra = self._runs.get(state.run)
        if ra is None or not ra.redo:
            return []
        batch, ra.redo = ra.redo[:limit], ra.redo[limit:]
        return batch

    def close(self, run: str) -> None:
        ra = self._runs.pop(run, None)
        if ra is not None and ra.session is not None:
            ra.session.close()

    def close_all(self) -> None:
        for run in list(self._runs):
            self.close(run)


class NoAdaptation:
    """``restore.adapt: false``: the same questions as :class:`RunAdaptations`, answered so that the
    restore loop runs exactly as without adaptation (the configured denoiser, nothing to redo)."""

    @contextmanager
    def restoring(self) -> Iterator[None]:
        yield

    def denoiser_for(self, state: RunState, base: Denoiser) -> Denoiser:
        return base

    def after_restore(self, state: RunState, items: tuple[LiveItem, ...], used: Denoiser) -> None:
        pass

    def settled(self, state: RunState, base: Denoiser) -> bool:
        return True

    def redo_batch(self, state: RunState, limit: int) -> list[FrameIndex]:
        return []

    def close(self, run: str) -> None:
        pass

    def close_all(self) -> None:
        pass


def adaptations_for(cfg: RestoreConfig) -> RunAdaptations | NoAdaptation:
    return RunAdaptations(cfg) if cfg.adapt else NoAdaptation()
