"""The dashboard page in a real headless Chromium (Debian's ``chromium``, driven by Playwright).

A real daemon restores, with the shipped UNet, what a real hook streams from a simulated low-light
camera in a real MMCore; the page must show the restored frames changing as they arrive, counters
that agree with ``/api/runs``, frames from disk after the run ended, and carry on after the daemon
is restarted. The test saves a screenshot (``LOWDOSE_SCREENSHOT=PATH`` copies it there, e.g. the
README's ``docs/dashboard.png``).
"""

from __future__ import annotations

import os
import shutil
import time

import pytest
import requests
from dashboard_helpers import acquire, dashboard_config, free_port, start_daemon

from lowdose.plugins.acquisition.sim_camera import close_core, make_sim_core

INSTALL = ("this test drives a headless Chromium: install it with `apt-get install -y chromium` "
           "(Debian/Ubuntu; .ci/run does), or point LOWDOSE_CHROMIUM at a Chromium or Chrome binary")


def _chromium() -> str:
    path = os.environ.get("LOWDOSE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.fail(INSTALL)
    return path


def _api_run(base: str, run: str) -> dict:
    return next(r for r in requests.get(base + "api/runs", timeout=5).json() if r["run"] == run)


def _wait_text(page, selector: str, text: str, timeout_s: float = 60) -> None:
    page.wait_for_function("([s, t]) => document.querySelector(s) && document.querySelector(s).textContent === t",
                           arg=[selector, text], timeout=timeout_s * 1000)


def _restored_frames_seen(page, at_least: int, timeout_s: float = 60) -> set[str]:
    """The time points the page's restored image showed, polled until ``at_least`` different ones."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and len(seen) < at_least:
        t = page.get_attribute("#img-restored", "data-t")
        loaded = page.evaluate("() => document.getElementById('img-restored').naturalWidth")
        if t is not None and loaded:
            seen.add(t)
        time.sleep(0.05)
    return seen


def _counters_match(page, base: str, run: str) -> dict:
    api = _api_run(base, run)
    for key in ("frames_received", "frames_written", "frames_restored", "frames_skipped"):
        _wait_text(page, f"#counter-{key}", str(api[key]), timeout_s=10)
    assert page.text_content(f"#run-{run} td:nth-child(5)") == str(api["frames_written"])
    return api


def test_the_page_follows_a_live_run_its_end_and_a_daemon_restart(tmp_path, one_torch_thread):
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    port = free_port()
    cfg = dashboard_config(tmp_path, port, **{"restore.denoiser": "unet", "restore.policy": "latest"})
    core, _camera = make_sim_core((192, 192), peak_photons=20.0, exposure_ms=2.0, seed=4)
    daemon = start_daemon(cfg)
    try:
        base = daemon.dashboard.url
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 960})
            page.goto(base)
            _wait_text(page, "#conn", "live", timeout_s=20)
            assert page.is_visible("#empty")  # no run yet

            # a live run: the restored picture changes as frames arrive
            mda = acquire(core, cfg, "cells-1", 40, interval_s=0.1)
            _wait_text(page, "#sel-run", "cells-1", timeout_s=30)
            seen = _restored_frames_seen(page, 3)
            assert len(seen) >= 3, f"the restored image showed only time points {seen}"
            assert page.get_attribute("#img-raw", "data-t") is not None
            mda.join(60)
            assert mda.result["report"].acked == 40

            # the run ends: the page says so and its counters are the API's
            _wait_text(page, "#sel-state", "finished")
            api = _counters_match(page, base, "cells-1")
            assert api["frames_written"] == 40 and api["frames_restored"] == 40
            assert page.get_attribute("#img-restored", "data-t") == "39"  # the last frame, restored

            # the slider shows frames on disk, and "live" goes back to the newest
            page.wait_for_function("() => +document.getElementById('tslider').max === 39", timeout=10000)
            page.eval_on_selector("#tslider", "(e) => { e.value = 7; e.dispatchEvent(new Event('input')); }")
            page.wait_for_function("() => document.getElementById('img-restored').dataset.t === '7' && "
                                   "document.getElementById('img-raw').dataset.t === '7'", timeout=10000)
            page.click("#live")
            page.wait_for_function("() => document.getElementById('img-restored').dataset.t === '39'",
                                   timeout=10000)
            time.sleep(1.5)  # the charts take another sample
            shot = tmp_path / "dashboard.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("LOWDOSE_SCREENSHOT"):
                shutil.copy(shot, os.environ["LOWDOSE_SCREENSHOT"])

            # the daemon restarts on the same port: the page reconnects and follows the new run
            daemon.stop()
            _wait_text(page, "#conn", "reconnecting", timeout_s=20)
            daemon = start_daemon(cfg)
            _wait_text(page, "#conn", "live", timeout_s=30)
            mda = acquire(core, cfg, "cells-2", 20, interval_s=0.1)
            _wait_text(page, "#sel-run", "cells-2", timeout_s=30)
            assert len(_restored_frames_seen(page, 2)) >= 2
            mda.join(60)
            _wait_text(page, "#sel-state", "finished")
            api = _counters_match(page, base, "cells-2")
            assert api["frames_written"] == 20
            browser.close()
    finally:
        daemon.stop()
        close_core(core)
