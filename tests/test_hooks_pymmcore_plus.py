"""A real DemoCamera MDA (pymmcore-plus + mm-test-adapters) through the hook to a ROUTER."""

from __future__ import annotations

import numpy as np
from conftest import frame_pixels
from useq import MDASequence

from lowdose.plugins.acquisition.pymmcore_plus_hook import PymmcorePlusHook


class Capture:
    """A second output handler: what the camera delivered, kept in-process."""

    def __init__(self) -> None:
        self.frames: list[tuple[dict, np.ndarray]] = []

    def frameReady(self, img, event, meta) -> None:
        self.frames.append((dict(event.index), img.copy()))


def test_democamera_mda_frames_arrive_in_order_bit_identical(demo_core, fake_daemon, hook_cfg_factory):
    demo_core.setExposure(1.0)
    seq = MDASequence(
        time_plan={"interval": 0, "loops": 20},
        channels=["DAPI", "FITC"],
        z_plan={"range": 2, "step": 1},
        axis_order="tcz",
    )
    assert seq.sizes["t"] * seq.sizes["c"] * seq.sizes["z"] == 120
    hook = PymmcorePlusHook(hook_cfg_factory(fake_daemon.endpoint), run="demo-mda", instrument="demo")
    capture = Capture()
    demo_core.mda.run(seq, output=[hook, capture])
    report = hook.report(timeout=30)
    assert report is not None and report.ok, report
    assert report.frames == 120 and report.reason == "finished"

    got = fake_daemon.frames("demo-mda")
    assert sorted(got) == list(range(120))
    assert [s for r, s in fake_daemon.receipts if r == "demo-mda"] == list(range(120))  # in order, once
    for seq_no, (index, pixels) in enumerate(capture.frames):
        rec = got[seq_no]
        np.testing.assert_array_equal(frame_pixels(rec), pixels)
        assert rec.frame.index.model_dump() == {"t": index["t"], "p": 0, "c": index["c"], "z": index["z"]}
        assert rec.frame.exposure_ms == 1.0
        assert rec.frame.metadata["channel"] == ("DAPI", "FITC")[index["c"]]
        assert rec.frame.elapsed_ms is not None and rec.frame.elapsed_ms >= 0
    # frames really differ (Noise mode), so bit-identity is a real check
    assert not np.array_equal(capture.frames[0][1], capture.frames[1][1])

    (start,) = fake_daemon.starts
    assert start.source == "pymmcore-plus" and start.instrument == "demo"
    assert start.shape == (512, 512) and start.dtype == "uint16"
    assert start.sizes == {"t": 20, "p": 1, "c": 2, "z": 3}
    assert start.channel_names == ["DAPI", "FITC"]
    assert start.pixel_size_um == 1.0 and start.z_step_um == 1.0 and start.frame_interval_s == 0.0
    assert start.sequence is not None and start.sequence["time_plan"]["loops"] == 20
    assert start.summary["image_infos"][0]["plane_shape"] == [512, 512]
    assert fake_daemon.ends["demo-mda"].frames == 120
    hook.close()


def test_attached_hook_forwards_cancel_as_end_reason(demo_core, fake_daemon, hook_cfg_factory):
    demo_core.setExposure(1.0)
    cfg = hook_cfg_factory(fake_daemon.endpoint)
    delivered: list[int] = []

    def cancel_after_five(img, event, meta):
        delivered.append(event.index["t"])
        if len(delivered) == 5:
            demo_core.mda.cancel()

    with PymmcorePlusHook(cfg, run="demo-cancel").attach(demo_core) as hook:
        demo_core.mda.events.frameReady.connect(cancel_after_five)
        demo_core.mda.run(MDASequence(time_plan={"interval": 0.01, "loops": 200}))
        demo_core.mda.events.frameReady.disconnect(cancel_after_five)
        report = hook.report(timeout=20)
    assert report is not None and report.reason == "cancelled" and report.ok
    n = len(delivered)
    assert 5 <= n < 200
    assert fake_daemon.ends["demo-cancel"].reason == "cancelled"
    assert fake_daemon.ends["demo-cancel"].frames == n
    assert sorted(fake_daemon.frames("demo-cancel")) == list(range(n))
    # detached: another MDA does not reach the hook
    demo_core.mda.run(MDASequence(time_plan={"interval": 0, "loops": 3}))
    assert len(fake_daemon.starts) == 1


def test_each_sequence_is_its_own_run(demo_core, fake_daemon, hook_cfg_factory):
    demo_core.setExposure(1.0)
    hook = PymmcorePlusHook(hook_cfg_factory(fake_daemon.endpoint), run="demo-two")
    demo_core.mda.run(MDASequence(time_plan={"interval": 0, "loops": 4}), output=hook)
    demo_core.mda.run(MDASequence(time_plan={"interval": 0, "loops": 6}), output=hook)
    hook.close(timeout=20)
    assert [s.run for s in fake_daemon.starts] == ["demo-two", "demo-two-2"]
    assert len(fake_daemon.frames("demo-two")) == 4 and len(fake_daemon.frames("demo-two-2")) == 6
    assert all(s.wait(1).ok for s in hook.senders)


def test_daemon_killed_mid_mda_loses_nothing(demo_core, fake_daemon, hook_cfg_factory):
    """SIGKILL-like death of the daemon during the MDA; it comes back after the MDA ends."""
    demo_core.setExposure(1.0)
    frame_bytes = 512 * 512 * 2
    cfg = hook_cfg_factory(fake_daemon.endpoint, ack_timeout_s=0.5, memory_mb=20 * frame_bytes / 2**20)
    hook = PymmcorePlusHook(cfg, run="demo-kill")
    capture = Capture()

    def kill_at_30(img, event, meta):
        if event.index["t"] == 30:
            fake_daemon.kill()

    demo_core.mda.events.frameReady.connect(kill_at_30)
    demo_core.mda.run(MDASequence(time_plan={"interval": 0, "loops": 120}), output=[hook, capture])
    demo_core.mda.events.frameReady.disconnect(kill_at_30)
    counters = hook.counters()
    assert counters is not None and counters.spooled > 0  # past 20 frames of RAM, frames went to disk
    fake_daemon.restart()
    report = hook.report(timeout=30)
    assert report is not None and report.ok, report
    got = fake_daemon.frames("demo-kill")
    assert sorted(got) == list(range(120))
    for seq_no, (_, pixels) in enumerate(capture.frames):
        np.testing.assert_array_equal(frame_pixels(got[seq_no]), pixels)
    assert report.counters.reconnects + report.counters.restarts >= 1
    assert not (cfg.spool_dir / "demo-kill").exists()
