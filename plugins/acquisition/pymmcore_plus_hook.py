"""Hook for pymmcore-plus: stream every frame of a ``CMMCorePlus`` MDA to the daemon.

Two ways to attach, same object::

    hook = PymmcorePlusHook(cfg, instrument="scope-1")
    core.mda.run(sequence, output=hook)          # as an output handler

    with PymmcorePlusHook(cfg).attach(core):       # or on core.mda.events
        core.mda.run(sequence)

Each MDA sequence is one run (``Start`` at ``sequenceStarted``, ``End`` at
``sequenceFinished``; ``reason="cancelled"`` after ``sequenceCanceled``). As an
output handler pymmcore-plus calls us from its relay thread; attached to the
events we run in the acquisition thread itself. Either way ``frameReady`` only
picks a few fields and hands the frame to :class:`FrameSender` (O(1)).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lowdose.wire.hook_config import HookConfig
from lowdose.wire.protocol import Start

from lowdose.wire.jsonsafe import jsonable

from .sender import FinishReport, FrameSender, SenderCounters, make_run_id

_SUMMARY_KEYS = ("format", "version", "datetime", "system_info", "image_infos", "position", "pixel_size_configs")
_CAMERA_KEYS = ("ElapsedTime-ms", "ImageNumber", "TimeReceivedByCore", "Camera")
_SIGNALS = ("sequenceStarted", "frameReady", "sequenceCanceled", "sequenceFinished")


class PymmcorePlusHook:
    """Forwards pymmcore-plus MDA sequences to a lowdose daemon, one run per sequence."""

    source = "pymmcore-plus"

    def __init__(
        self,
        cfg: HookConfig | None = None,
        *,
        run: str | None = None,
        run_prefix: str = "mda",
        instrument: str = "unknown",
        pixel_size_um: float | None = None,
        camera_offset: float | None = None,
        camera_gain: float | None = None,
        wait_on_finish: bool = False,
    ) -> None:
        self.cfg = cfg or HookConfig()
        self.instrument = instrument
        self._run_name = run
        self._run_prefix = run_prefix
        self._pixel_size_um = pixel_size_um
        self._camera_offset = camera_offset
        self._camera_gain = camera_gain
        # Blocking in sequenceFinished holds up mda.run()'s return until the daemon
        # has every frame; off by default, call report() to wait instead.
        self._wait_on_finish = wait_on_finish
        self._core: Any = None
        self._n_runs = 0
        self._start_fields: dict[str, Any] | None = None
        self._grid_size = 1
        self._cancelled = False
        self.sender: FrameSender | None = None
        self.senders: list[FrameSender] = []

    # ---------------------------------------------------------------- attaching

    def attach(self, core: Any) -> PymmcorePlusHook:
        """Connect to ``core.mda.events`` (the callbacks then run in the acquisition thread)."""
        if self._core is not None:
            raise RuntimeError("already attached")
        for name in _SIGNALS:
            getattr(core.mda.events, name).connect(getattr(self, name))
        self._core = core
        return self

    def detach(self) -> None:
        core, self._core = self._core, None
        if core is None:
            return
        for name in _SIGNALS:
            try:
                getattr(core.mda.events, name).disconnect(getattr(self, name))
            except (TypeError, ValueError, RuntimeError):
                pass

    def __enter__(self) -> PymmcorePlusHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()
        self.close()

    # ---------------------------------------------------------------- MDA callbacks

    def sequenceStarted(self, sequence: Any, summary_meta: dict | None = None) -> None:
        if self.sender is not None and not self._finished(self.sender):
            self._finish("error")  # a new sequence while the last never finished
        summary_meta = summary_meta or {}
        self._n_runs += 1
        self._cancelled = False
        self._start_fields = self._start_fields_from(sequence, summary_meta)
        self.sender = None
        if self._start_fields.get("shape") is not None:
            self._open_sender(self._start_fields)

    def frameReady(self, img: np.ndarray, event: Any, frame_meta: dict | None = None) -> None:
        sender = self.sender
        if sender is None:
            fields = self._start_fields or self._start_fields_from(None, {})
            fields = {**fields, "shape": tuple(img.shape[:2]), "dtype": str(img.dtype)}
            sender = self._open_sender(fields)
        meta = frame_meta or {}
        idx = event.index
        p = idx.get("p", 0)
        if self._grid_size > 1:
            p = p * self._grid_size + idx.get("g", 0)  # grid tiles are positions to the store
        index = {"t": idx.get("t", 0), "p": p, "c": idx.get("c", 0), "z": idx.get("z", 0)}
        sender.submit(
            img,
            index,
            timestamp=time.time(),
            elapsed_ms=meta.get("runner_time_ms"),
            exposure_ms=meta.get("exposure_ms"),
            metadata=_frame_metadata(event, meta),
        )

    def sequenceCanceled(self, sequence: Any = None) -> None:
        self._cancelled = True

    def sequenceFinished(self, sequence: Any = None) -> None:
        self._finish("cancelled" if self._cancelled else "finished")

    # ---------------------------------------------------------------- results

    def counters(self) -> SenderCounters | None:
        return self.sender.counters() if self.sender is not None else None

    def report(self, timeout: float | None = None) -> FinishReport | None:
        """Wait for the current run's sender to finish; its report (None if none ran)."""
        return self.sender.wait(timeout) if self.sender is not None else None

    def close(self, timeout: float | None = None) -> FinishReport | None:
        """Finish any open run, wait for the acks (``close_timeout_s``), release sockets."""
        report = None
        for sender in self.senders:
            report = sender.close(timeout)
        return report

    # ---------------------------------------------------------------- internals

    def _open_sender(self, fields: dict[str, Any]) -> FrameSender:
        start = Start(**fields)
        sender = FrameSender(self.cfg, start)
        sender.start()
        self.sender = sender
        self.senders.append(sender)
        return sender

    def _finish(self, reason: str) -> None:
        sender = self.sender
        if sender is not None:
            sender.finish(reason, wait=self._wait_on_finish)

    @staticmethod
    def _finished(sender: FrameSender) -> bool:
        return sender.end_requested

    def _run_id(self) -> str:
        if self._run_name:
            return self._run_name if self._n_runs <= 1 else f"{self._run_name}-{self._n_runs}"
        return make_run_id(self._run_prefix)

    def _start_fields_from(self, sequence: Any, summary_meta: dict) -> dict[str, Any]:
        infos = summary_meta.get("image_infos") or [{}]
        info = infos[0] if infos else {}
        shape = info.get("plane_shape") or (
            (info["height"], info["width"]) if "height" in info and "width" in info else None
        )
        pixel_size = self._pixel_size_um if self._pixel_size_um is not None else info.get("pixel_size_um")
        sizes: dict[str, int] = {}
        channel_names: list[str] = []
        z_step = interval = None
        seq_json = None
        self._grid_size = 1
        if sequence is not None:
            try:
                seq_sizes = {str(getattr(k, "value", k)): int(v) for k, v in sequence.sizes.items()}
            except Exception:  # a GeneratorMDASequence has no sizes
                seq_sizes = {}
            if seq_sizes:
                self._grid_size = max(seq_sizes.get("g", 0), 1)
                sizes = {
                    "t": max(seq_sizes.get("t", 0), 1),
                    "p": max(seq_sizes.get("p", 0), 1) * self._grid_size,
                    "c": max(seq_sizes.get("c", 0), 1),
                    "z": max(seq_sizes.get("z", 0), 1),
                }
            channel_names = [str(c.config) for c in getattr(sequence, "channels", ()) or ()]
            z_step = getattr(getattr(sequence, "z_plan", None), "step", None)
            tplan = getattr(sequence, "time_plan", None)
            ival = getattr(tplan, "interval", None)
            if ival is not None:
                interval = ival.total_seconds() if hasattr(ival, "total_seconds") else float(ival)
            try:
                seq_json = jsonable(sequence.model_dump(mode="json"))
            except Exception:
                seq_json = None
        return {
            "run": self._run_id(),
            "instrument": self.instrument,
            "source": self.source,
            "shape": tuple(shape) if shape is not None else None,
            "dtype": str(info.get("dtype", "uint16")),
            "sizes": sizes,
            "pixel_size_um": float(pixel_size) if pixel_size else None,
            "z_step_um": float(z_step) if z_step else None,
            "frame_interval_s": interval,
            "channel_names": channel_names,
            "camera_offset": self._camera_offset,
            "camera_gain": self._camera_gain,
            "summary": jsonable({k: summary_meta[k] for k in _SUMMARY_KEYS if k in summary_meta}),
            "sequence": seq_json,
        }


