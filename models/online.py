"""Online adaptation: a network denoiser fine-tuning itself on a run's frames while the run goes on.

One thread per run, off the write and restore paths: it keeps the newest ``frames`` frames of each
field, trains the :class:`~lowdose.models.adapt.Adapter` on them in short bursts (computing at most
``cpu_share`` of the wall-clock time, on ``threads`` torch threads), and every ``steps_per_version``
steps publishes a new version when the held-out loss improved. Publishing is one reference
assignment, so the daemon's next batch sees either the old version or the new one, never a mix.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from typing import Any, Sequence

import numpy as np
import torch

from .adapt import AdaptConfig, Adapter, weights_digest

log = logging.getLogger("lowdose.models.online")

FieldKey = tuple[int, int, int]


class OnlineAdaptation:
    """Implements :class:`lowdose.plugins.denoisers.adaptation.OnlineAdaptation` for network denoisers."""

    def __init__(
        self, base: Any, *, threads: int = 1, cpu_share: float = 0.5, steps_per_version: int = 100,
        max_steps: int = 2000, final_s: float = 30.0, frames: int = 16, min_frames: int = 2,
        options: dict[str, Any] | None = None, run: str = "", idle: threading.Event | None = None,
    ) -> None:
        if not 0 < cpu_share <= 1:
            raise ValueError(f"cpu_share must be in (0, 1], got {cpu_share}")
        self.base = base
        self.threads = threads
        self.cpu_share = cpu_share
        self.steps_per_version = max(1, steps_per_version)
        self.max_steps = max_steps
        self.final_s = final_s
        self.frames = max(2, frames)
        self.min_frames = max(1, min_frames)
        self.cfg = AdaptConfig(**(options or {}))
        self.run = run
        # On a GPU the restorer's batches come first: train only while ``idle`` is set (between batches).
        # On a CPU both share the cores anyway; ``cpu_share`` bounds the training instead.
        self.idle = idle if idle is not None and base.engine.device.type == "cuda" else None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._finish = threading.Event()
        self._buffer: dict[FieldKey, dict[int, np.ndarray]] = {}
        self._calibration: tuple[float | None, float | None] = (None, None)
        self._new_frames = 0
        self._current: tuple[int, Any] | None = None
        self._done = False
        self._error: str | None = None
        self._published = ""
        # The restore thread calls this: a torch op here fixes its own OpenMP thread count before the
        # adaptation thread sets the process-wide default to ``threads`` (threads that never ran a
        # parallel region take the default, so the restorer would otherwise drop to ``threads`` too).
        torch.ones(1 << 17).add_(1)
        self._thread = threading.Thread(target=self._main, name=f"lowdose-adapt-{run}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the daemon's side

    def offer(self, frames: Sequence[tuple[FieldKey, int, np.ndarray]], offset: float | None, gain: float | None) -> None:
        with self._lock:
            self._calibration = (offset, gain)
            for key, t, pixels in frames:
                field = self._buffer.setdefault(key, {})
                if t in field:
                    continue
                field[t] = pixels
                self._new_frames += 1
                while len(field) > self.frames:  # keep the newest: the sample as it is now
                    del field[min(field)]
        self._wake.set()

    def current(self) -> tuple[int, Any] | None:
        return self._current

    def finish(self) -> None:
        self._finish.set()
        self._wake.set()

    @property
    def done(self) -> bool:
        return self._done

    @property
    def error(self) -> str | None:
        return self._error

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the adaptation thread

    def _main(self) -> None:
        try:
            torch.set_num_threads(self.threads)
            self._train()
        except Exception as exc:  # an adaptation that fails leaves the newest good version in use
            self._error = f"{type(exc).__name__}: {exc}"
            log.exception("run %s: online adaptation failed; restoring on with version %d", self.run,
                          self._current[0] if self._current else 0)
        finally:
            self._done = True

    def _train(self) -> None:
        adapter: Adapter | None = None
        final_deadline: float | None = None
        since_refresh = 0
        while not self._stop.is_set():
            if self._finish.is_set() and final_deadline is None:
                final_deadline = time.monotonic() + self.final_s
            if final_deadline is not None and time.monotonic() >= final_deadline:
                break
            if adapter is None or (since_refresh >= 20 and self._new_frames):
                adapter = self._refresh(adapter)
                since_refresh = 0
                if adapter is None:  # not enough frames yet
                    if self._finish.is_set():
                        return
                    self._wake.wait(0.2)
                    self._wake.clear()
                    continue
            if adapter.step_count >= self.max_steps:
                if final_deadline is not None:
                    break
                self._wake.wait(0.5)  # budget spent: wait for the end of the run
                self._wake.clear()
                continue
            if self.idle is not None and not self.idle.wait(0.5):
                continue
            t0 = time.perf_counter()
            self._train_step(adapter)
            since_refresh += 1
            if adapter.step_count % self.steps_per_version == 0:
                self._publish(adapter)
            # the CPU budget: idle (1/share - 1) times as long as the step took
            busy = time.perf_counter() - t0
            if self.cpu_share < 1:
                self._stop.wait(busy * (1 / self.cpu_share - 1))
        if adapter is not None and not self._stop.is_set():
            self._publish(adapter)

    def _train_step(self, adapter: Adapter) -> float:
        return adapter.step()

    def _refresh(self, adapter: Adapter | None) -> Adapter | None:
        with self._lock:
            fields = [np.stack([f[t] for t in sorted(f)]) for f in self._buffer.values()]
            offset, gain = self._calibration
            self._new_frames = 0
        if sum(len(f) for f in fields) < self.min_frames:
            return adapter
        if adapter is None:
            adapter = Adapter(self.base, self.cfg, device=self.base.engine.device)
            self._published = weights_digest(adapter.best_state)  # the base model's weights
        adapter.set_frames(fields, offset, gain)
        return adapter

    def _publish(self, adapter: Adapter) -> None:
        adapter.score()
        digest = weights_digest(adapter.best_state)
        if digest == self._published:  # nothing better than what the daemon already has
            return
        self._published = digest
        version = (self._current[0] if self._current else 0) + 1
        self._current = (version, self._denoiser(adapter, version, digest))
        log.info("run %s: adapted model version %d (step %d, held-out loss %.5g)", self.run, version,
                 adapter.step_count, adapter.best_val)

    def _denoiser(self, adapter: Adapter, version: int, digest: str) -> Any:
        from .restorer import denoiser_from_checkpoint

        base = self.base
        ckpt = adapter.checkpoint(data={"online": True, "run": self.run, "frames": adapter.frames_seen}, training={
            "adapted_from": f"{base.info.name} ({base.info.checksum[:12]})", "step": adapter.step_count,
            "mode": adapter.mode}, metrics={"history": list(adapter.val_history)})
        ckpt.checksum = digest
        den = denoiser_from_checkpoint(ckpt, name=f"{base.info.name}-adapted", device=str(base.engine.device),
                                       tile=base.tile, overlap=base.overlap, batch=base.batch)
        params = {**den.info.parameters, "adapted": {
            "version": version, "from": base.info.checksum, "steps": adapter.step_count, "mode": adapter.mode,
            "frames": adapter.frames_seen, "held_out_loss": adapter.best_val}}
        den.info = replace(den.info, version=f"{base.info.version}+adapted.{version}", parameters=params)
        return den
