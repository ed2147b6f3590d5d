"""Every installed denoiser passes ``lowdose.testing.DenoiserTests``; the suite catches broken ones.

One test class per entry point of the ``lowdose.denoisers`` group, made at import: a newly
installed plug-in (ours or a third party's) is tested without editing this file.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any, ClassVar

import pytest

from lowdose.models.denoisers import resolve_auto
from lowdose.plugins.denoisers.interface import Denoiser
from lowdose.plugins.denoisers.registry import available_denoisers, create_denoiser
from lowdose.testing import DenoiserTests

pytest_plugins = ["pytester"]  # the suite is run on broken denoisers in a nested session
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Sampling the DDPM twice with two DDIM steps checks the contract; its quality is tested elsewhere.
FAST_OPTIONS: dict[str, dict[str, Any]] = {"ddpm": {"samples": 2, "steps": 2}}
# lowdose's own plug-ins, learned or not; a third party's checksum is only checked for its form
OWN_LEARNED = {"identity": False, "classical": False, "unet": True, "n2v": True, "ddpm": True, "risk-weighted": True}


class InstalledDenoiser(DenoiserTests):
    """A denoiser built by name through the registry, as the daemon builds it."""

    entry_point: ClassVar[str]
    expected_device = "cpu"

    def make_denoiser(self) -> Denoiser:
        return create_denoiser(self.entry_point, FAST_OPTIONS.get(self.entry_point), device="cpu")


def _suite_for(entry_point: str) -> type[InstalledDenoiser]:
    # auto's info names the model it picked, not "auto"
    name = resolve_auto("cpu") if entry_point == "auto" else entry_point
    knobs = {
        "entry_point": entry_point,
        "expected_name": name,
        "learned": OWN_LEARNED.get(name),
        "__module__": __name__,
    }
    return type(_class_name(entry_point), (InstalledDenoiser,), knobs)


def _class_name(entry_point: str) -> str:
    return "TestDenoiser_" + re.sub(r"\W", "_", entry_point)


INSTALLED = sorted(available_denoisers())
for _entry_point in INSTALLED:
    _suite = _suite_for(_entry_point)
    globals()[_suite.__name__] = _suite


def test_every_shipped_denoiser_is_installed_and_tested() -> None:
    assert {*OWN_LEARNED, "auto"} <= set(INSTALLED)
    for name in INSTALLED:
        assert _class_name(name) in globals()


# ------------------------------------------------------------------ the suite can fail

# Each broken denoiser breaks one promise; the test named beside it must fail on it. Together
# they cover every test of the suite, so a check that can no longer fail shows up here.
BROKEN = textwrap.dedent(
    """
    from dataclasses import replace

    import numpy as np
    import pytest

    from lowdose.plugins.denoisers.interface import DenoiserInfo, Restoration, check_frames
    from lowdose.testing import DenoiserTests

    OK = DenoiserInfo(name="fake", version="1")


    # A correct denoiser (identity); each broken one below replaces one of its steps.
    class Fake:

        info = OK

        def restore(self, frames, *, offset=None, gain=None):
            frames = self.check(frames)
            return self.wrap(self.out(frames.copy(), offset), self.unc(frames))

        def check(self, frames):
            return check_frames(frames)

        def out(self, frames, offset):
            return frames

        def unc(self, frames):
            return None

        def wrap(self, frames, uncertainty):
            return Restoration(frames=frames, uncertainty=uncertainty)


    def make(**methods):
        return type("Broken", (Fake,), methods)


    def vague_check(self, frames):
        if np.ndim(frames) != 3:
            raise ValueError("bad input")
        return frames


    def touches_input(self, frames):
        frames[0, 0, 0] += 1
        return check_frames(frames)


    def noisy(self, frames, offset):
        return frames + np.random.default_rng().integers(0, 2, frames.shape).astype(frames.dtype)


    BROKEN = {
        "returns_array": make(wrap=lambda self, f, u: f),
        "crops": make(out=lambda self, f, o: f[:, :, :-1]),
        "drops_batch": make(out=lambda self, f, o: f[:1]),
        "float64": make(out=lambda self, f, o: f.astype(np.float64)),
        "nan": make(out=lambda self, f, o: f * np.nan),
        "electrons": make(out=lambda self, f, o: f - np.asarray(o or 0, f.dtype)),
        "flattens": make(out=lambda self, f, o: np.full_like(f, f.mean())),
        "no_rank_check": make(check=lambda self, f: np.asarray(f)),
        "vague_rank_error": make(check=vague_check),
        "random": make(out=noisy),
        "bad_checksum": make(info=replace(OK, checksum="abc")),
        "zero_batch": make(info=replace(OK, preferred_batch=0)),
        "no_version": make(info=replace(OK, version="")),
        "no_device": make(info=replace(OK, device="")),
        "says_uncertain": make(info=replace(OK, has_uncertainty=True)),
        "hides_uncertainty": make(unc=lambda self, f: np.ones(f.shape, np.float32)),
        "in_place": make(check=touches_input),
    }


    def suite(key):
        return type(f"Test_{key}", (DenoiserTests,), {"make_denoiser": lambda self: BROKEN[key]()})


    for key in BROKEN:
        globals()[f"Test_{key}"] = suite(key)


    class TestFake(DenoiserTests):
        expected_name = "fake"
        learned = False
        frame_shape = (24, 20)  # the knobs reach the tests
        dtypes = (np.uint16, np.float32, np.float64)

        def make_denoiser(self):
            return Fake()
    """
)

# broken denoiser -> tests of the suite it must fail
MUST_FAIL = {
    "returns_array": ["test_is_a_denoiser_and_returns_a_restoration"],
    "crops": ["test_shape_preserved[1]", "test_shape_preserved[3]"],
    "drops_batch": ["test_shape_preserved[3]"],
    "float64": ["test_dtype_preserved[uint16]", "test_dtype_preserved[float32]"],
    "nan": ["test_dtype_preserved[float32]"],
    "electrons": [
        "test_flat_frame_keeps_its_level[uint16]",
        "test_two_levels_keep_their_scale[camera-given]",
    ],
    "flattens": [
        "test_two_levels_keep_their_scale[camera-given]",
        "test_two_levels_keep_their_scale[camera-estimated]",
    ],
    "no_rank_check": [
        "test_wrong_rank_is_a_clear_value_error[40x56]",
        "test_non_numeric_dtype_raises[complex64]",
        "test_non_numeric_dtype_raises[bool]",
        "test_non_numeric_dtype_raises[str]",
        "test_non_numeric_dtype_raises[object]",
    ],
    "vague_rank_error": ["test_wrong_rank_is_a_clear_value_error[1x1x40x56]"],
    "random": ["test_same_input_same_output"],
    "bad_checksum": ["test_info_complete"],
    "zero_batch": ["test_info_complete"],
    "no_version": ["test_info_complete"],
    "no_device": ["test_info_complete"],
    "says_uncertain": ["test_uncertainty_matches_info"],
    "hides_uncertainty": ["test_uncertainty_matches_info"],
    "in_place": ["test_input_not_modified[uint16]", "test_input_not_modified[float32]"],
}


def _suite_tests() -> set[str]:
    return {name for name in dir(DenoiserTests) if name.startswith("test_")}


def test_the_suite_fails_broken_denoisers_and_passes_a_correct_one(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_broken=BROKEN)
    rec = pytester.inline_run("-p", "no:cacheprovider", "-q")
    passed, skipped, failed = rec.listoutcomes()
    failed_ids = {r.nodeid.split("::", 1)[1] for r in failed}
    passed_ids = {r.nodeid.split("::", 1)[1] for r in passed}
    assert not skipped
    # the base class itself is not collected, the correct fake passes everything
    assert not any(i.startswith("DenoiserTests") for i in failed_ids | passed_ids)
    fake = {i for i in failed_ids | passed_ids if i.startswith("TestFake::")}
    assert fake <= passed_ids, sorted(fake - passed_ids)
    assert {
        "TestFake::test_dtype_preserved[float64]",
        "TestFake::test_wrong_rank_is_a_clear_value_error[24x20]",
    } <= fake
    for key, tests in MUST_FAIL.items():
        for test in tests:
            assert f"Test_{key}::{test}" in failed_ids, (
                f"{test} did not fail on the {key!r} denoiser"
            )
    caught = {t.split("[")[0] for tests in MUST_FAIL.values() for t in tests}
    assert caught == _suite_tests(), (
        f"no broken denoiser shows these can fail: {_suite_tests() - caught}"
    )
