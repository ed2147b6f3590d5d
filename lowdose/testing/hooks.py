"""``HookTests``: the conformance suite every acquisition hook must pass against a real daemon.

A hook is what runs in the microscope's process: it numbers the camera's frames and streams
them to the daemon (``docs/design.md`` rules 1 and 2). Whatever the acquisition software, the
outcome must be the same: every frame the camera produced is acknowledged and stored exactly
once, unchanged and at its index, the hook's report says so, the store names the hook's source
and the instrument, and the run finishes (every frame restored). This suite starts a real
in-process :class:`~lowdose.daemon.server.Daemon` (identity denoiser, output in ``tmp_path``,
TCP on a free port), lets the subclass run an acquisition on a real core, and reads the store
back with zarr-python. Each test runs its own small acquisition.

A subclass provides a ``core`` fixture and :meth:`HookTests.acquire`::

    class TestMyHook(HookTests):
        source = "my-software"  # what the hook puts in Start.source

        @pytest.fixture
        def core(self):
            core = start_my_core()
            yield core
            core.shutdown()

        def acquire(self, core, hook_config, run_id, n_frames):
            hook = MyHook(hook_config, run=run_id, instrument=self.instrument)
            frames = run_time_lapse(core, hook, n_frames)  # {(t, c, z): pixels as delivered}
            return Acquisition(hook=hook, frames=frames)
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pytest
import zarr

from lowdose.daemon.config import load_config
from lowdose.daemon.server import Daemon
from lowdose.wire.hook_config import HookConfig


class Hook(Protocol):
    """What the suite needs of a hook once the acquisition has run."""

    def report(self, timeout: float | None = None) -> Any: ...

    def close(self, timeout: float | None = None) -> Any: ...


@dataclass
class Acquisition:
    """What :meth:`HookTests.acquire` hands back.

    ``frames`` maps (t, c, z) to the pixels the camera delivered (a copy, taken beside the hook);
    empty when the acquisition software gives no way to see them, which skips the pixel check.
    """

    hook: Hook
    frames: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)


@dataclass
class FinishedRun:
    """A run the daemon finished, as the tests see it."""

    run: str
    report: Any  # the hook's FinishReport
    frames: dict[tuple[int, int, int], np.ndarray]
    status: dict[str, Any]  # the daemon's status of the run
    store: Path
    attrs: dict[str, Any]  # the store root's "lowdose" attributes

    def image(self, name: str) -> np.ndarray:
        """``raw`` or ``restored`` of position 0, TCZYX."""
        return zarr.open_group(str(self.store), mode="r")[f"{name}/0"][:]


def free_tcp_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


class HookTests:
    """Base class of a hook's conformance tests; not collected itself (no ``Test`` prefix)."""

    source: ClassVar[str] = ""  # the hook's Start.source, e.g. "pymmcore-plus"
    instrument: ClassVar[str] = "conformance-scope"
    n_frames: ClassVar[int] = 6
    timeout_s: ClassVar[float] = 60.0

    def acquire(
        self, core: Any, hook_config: HookConfig, run_id: str, n_frames: int
    ) -> Acquisition:
        """Run an acquisition of ``n_frames`` frames on ``core`` through the hook, to its end.

        The hook must be built from ``hook_config`` with run id ``run_id`` and instrument
        ``self.instrument``. Return once the acquisition software is done; the suite waits for
        the hook's report itself.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement acquire()")

    @pytest.fixture
    def core(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must provide a `core` fixture")

    # -- fixtures -----------------------------------------------------------------------------

    def daemon_overrides(self, tmp_path: Path, endpoint: str) -> dict[str, Any]:
        """The daemon's configuration (``load_config`` overrides): identity, fifo, no extras."""
        return {
            "server.endpoints": [endpoint],
            "server.preview_endpoint": None,
            "storage.output_dir": str(tmp_path / "data"),
            "storage.fsync": False,  # durability is the daemon's tests' business, not the hook's
            "restore.denoiser": "identity",
            "restore.device": "cpu",
            "restore.policy": "fifo",
            "metrics.port": 0,
        }

    @pytest.fixture
    def daemon(self, tmp_path: Path) -> Iterator[Daemon]:
        d = Daemon(
            load_config(None, overrides=self.daemon_overrides(tmp_path, free_tcp_endpoint()))
        )
        d.start()
        yield d
        d.stop(timeout=30)

    @pytest.fixture
    def hook_config(self, daemon: Daemon, tmp_path: Path) -> HookConfig:
        return HookConfig(
            endpoint=daemon.cfg.server.endpoints[0],
            spool_dir=tmp_path / "spool",
            memory_mb=64.0,
            ack_timeout_s=3.0,
            heartbeat_s=0.25,
            close_timeout_s=self.timeout_s,
        )

    @pytest.fixture
    def finished_run(
        self, core: Any, daemon: Daemon, hook_config: HookConfig
    ) -> Iterator[FinishedRun]:
        run = f"conformance-{uuid.uuid4().hex[:8]}"
        acq = self.acquire(core, hook_config, run, self.n_frames)
        try:
            report = acq.hook.report(timeout=self.timeout_s)
            status = self.wait_finished(daemon, run)
            store = Path(status.get("store") or daemon.cfg.storage.output_dir / f"{run}.ome.zarr")
            attrs = dict(zarr.open_group(str(store), mode="r").attrs.get("lowdose", {}))
            yield FinishedRun(
                run=run, report=report, frames=acq.frames, status=status, store=store, attrs=attrs
            )
        finally:
            acq.hook.close(timeout=self.timeout_s)

    def wait_finished(self, daemon: Daemon, run: str) -> dict[str, Any]:
        """The daemon's status of ``run`` once finished; the last one seen after the timeout."""
        deadline = time.monotonic() + self.timeout_s
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = next((r for r in daemon.status()["runs"] if r["run"] == run), {})
            if last.get("state") == "finished":
                break
            time.sleep(0.05)
        return last

    # -- the contract -------------------------------------------------------------------------

    def test_report_says_ok(self, finished_run: FinishedRun) -> None:
        report, n = finished_run.report, self.n_frames
        assert report is not None, "the hook gave no report: did the acquisition reach it?"
        assert report.run == finished_run.run, f"the report is of run {report.run!r}"
        assert report.frames == n and report.acked == n, (
            f"{n} frames acquired; the report says {report}"
        )
        assert report.unacked == 0 and report.rejected == 0, f"frames left unacknowledged: {report}"
        assert report.finished and report.ok, f"the daemon did not confirm the end: {report}"
        assert report.reason == "finished", f"the run ended as {report.reason!r}, not 'finished'"

    def test_every_frame_stored_exactly_once(self, finished_run: FinishedRun) -> None:
        n, status = self.n_frames, finished_run.status
        assert status.get("frames_written") == n, (
            f"the daemon wrote {status.get('frames_written')} of {n} frames"
        )
        summary = finished_run.attrs.get("summary", {})
        assert summary.get("frames_written") == n and summary.get("missing_seq_count") == 0, summary
        raw = finished_run.image("raw")
        assert int(np.prod(raw.shape[:3])) == n, (
            f"raw holds {raw.shape[:3]} (t, c, z) frames for {n} acquired"
        )
        frames = finished_run.frames
        if not frames:
            return
        assert len(frames) == n, f"acquire() saw {len(frames)} frames of the {n} asked for"
        # identical frames would make the comparison below blind to order and duplication
        assert len({f.tobytes() for f in frames.values()}) == n, (
            "the camera delivered identical frames"
        )
        for (t, c, z), pixels in frames.items():
            np.testing.assert_array_equal(
                raw[t, c, z],
                pixels,
                err_msg=f"raw[t={t}, c={c}, z={z}] differs from what the camera delivered",
            )

    def test_store_names_source_and_instrument(self, finished_run: FinishedRun) -> None:
        attrs = finished_run.attrs
        assert self.source, f"{type(self).__name__} must set `source`"
        assert attrs.get("source") == self.source, f"the store's source is {attrs.get('source')!r}"
        assert attrs.get("instrument") == self.instrument, (
            f"the store's instrument is {attrs.get('instrument')!r}"
        )
        assert attrs.get("run") == finished_run.run, f"the store's run is {attrs.get('run')!r}"

    def test_run_finishes_restored_complete(self, finished_run: FinishedRun) -> None:
        n, status = self.n_frames, finished_run.status
        assert status.get("state") == "finished", (
            f"the run did not finish within {self.timeout_s:g} s: {status}"
        )
        # At least n: the daemon's counters count restorations, and a frame backfilled while its
        # live turn was still queued is restored twice; the store counts frames.
        restored_n = status.get("frames_restored_live", 0) + status.get(
            "frames_restored_backfill", 0
        )
        assert restored_n >= n, f"{restored_n} of {n} frames restored: {status}"
        summary = finished_run.attrs.get("summary", {})
        assert summary.get("frames_restored") == n, (
            f"the store's summary says {summary.get('frames_restored')}"
        )
        assert summary.get("restoration", {}).get("pending") == 0, (
            f"frames left to restore: {summary}"
        )
        # the identity denoiser: restored must equal raw everywhere
        np.testing.assert_array_equal(finished_run.image("restored"), finished_run.image("raw"))


__all__ = ["Acquisition", "FinishedRun", "Hook", "HookTests", "free_tcp_endpoint"]
