"""pycromanager's Python backend (a real MMCore, DemoCamera) through the hook to a ROUTER."""

from __future__ import annotations

import numpy as np
from conftest import frame_pixels

from lowdose.plugins.acquisition.pycromanager_hook import PycromanagerHook


def test_pycromanager_acquisition_frames_arrive_unchanged_in_order(
    pycromanager_headless, fake_daemon, hook_cfg_factory
):
    from pycromanager import Acquisition, multi_d_acquisition_events

    core = pycromanager_headless
    core.set_exposure(1.0)
    hook = PycromanagerHook(hook_cfg_factory(fake_daemon.endpoint), run="pm-acq", instrument="demo")
    seen: list[tuple[dict, np.ndarray]] = []
    milestones: list[str] = []

    def process(image, metadata):
        # what pycromanager hands on after the hook: must be the very same frame
        out = hook.image_process_fn(image, metadata)
        assert out[0] is image and out[1] is metadata
        seen.append((dict(metadata["Axes"]), image.copy()))
        return out

    def notify(notification):
        milestones.append(notification.milestone)
        hook.notification_callback_fn(notification)

    events = multi_d_acquisition_events(
        num_time_points=35, channel_group="Channel", channels=["DAPI", "FITC"], z_start=0, z_end=1, z_step=1
    )
    with Acquisition(image_process_fn=process, notification_callback_fn=notify) as acq:
        acq.acquire(events)
    stored = acq.get_dataset().read_image(time=3, channel="FITC", z=1)
    n = 35 * 2 * 2
    assert len(seen) == n and "data_sink_finished" in milestones

    report = hook.report(timeout=30)
    assert report is not None and report.ok, report
    assert report.frames == n and report.reason == "finished"
    got = fake_daemon.frames("pm-acq")
    assert sorted(got) == list(range(n))
    assert [s for r, s in fake_daemon.receipts if r == "pm-acq"] == list(range(n))
    channels = {"DAPI": 0, "FITC": 1}
    for seq, (axes, pixels) in enumerate(seen):
        rec = got[seq]
        np.testing.assert_array_equal(frame_pixels(rec), pixels)
        assert rec.frame.index.model_dump() == {"t": axes["time"], "p": 0, "c": channels[axes["channel"]], "z": axes["z"]}
        assert rec.frame.exposure_ms == 1.0
        assert rec.frame.metadata["Axes"] == axes
    assert not np.array_equal(seen[0][1], seen[1][1])  # Noise mode: distinct frames
    # pycromanager's own storage received the unchanged frame too
    (idx,) = [i for i, (axes, _) in enumerate(seen) if axes == {"time": 3, "channel": "FITC", "z": 1}]
    np.testing.assert_array_equal(stored, seen[idx][1])

    (start,) = fake_daemon.starts
    assert start.source == "pycromanager" and start.shape == (512, 512) and start.dtype == "uint16"
    assert start.pixel_size_um == 1.0
    assert fake_daemon.ends["pm-acq"].frames == n
    hook.close()
