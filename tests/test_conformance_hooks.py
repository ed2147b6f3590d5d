"""Both hooks pass ``lowdose.testing.HookTests``: a real MMCore with DemoCamera, a real daemon."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from useq import MDASequence

from lowdose.client import HookConfig, PycromanagerHook, PymmcorePlusHook
from lowdose.testing import HookTests
from lowdose.testing.hooks import Acquisition, FinishedRun

# Small frames keep a run quick; the hook tests elsewhere stream full 512x512 frames.
ROI = (0, 0, 64, 48)


class Capture:
    """A second pymmcore-plus output handler: the frames as the camera delivered them."""

    def __init__(self) -> None:
        self.frames: dict[tuple[int, int, int], np.ndarray] = {}

    def frameReady(self, img, event, meta) -> None:
        index = event.index
        self.frames[(index.get("t", 0), index.get("c", 0), index.get("z", 0))] = img.copy()


class TestPymmcorePlusHookConformance(HookTests):
    source = "pymmcore-plus"

    @pytest.fixture
    def core(self, demo_core):
        demo_core.setROI(*ROI)
        demo_core.setExposure(1.0)
        return demo_core

    def acquire(self, core, hook_config: HookConfig, run_id: str, n_frames: int) -> Acquisition:
        hook = PymmcorePlusHook(hook_config, run=run_id, instrument=self.instrument)
        capture = Capture()
        # A non-zero interval: with 0, pymmcore-plus runs a hardware sequence, and DemoCamera under a
        # loaded CI machine can return fewer images than asked (its "Unexpected number of images"),
        # a camera-side loss the hook never saw and this suite must not blame on it.
        core.mda.run(
            MDASequence(time_plan={"interval": 0.005, "loops": n_frames}), output=[hook, capture]
        )
        return Acquisition(hook=hook, frames=capture.frames)

    def test_each_check_fails_on_a_broken_run(self, finished_run: FinishedRun) -> None:
        """The suite's checks are not vacuous: one real run, spoilt one way per check, fails it."""
        run, n = finished_run, self.n_frames
        tampered = {k: v.copy() for k, v in run.frames.items()}
        tampered[(2, 0, 0)][0, 0] ^= 1  # one bit of one frame differs from the store
        broken = {
            "test_report_says_ok": [
                replace(run, report=replace(run.report, unacked=1)),
                replace(run, report=replace(run.report, frames=n - 1)),
            ],
            "test_every_frame_stored_exactly_once": [
                replace(run, frames=tampered),
                replace(run, frames={k: v for k, v in run.frames.items() if k != (3, 0, 0)}),
                replace(run, status={**run.status, "frames_written": n - 1}),
            ],
            "test_store_names_source_and_instrument": [
                replace(run, attrs={**run.attrs, "source": "elsewhere"}),
                replace(run, attrs={**run.attrs, "instrument": "unknown"}),
            ],
            "test_run_finishes_restored_complete": [
                replace(run, status={**run.status, "state": "restoring"}),
                replace(
                    run,
                    attrs={
                        **run.attrs,
                        "summary": {**run.attrs["summary"], "frames_restored": n - 1},
                    },
                ),
            ],
        }
        for test, runs in broken.items():
            getattr(self, test)(run)  # the real run passes
            for bad in runs:
                with pytest.raises(AssertionError):
                    getattr(self, test)(bad)
        assert set(broken) == {t for t in dir(HookTests) if t.startswith("test_")}


class TestPycromanagerHookConformance(HookTests):
    source = "pycromanager"

    @pytest.fixture
    def core(self, pycromanager_headless):
        pycromanager_headless.set_roi(*ROI)
        pycromanager_headless.set_exposure(1.0)
        return pycromanager_headless

    def acquire(self, core, hook_config: HookConfig, run_id: str, n_frames: int) -> Acquisition:
        from pycromanager import Acquisition as PmAcquisition
        from pycromanager import multi_d_acquisition_events

        hook = PycromanagerHook(hook_config, run=run_id, instrument=self.instrument)
        frames: dict[tuple[int, int, int], np.ndarray] = {}

        def process(image, metadata):
            axes = metadata["Axes"]
            frames[(axes.get("time", 0), 0, axes.get("z", 0))] = image.copy()
            return hook.image_process_fn(image, metadata)

        events = multi_d_acquisition_events(num_time_points=n_frames)
        with PmAcquisition(
            image_process_fn=process, notification_callback_fn=hook.notification_callback_fn
        ) as acq:
            acq.acquire(events)
        return Acquisition(hook=hook, frames=frames)
