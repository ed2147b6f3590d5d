"""The dashboard from the command line: `lowdose serve` and `lowdose demo` print its address, and
`demo --hold` keeps it up after the run."""

from __future__ import annotations

import tempfile
import threading
import time

import numpy as np
import requests
import yaml
from dashboard_helpers import dashboard_config, free_port, wait_for
from PIL import Image
from typer.testing import CliRunner

from lowdose.cli import app
from lowdose.demo import DaemonProcess
from lowdose.run_plot import read_timeline
from wire_client import WireClient


def test_serve_prints_the_dashboard_address(tmp_path):
    port = free_port()
    endpoint = f"ipc://{tmp_path}/d.sock"
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"endpoints": [endpoint], "preview_endpoint": None},
        "storage": {"output_dir": str(tmp_path / "data")},
        "restore": {"denoiser": "identity"},
        "dashboard": {"port": port},
    }))
    daemon = DaemonProcess(config, tmp_path / "serve.log", endpoint)
    try:
        daemon.wait_ready()
        url = f"http://127.0.0.1:{port}/"
        wait_for(lambda: url in (tmp_path / "serve.log").read_text(), timeout=10, what="the address printed")
        assert f"dashboard: {url}" in (tmp_path / "serve.log").read_text()
        assert requests.get(url + "api/runs", timeout=5).json() == []
    finally:
        assert daemon.stop(timeout=30) == 0


def test_demo_prints_the_dashboard_and_holds_it_after_the_run(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    port = free_port()
    out = tmp_path / "held.ome.zarr"
    result: dict = {}

    def demo() -> None:
        result["r"] = CliRunner().invoke(app, ["demo", "--frames", "3", "--size", "64", "--denoiser", "identity",
                                               "--output", str(out), "--dashboard-port", str(port), "--hold", "4"],
                                         env={"COLUMNS": "400"})

    thread = threading.Thread(target=demo)
    thread.start()
    url = f"http://127.0.0.1:{port}/"

    def finished_run():
        try:
            runs = requests.get(url + "api/runs", timeout=2).json()
        except requests.RequestException:
            return None
        return next((r for r in runs if r["run"] == "held" and r["state"] == "finished"), None)

    # the run is over (finished) and the dashboard still answers: the demo holds
    run = wait_for(finished_run, timeout=120, what="the demo's finished run on its dashboard")
    assert run["frames_written"] == 3 and run["frames_restored"] == 3
    assert requests.get(url + "api/runs/held/preview/restored.png", timeout=5).status_code == 200
    time_seen = time.monotonic()
    time.sleep(1.0)  # without --hold the daemon would be gone by now
    assert requests.get(url + "api/runs", timeout=5).json()[0]["run"] == "held"
    assert thread.is_alive() and time.monotonic() - time_seen < 4
    thread.join(60)
    r = result["r"]
    assert r.exit_code == 0, r.output
    picture = Image.open(tmp_path / "held.png")
    assert picture.width > 3 * 64 + 300  # raw | restored | truth, and the charts beside them
    assert f"dashboard: {url}" in r.stdout and "holding the daemon" in r.stdout
    assert r.stdout.index(f"dashboard: {url}") < r.stdout.index("lowdose demo: summary")


def test_status_plot_draws_a_run_beside_its_throughput_and_lag(tmp_path):
    from lowdose.daemon.server import Daemon
    from lowdose.wire import protocol as p

    cfg = dashboard_config(tmp_path, free_port(), **{"dashboard.enabled": False, "restore.policy": "fifo"})
    d = Daemon(cfg)
    d.start()
    try:
        c = WireClient(cfg.server.endpoints[0])
        c.send(p.Start(run="plotted", shape=(48, 64), dtype="uint16", instrument="t", sizes={"t": 0}))
        for seq in range(12):
            c.send_frame("plotted", seq, np.full((48, 64), 100 + seq, np.uint16), t=seq)
            time.sleep(0.02)
        c.send(p.End(run="plotted", frames=12))
        c.recv_until(lambda m: isinstance(m, p.Ack) and m.finished)
        c.close()
        assert d.wait_idle(30)
        endpoint = cfg.server.endpoints[0]
        out = tmp_path / "run.png"
        r = CliRunner().invoke(app, ["status", "--endpoint", endpoint, "--plot", str(out)], env={"COLUMNS": "300"})
        assert r.exit_code == 0, r.output
        assert "run plotted" in r.stdout and "t=11" in r.stdout
        img = Image.open(out)
        assert img.width >= 2 * 64 + 460 and img.height >= 260
        store = tmp_path / "data" / "plotted.ome.zarr"
        tl = read_timeline(store)
        assert len(tl.raw_s) == 12 and len(tl.lag_s) == 12 and (tl.lag_s >= 0).all() and tl.live.any()
        assert tl.raw_s[-1] > 0.1  # the frames were spread over time
        for args, says in ((["--plot", str(tmp_path / "x.jpg")], ".png"),
                           (["--plot", str(out), "--run", "nope"], "no run 'nope'")):
            bad = CliRunner().invoke(app, ["status", "--endpoint", endpoint, *args], env={"COLUMNS": "300"})
            assert bad.exit_code == 2 and says in bad.output, bad.output
    finally:
        d.stop()
