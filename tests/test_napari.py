"""The napari plug-in in a real napari (Qt on Xvfb, started by pytest-xvfb): the reader opens a run store
written by a real daemon as named layers with the physical scale and one contrast window; the live
widget shows a real daemon's newest restored frame (from its preview PUB socket) and the raw one."""

from __future__ import annotations

import os
import time

os.environ["QT_QPA_PLATFORM"] = "xcb"  # offscreen has no OpenGL here; pytest-xvfb provides the display

import numpy as np
import pytest
import zarr
from dashboard_helpers import SpreadDenoiser, dashboard_config, free_port, wait_for

from lowdose.daemon.server import Daemon
from lowdose.wire import protocol as p
from wire_client import WireClient


XVFB = ("the napari tests need an X display: install Xvfb (`apt-get install -y xvfb` and the xcb libraries "
        "that .ci/run lists); pytest-xvfb then starts it")


def _napari():
    if not os.environ.get("DISPLAY"):
        pytest.fail(XVFB)  # without a display Qt aborts the whole interpreter instead of failing a test
    import napari

    return napari


@pytest.fixture
def viewer():
    napari = _napari()
    v = napari.Viewer(show=False)
    yield v
    v.close()


def _daemon(tmp_path, **over) -> Daemon:
    cfg = dashboard_config(tmp_path, free_port(), **{"dashboard.enabled": False, "restore.policy": "fifo", **over})
    d = Daemon(cfg, denoiser_factory=SpreadDenoiser)
    d.start()
    return d


def _stream(d: Daemon, run: str, n: int, end: bool = True) -> None:
    c = WireClient(d.cfg.server.endpoints[0])
    rng = np.random.default_rng(1)
    c.send(p.Start(run=run, shape=(40, 56), dtype="uint16", instrument="t", sizes={"t": 0}, pixel_size_um=0.25,
                   frame_interval_s=0.5))
    for seq in range(n):
        c.send_frame(run, seq, (rng.poisson(10, (40, 56)) + 100 + seq).astype(np.uint16), t=seq)
    if end:
        c.send(p.End(run=run, frames=n))
        c.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
    c.close()


def test_the_reader_opens_a_store_as_named_layers(tmp_path, viewer):
    d = _daemon(tmp_path)
    try:
        _stream(d, "cells", 6)
        assert d.wait_idle(30)
    finally:
        d.stop()
    store = tmp_path / "data" / "cells.ome.zarr"
    layers = viewer.open(str(store), plugin="lowdose")
    assert [layer.name for layer in layers] == ["cells raw", "cells restored", "cells uncertainty"]
    raw, restored, unc = layers
    assert raw.data.shape == restored.data.shape == unc.data.shape == (6, 1, 1, 40, 56)
    assert list(raw.scale[-2:]) == [0.25, 0.25] and restored.scale[-1] == 0.25
    assert tuple(raw.contrast_limits) == tuple(restored.contrast_limits)  # one window for both
    assert unc.contrast_limits[0] == 0 and unc.colormap.name == "magma"
    assert raw.axis_labels == ("t", "c", "z", "y", "x")
    stored = zarr.open_group(str(store), mode="r")
    np.testing.assert_array_equal(np.asarray(restored.data[3, 0, 0]), stored["restored/0"][3, 0, 0])
    from lowdose.napari.reader import get_reader

    assert get_reader(str(tmp_path)) is None  # not a lowdose store: left to other readers


def test_the_live_widget_shows_a_daemons_newest_frames(tmp_path, viewer):
    from lowdose.napari.live import LiveWidget

    preview = f"ipc://{tmp_path}/preview.sock"
    d = _daemon(tmp_path, **{"server.preview_endpoint": preview})
    try:
        widget = LiveWidget(viewer, daemon_endpoint=d.cfg.server.endpoints[0], preview_endpoint=preview)
        _stream(d, "first", 2)  # so the run list has something before we watch
        assert "first" in widget.list_runs()
        widget.watch("live")
        widget.stores["live"] = str(tmp_path / "data" / "live.ome.zarr")
        # frames keep coming, as in an acquisition: a SUB socket hears only what is sent after it joined
        c = WireClient(d.cfg.server.endpoints[0])
        c.send(p.Start(run="live", shape=(40, 56), dtype="uint16", instrument="t", sizes={"t": 0}))
        seq = 0
        while not ("live live raw" in viewer.layers and "live live restored" in viewer.layers):
            assert seq < 300, f"no preview shown ({widget.subscriber.received} received)"
            c.send_frame("live", seq, np.full((40, 56), 100 + seq, np.uint16), t=seq)
            seq += 1
            time.sleep(0.05)
            widget.poll()
        c.close()
        restored = viewer.layers["live live restored"].data
        t = int(widget.state.text().split("t=")[1].split(" ")[0])
        stored = zarr.open_group(str(tmp_path / "data" / "live.ome.zarr"), mode="r")
        np.testing.assert_array_equal(restored, stored["restored/0"][t, 0, 0])
        np.testing.assert_array_equal(viewer.layers["live live raw"].data, stored["raw/0"][t, 0, 0])
        assert widget.subscriber.received >= 1
        widget.close()
    finally:
        d.stop()


def test_lowdose_view_opens_the_store_with_the_live_widget(tmp_path, monkeypatch):
    napari = _napari()
    from typer.testing import CliRunner

    from lowdose.cli import app

    d = _daemon(tmp_path)
    try:
        _stream(d, "viewed", 3)
        assert d.wait_idle(30)
    finally:
        d.stop()
    bad = CliRunner().invoke(app, ["view", str(tmp_path)])
    assert bad.exit_code == 2 and "not a lowdose run store" in bad.output
    monkeypatch.setattr(napari, "run", lambda: None)  # the event loop a person would close
    result = CliRunner().invoke(app, ["view", str(tmp_path / "data" / "viewed.ome.zarr")])
    assert result.exit_code == 0, result.output
    viewer = napari.current_viewer()
    try:
        assert [layer.name for layer in viewer.layers] == ["viewed raw", "viewed restored", "viewed uncertainty"]
        assert any("lowdose live" in name for name in viewer.window.dock_widgets)
    finally:
        viewer.close()