def _frame_metadata(event: Any, meta: dict) -> dict[str, Any]:
    """The per-frame fields worth keeping; plain values only (the sender stringifies the rest)."""
    out: dict[str, Any] = {}
    for key in ("camera_device", "pixel_size_um", "position", "runner_time_ms", "exposure_ms"):
        if key in meta:
            out[key] = meta[key]
    channel = getattr(event, "channel", None)
    if channel is not None:
        out["channel"] = channel.config
    if getattr(event, "min_start_time", None) is not None:
        out["min_start_time_s"] = event.min_start_time
    cam = meta.get("camera_metadata")
    if cam:
        # the camera's own record: elapsed time, image number, and what a simulated
        # camera says about the frame (sim_frame: which noise-free truth it shows)
        out["camera"] = {k: v for k, v in cam.items() if k in _CAMERA_KEYS or str(k).startswith("sim_")}
    return out


def release_core(core: Any) -> None:
    """Leave a ``CMMCorePlus`` safe to destroy: stop the MDA, disconnect, unload, unregister.

    A core left with devices loaded and its C++ callback registered can abort the
    interpreter at exit; every script and fixture that makes one calls this.
    """
    import pymmcore

    with _suppress():
        if core.mda.is_running():
            core.mda.cancel()
            deadline = time.monotonic() + 10
            while core.mda.is_running() and time.monotonic() < deadline:
                time.sleep(0.01)
    with _suppress():
        if core.isSequenceRunning():
            core.stopSequenceAcquisition()
    with _suppress():
        core.unloadAllDevices()
    for signals in (core.mda.events, core.events):
        for name in dir(signals):
            if name.startswith("_"):
                continue
            with _suppress():
                sig = getattr(signals, name)
                if hasattr(sig, "connect") and hasattr(sig, "disconnect"):
                    sig.disconnect()
    with _suppress():
        pymmcore.CMMCore.registerCallback(core, None)


def _suppress() -> Any:
    from contextlib import suppress

    return suppress(Exception)
