"""Hook for pycromanager: forward every frame of an ``Acquisition`` to the daemon.

::

    hook = PycromanagerHook(cfg, instrument="scope-1")
    with Acquisition(image_process_fn=hook.image_process_fn,
                     notification_callback_fn=hook.notification_callback_fn) as acq:
        acq.acquire(events)
    report = hook.close()

``image_process_fn`` hands the frame to :class:`FrameSender` (O(1)) and returns
``(image, metadata)`` unchanged, so pycromanager stores or displays it as
before. pycromanager says nothing about the frame size up front, so ``Start``
is built from the first image. The run ends when pycromanager reports its data
sink finished (every image has passed through ``image_process_fn`` by then),
or at :meth:`PycromanagerHook.finish`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from lowdose.wire.hook_config import HookConfig
from lowdose.wire.protocol import Start

from .sender import FinishReport, FrameSender, SenderCounters, make_run_id

ACQ_STARTED = "acq_started"
DATA_SINK_FINISHED = "data_sink_finished"


class PycromanagerHook:
    """One pycromanager ``Acquisition`` is one run."""

    source = "pycromanager"

    def __init__(
        self,
        cfg: HookConfig | None = None,
        *,
        run: str | None = None,
        run_prefix: str = "acq",
        instrument: str = "unknown",
        sizes: dict[str, int] | None = None,
        channel_names: list[str] | None = None,
        pixel_size_um: float | None = None,
        z_step_um: float | None = None,
        frame_interval_s: float | None = None,
        camera_offset: float | None = None,
        camera_gain: float | None = None,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.cfg = cfg or HookConfig()
        self.run = run or make_run_id(run_prefix)
        self._fields: dict[str, Any] = {
            "run": self.run,
            "instrument": instrument,
            "source": self.source,
            "sizes": dict(sizes or {}),
            "channel_names": list(channel_names or []),
            "pixel_size_um": pixel_size_um,
            "z_step_um": z_step_um,
            "frame_interval_s": frame_interval_s,
            "camera_offset": camera_offset,
            "camera_gain": camera_gain,
            "summary": dict(summary or {}),
        }
        # pycromanager names channels; the store indexes them, in order of appearance
        # unless the caller listed them.
        self._channels: dict[str, int] = {name: i for i, name in enumerate(channel_names or [])}
        self.sender: FrameSender | None = None
        self.started_at: float | None = None

    # ---------------------------------------------------------------- pycromanager callbacks

    def image_process_fn(self, image: np.ndarray, metadata: dict) -> tuple[np.ndarray, dict]:
        sender = self.sender or self._open_sender(image, metadata)
        axes = metadata.get("Axes") or {}
        channel = axes.get("channel", 0)
        if isinstance(channel, str):
            c = self._channels.get(channel)
            if c is None:
                c = self._channels[channel] = len(self._channels)
        else:
            c = int(channel)
        index = {
            "t": int(axes.get("time", 0)),
            "p": int(axes.get("position", 0)),
            "c": c,
            "z": int(axes.get("z", 0)),
        }
        sender.submit(
            image,
            index,
            timestamp=time.time(),
            elapsed_ms=_float(metadata.get("ElapsedTime-ms")),
            exposure_ms=_float(metadata.get("Exposure")),
            # a shallow copy: the data sink may add keys to the dict it is handed next
            metadata=dict(metadata),
        )
        return image, metadata

    def notification_callback_fn(self, notification: Any) -> None:
        milestone = getattr(notification, "milestone", None)
        if milestone == ACQ_STARTED:
            self.started_at = time.time()
        elif milestone == DATA_SINK_FINISHED:
            self.finish(wait=False)

    # ---------------------------------------------------------------- control and results

    def finish(self, reason: str = "finished", *, wait: bool = True,
               timeout: float | None = None) -> FinishReport | None:
        """End the run (``End`` after every frame); with ``wait``, the report."""
        if self.sender is None:
            return None
        return self.sender.finish(reason, wait=wait, timeout=timeout)

    def report(self, timeout: float | None = None) -> FinishReport | None:
        return self.sender.wait(timeout) if self.sender is not None else None

    def close(self, timeout: float | None = None) -> FinishReport | None:
        return self.sender.close(timeout) if self.sender is not None else None

    def counters(self) -> SenderCounters | None:
        return self.sender.counters() if self.sender is not None else None

    # ---------------------------------------------------------------- internals

    def _open_sender(self, image: np.ndarray, metadata: dict) -> FrameSender:
        fields = dict(self._fields)
        fields["shape"] = tuple(image.shape[:2])
        fields["dtype"] = str(image.dtype)
        if fields["pixel_size_um"] is None and _float(metadata.get("PixelSize_um")):
            fields["pixel_size_um"] = _float(metadata.get("PixelSize_um"))
        fields["summary"] = {**fields["summary"], "camera": metadata.get("Camera"),
                             "first_image_time": metadata.get("Time"), "acq_started_at": self.started_at}
        sender = FrameSender(self.cfg, Start(**fields))
        sender.start()
        self.sender = sender
        return sender


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None
