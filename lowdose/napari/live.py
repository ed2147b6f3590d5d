"""The "lowdose live" dock widget: a daemon's newest restored frame of a run, beside its raw frame.

Restored frames come from the daemon's preview PUB socket (``server.preview_endpoint``), which
publishes the newest frame of each restored batch and drops frames for a slow viewer; the raw frame
of the same index is read from the run's store on disk when this machine can see it (the daemon's
status names the store). The widget drains the socket on a Qt timer and shows only the newest frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zmq

from lowdose.daemon.dashboard.disk import read_frame
from lowdose.wire.protocol import Preview, ProtocolError, decode, frame_pixels


class PreviewSubscriber:
    """A SUB socket on a daemon's previews of one run; :meth:`newest` conflates to the latest one."""

    def __init__(self, endpoint: str, run: str, ctx: zmq.Context | None = None):
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 2)  # a viewer wants the current picture, never a backlog
        self.sock.setsockopt(zmq.SUBSCRIBE, run.encode())
        self.sock.connect(endpoint)
        self.run = run
        self.received = 0

    def newest(self) -> tuple[Preview, np.ndarray] | None:
        """The newest preview waiting, if any (older ones are read and dropped)."""
        last = None
        while True:
            try:
                parts = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return last
            if parts[0] != self.run.encode():
                continue  # a run whose id starts with ours (SUB filters by prefix)
            try:
                msg, payload = decode(parts[1:])
            except ProtocolError:
                continue
            if isinstance(msg, Preview):
                self.received += 1
                last = (msg, frame_pixels(msg, payload).copy())

    def close(self) -> None:
        self.sock.close(linger=0)
        if self._own_ctx:
            self.ctx.term()


def shared_limits(frame: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(frame, np.float32)[::2, ::2], [0.5, 99.8])
    return float(lo), float(max(hi, lo + 1.0))


try:
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QComboBox, QFormLayout, QLabel, QLineEdit, QPushButton, QWidget
except ImportError:  # pragma: no cover - napari brings qtpy; without it only the subscriber is usable
    QWidget = object  # type: ignore[assignment,misc]


class LiveWidget(QWidget):  # type: ignore[misc,valid-type]
    """Dock widget: pick a daemon and a run, then see its newest raw and restored frames."""

    def __init__(self, napari_viewer: Any, daemon_endpoint: str | None = None, preview_endpoint: str | None = None):
        super().__init__()
        from lowdose.daemon.config import load_config

        defaults = load_config(None)
        self.viewer = napari_viewer
        self.daemon = QLineEdit(daemon_endpoint or defaults.hook.endpoint)
        self.previews = QLineEdit(preview_endpoint or defaults.server.preview_endpoint or "")
        self.runs = QComboBox()
        self.runs.setEditable(True)
        self.refresh = QPushButton("list runs")
        self.connect_button = QPushButton("watch")
        self.state = QLabel("not watching")
        form = QFormLayout(self)
        form.addRow("daemon", self.daemon)
        form.addRow("previews", self.previews)
        form.addRow("run", self.runs)
        form.addRow(self.refresh, self.connect_button)
        form.addRow(self.state)
        self.refresh.clicked.connect(self.list_runs)
        self.connect_button.clicked.connect(lambda: self.watch(self.runs.currentText()))
        self.subscriber: PreviewSubscriber | None = None
        self.stores: dict[str, str] = {}
        self.timer = QTimer(self)
        self.timer.setInterval(100)
        self.timer.timeout.connect(self.poll)

    def list_runs(self) -> list[str]:
        from lowdose.daemon.client import DaemonUnreachable, query_status

        try:
            status = query_status(self.daemon.text(), timeout=2.0)
        except DaemonUnreachable as exc:
            self.state.setText(str(exc))
            return []
        self.stores = {r["run"]: r["store"] for r in status["runs"]}
        self.runs.clear()
        self.runs.addItems(list(self.stores))
        return list(self.stores)

    def watch(self, run: str) -> None:
        if self.subscriber is not None:
            self.subscriber.close()
        self.subscriber = PreviewSubscriber(self.previews.text(), run)
        self.state.setText(f"watching {run}")
        self.timer.start()

    def poll(self) -> bool:
        """Show the newest preview if one came; True if the layers changed."""
        got = self.subscriber.newest() if self.subscriber is not None else None
        if got is None:
            return False
        msg, restored = got
        limits = shared_limits(restored)
        self._show(f"{msg.run} live restored", restored, limits)
        store = self.stores.get(msg.run)
        if store is not None and Path(store).exists():
            try:
                i = msg.index
                self._show(f"{msg.run} live raw", read_frame(Path(store), "raw", i.t, i.c, i.z, i.p), limits)
            except (LookupError, OSError, ValueError):
                pass  # not published yet: the next preview will try again
        self.state.setText(f"{msg.run}: t={msg.index.t} ({msg.mode}, {msg.model})")
        return True

    def _show(self, name: str, frame: np.ndarray, limits: tuple[float, float]) -> None:
        if name in self.viewer.layers:
            layer = self.viewer.layers[name]
            layer.data = frame
            layer.contrast_limits = limits
        else:
            self.viewer.add_image(frame, name=name, contrast_limits=limits)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.timer.stop()
        if self.subscriber is not None:
            self.subscriber.close()
        super().closeEvent(event)
