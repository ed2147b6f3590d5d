"""``DenoiserTests``: the conformance suite every denoiser plug-in must pass.

The daemon trusts a denoiser with nothing but :class:`~lowdose.plugins.denoisers.interface.Denoiser`:
frames of shape (N, Y, X) in camera units (ADU) in, the same shape, dtype and units out, clear
errors for what it cannot take, the same answer for the same input, and an ``info`` complete
enough to be stored as the provenance of every restored frame. This suite checks exactly that.
It ships with lowdose, as zarr-python's ``StoreTests`` does, so a third-party plug-in is held to
the same contract as lowdose's own ones.

Writing a denoiser plug-in
--------------------------

Register a factory (a class, or a function taking ``device`` and your options as keyword
arguments) in the ``lowdose.denoisers`` entry-point group of your ``pyproject.toml``::

    [project.entry-points."lowdose.denoisers"]
    mydenoiser = "mypackage.denoise:MyDenoiser"

Its instances need an ``info`` (:class:`DenoiserInfo`) and ``restore(frames, *, offset=None,
gain=None)`` returning a :class:`Restoration` (``BaseDenoiser`` does the validation and the
dtype cast for you). ``restore.denoiser: mydenoiser`` in ``config.yaml`` then selects it.
Test it by subclassing the suite (the name must start with ``Test`` to be collected)::

    # tests/test_mydenoiser.py
    from lowdose.testing import DenoiserTests
    from mypackage.denoise import MyDenoiser


    class TestMyDenoiser(DenoiserTests):
        expected_name = "mydenoiser"  # what info.name must say
        learned = True  # info.checksum: the sha256 of the weights
        frame_shape = (64, 64)  # knobs: dtypes, tolerances, the camera's offset and gain...

        def make_denoiser(self):
            return MyDenoiser(device="cpu", strength=0.5)

Every check is a test method that a subclass may override; the class attributes below
(frame size, dtypes, tolerances, the camera) are the knobs.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

import numpy as np
import pytest

from lowdose.plugins.denoisers.interface import Denoiser, DenoiserInfo, Restoration

_SHA256 = re.compile(r"[0-9a-f]{64}")


def camera_frames(
    photons: np.ndarray, offset: float, gain: float, dtype: Any, seed: int
) -> np.ndarray:
    """What a camera gives for an expected photon count per pixel: ``offset + gain * Poisson``, in ADU."""
    rng = np.random.default_rng(seed)
    return (offset + gain * rng.poisson(photons)).astype(dtype)


def two_level_photons(n: int, shape: tuple[int, int], dim: float, bright: float) -> np.ndarray:
    """Left half ``dim``, right half ``bright`` photons: a denoiser that loses the scale shows it."""
    photons = np.full((n, *shape), float(dim))
    photons[:, :, shape[1] // 2 :] = float(bright)
    return photons


class DenoiserTests:
    """Base class of a denoiser's conformance tests; not collected itself (no ``Test`` prefix).

    Subclasses provide :meth:`make_denoiser` and may change the knobs. One denoiser is built per
    class (the ``denoiser`` fixture is class-scoped); the determinism test builds a second one.
    """

    # -- knobs --------------------------------------------------------------------------------
    # not a multiple of 16, so a network's padding must undo itself
    frame_shape: ClassVar[tuple[int, int]] = (40, 56)
    batch: ClassVar[int] = 3  # the N > 1 case
    dtypes: ClassVar[tuple[Any, ...]] = (np.uint16, np.float32)
    bad_dtypes: ClassVar[tuple[Any, ...]] = (np.complex64, np.bool_, np.str_, object)
    bad_shapes: ClassVar[tuple[tuple[int, ...], ...] | None] = None  # None: rank 2 and 4
    offset: ClassVar[float] = 100.0  # the camera's dark level, ADU
    gain: ClassVar[float] = 2.0  # ADU per photo-electron; not 1, so that a dropped gain shows
    flat_photons: ClassVar[float] = 20.0
    levels_photons: ClassVar[tuple[float, float]] = (10.0, 60.0)
    # A flat field has nothing to denoise: its mean must stay within this fraction of the
    # signal above the offset (plus level_atol_adu for rounding to whole ADU).
    flat_tolerance: ClassVar[float] = 0.05
    # Each level of the two-level frame: a units bug (offset dropped, gain ignored, output left
    # normalised) is off by 100% or more; 25% leaves room for a model's honest bias.
    scale_tolerance: ClassVar[float] = 0.25
    level_atol_adu: ClassVar[float] = 0.5
    determinism_atol: ClassVar[float] = 0.0  # exact on CPUs; a GPU plug-in may need more
    rank_error_match: ClassVar[str] = r"\(N, Y, X\)"  # the fix the rank error must name
    # What info must say, when known: None skips the check.
    expected_name: ClassVar[str | None] = None
    expected_device: ClassVar[str | None] = None  # "cpu" matches "cpu"; "cuda" matches "cuda:0"
    learned: ClassVar[bool | None] = None  # True: checksum is a sha256 hex; False: checksum is ""
    seed: ClassVar[int] = 1234

    def make_denoiser(self) -> Denoiser:
        """The denoiser under test, built the way a user would build it."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_denoiser()")

    # -- plumbing -----------------------------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Parametrize from the knobs, so a subclass's values are the ones tested."""
        h, w = self.frame_shape
        params = {
            "n_frames": (1, self.batch),
            "dtype": self.dtypes,
            "bad_dtype": self.bad_dtypes,
            "bad_shape": self.bad_shapes or ((h, w), (1, 1, h, w)),
            "estimate_camera": (False, True),
        }
        for name, values in params.items():
            if name in metafunc.fixturenames:
                metafunc.parametrize(name, values, ids=[_param_id(name, v) for v in values])

    @pytest.fixture(scope="class")
    @classmethod
    def denoiser(cls) -> Denoiser:
        # a class-scoped fixture outlives the test instances: build from a fresh one
        return cls().make_denoiser()

    def frames(
        self, n: int = 1, dtype: Any = np.uint16, photons: np.ndarray | None = None
    ) -> np.ndarray:
        """Noisy frames of a textured specimen (a gradient and a few blobs), in ADU."""
        if photons is None:
            y, x = np.mgrid[0 : self.frame_shape[0], 0 : self.frame_shape[1]]
            blobs = sum(
                40.0 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 8.0)
                for cy, cx in ((10, 12), (25, 40), (30, 15))
            )
            photons = np.broadcast_to(
                5.0 + 15.0 * x / self.frame_shape[1] + blobs, (n, *self.frame_shape)
            )
        return camera_frames(photons, self.offset, self.gain, dtype, self.seed + n)

    def restore(self, denoiser: Denoiser, frames: np.ndarray, **camera: Any) -> Restoration:
        camera = {"offset": self.offset, "gain": self.gain, **camera}
        return denoiser.restore(frames, **camera)

    def assert_level(
        self, restored: np.ndarray, raw: np.ndarray, tolerance: float, what: str
    ) -> None:
        got = float(np.mean(restored, dtype=np.float64))
        want = float(np.mean(raw, dtype=np.float64))
        allowed = tolerance * (want - self.offset) + self.level_atol_adu
        assert abs(got - want) <= allowed, (
            f"{what}: the restored mean is {got:.2f} ADU where the raw frames have {want:.2f} ADU "
            f"(camera offset {self.offset:g} ADU, gain {self.gain:g} ADU/e-); allowed +-{allowed:.2f}. "
            "Frames must come back in the input's camera units."
        )

    # -- the contract -------------------------------------------------------------------------

    def test_is_a_denoiser_and_returns_a_restoration(self, denoiser: Denoiser) -> None:
        assert isinstance(denoiser, Denoiser), (
            f"{type(denoiser).__name__} lacks `info` or `restore`: it does not satisfy the Denoiser protocol"
        )
        out = self.restore(denoiser, self.frames(1))
        assert isinstance(out, Restoration), (
            f"restore() returned {type(out).__name__}, not a Restoration"
        )
        assert isinstance(out.frames, np.ndarray), (
            f"Restoration.frames is a {type(out.frames).__name__}"
        )

    def test_shape_preserved(self, denoiser: Denoiser, n_frames: int) -> None:
        frames = self.frames(n_frames)
        out = self.restore(denoiser, frames).frames
        assert out.shape == frames.shape, f"restore() of {frames.shape} returned {out.shape}"

    def test_dtype_preserved(self, denoiser: Denoiser, dtype: Any) -> None:
        frames = self.frames(self.batch, dtype)
        out = self.restore(denoiser, frames).frames
        assert out.dtype == frames.dtype, f"restore() of {frames.dtype} frames returned {out.dtype}"
        assert np.all(np.isfinite(out)), "restore() returned NaN or infinite pixels"

    def test_flat_frame_keeps_its_level(self, denoiser: Denoiser, dtype: Any) -> None:
        photons = np.full((self.batch, *self.frame_shape), self.flat_photons)
        frames = self.frames(self.batch, dtype, photons)
        out = self.restore(denoiser, frames).frames
        self.assert_level(
            out, frames, self.flat_tolerance, f"flat {self.flat_photons:g} photons/pixel"
        )

    def test_two_levels_keep_their_scale(self, denoiser: Denoiser, estimate_camera: bool) -> None:
        """Both levels of a step survive, with the camera given and with it left to the denoiser."""
        dim, bright = self.levels_photons
        frames = self.frames(2, np.uint16, two_level_photons(2, self.frame_shape, dim, bright))
        camera = {"offset": None, "gain": None} if estimate_camera else {}
        out = self.restore(denoiser, frames, **camera).frames
        h, w = self.frame_shape
        m = max(2, min(h, w) // 8)  # away from the step and the borders
        for half, cols, level in (
            ("dim", slice(m, w // 2 - m), dim),
            ("bright", slice(w // 2 + m, w - m), bright),
        ):
            region = np.s_[:, m : h - m, cols]
            how = "camera estimated" if estimate_camera else "camera given"
            self.assert_level(
                out[region],
                frames[region],
                self.scale_tolerance,
                f"{half} half ({level:g} photons, {how})",
            )

    def test_wrong_rank_is_a_clear_value_error(
        self, denoiser: Denoiser, bad_shape: tuple[int, ...]
    ) -> None:
        frames = np.full(bad_shape, self.offset, np.uint16)
        with pytest.raises(ValueError) as exc:
            self.restore(denoiser, frames)
        message = str(exc.value)
        assert re.search(self.rank_error_match, message), (
            f"the error for a {frames.ndim}-D input does not say what restore() expects "
            f"(no match for {self.rank_error_match!r}): {message!r}"
        )
        assert str(bad_shape) in message, (
            f"the error does not name the shape it was given, {bad_shape}: {message!r}"
        )

    def test_non_numeric_dtype_raises(self, denoiser: Denoiser, bad_dtype: Any) -> None:
        frames = np.zeros((1, *self.frame_shape), dtype=bad_dtype)
        with pytest.raises((ValueError, TypeError)):
            self.restore(denoiser, frames)

    def test_same_input_same_output(self, denoiser: Denoiser) -> None:
        """Twice on one instance and once on a fresh one: a seed, not the moment, decides the output."""
        frames = self.frames(self.batch)
        first = self.restore(denoiser, frames)
        again = self.restore(denoiser, frames)
        fresh = self.restore(self.make_denoiser(), frames)
        for label, other in (("the same denoiser", again), ("a new denoiser built alike", fresh)):
            np.testing.assert_allclose(
                other.frames.astype(np.float64),
                first.frames.astype(np.float64),
                rtol=0,
                atol=self.determinism_atol,
                err_msg=f"the same frames restored by {label} differ",
            )
            if first.uncertainty is not None and other.uncertainty is not None:
                np.testing.assert_allclose(
                    other.uncertainty,
                    first.uncertainty,
                    rtol=0,
                    atol=self.determinism_atol,
                    err_msg=f"the uncertainty of the same frames from {label} differs",
                )

    def test_info_complete(self, denoiser: Denoiser) -> None:
        info = denoiser.info
        assert isinstance(info, DenoiserInfo), (
            f"info is a {type(info).__name__}, not a DenoiserInfo"
        )
        assert isinstance(info.name, str) and info.name, "info.name is empty"
        if self.expected_name is not None:
            assert info.name == self.expected_name, (
                f"info.name is {info.name!r}, expected {self.expected_name!r}"
            )
        assert isinstance(info.version, str) and info.version, "info.version is empty"
        self.check_checksum(info.checksum)
        assert isinstance(info.parameters, dict), (
            f"info.parameters is a {type(info.parameters).__name__}"
        )
        assert all(isinstance(k, str) for k in info.parameters), (
            "info.parameters has non-string keys"
        )
        assert isinstance(info.device, str) and info.device, "info.device is empty"
        if self.expected_device is not None:
            assert info.device.split(":")[0] == self.expected_device, (
                f"info.device is {info.device!r}; the denoiser was built for {self.expected_device!r}"
            )
        assert _is_int(info.preferred_batch) and info.preferred_batch >= 1, (
            f"info.preferred_batch must be an int >= 1, got {info.preferred_batch!r}"
        )
        assert info.tile_size is None or (_is_int(info.tile_size) and info.tile_size >= 1), (
            f"info.tile_size must be None (whole frames) or an int >= 1, got {info.tile_size!r}"
        )
        assert isinstance(info.has_uncertainty, bool), (
            f"info.has_uncertainty is {info.has_uncertainty!r}"
        )

    def check_checksum(self, checksum: str) -> None:
        assert isinstance(checksum, str), f"info.checksum is a {type(checksum).__name__}"
        if self.learned is True:
            assert _SHA256.fullmatch(checksum), (
                f"a learned model's checksum must be a sha256 hex digest: {checksum!r}"
            )
        elif self.learned is False:
            assert checksum == "", f'a method without weights has checksum "", not {checksum!r}'
        else:
            assert checksum == "" or _SHA256.fullmatch(checksum), (
                f'checksum is neither "" nor a sha256: {checksum!r}'
            )

    def test_uncertainty_matches_info(self, denoiser: Denoiser) -> None:
        frames = self.frames(self.batch)
        out = self.restore(denoiser, frames)
        if not denoiser.info.has_uncertainty:
            assert out.uncertainty is None, (
                "an uncertainty came back but info.has_uncertainty is False"
            )
            return
        unc = out.uncertainty
        assert unc is not None, "info.has_uncertainty is True but restore() gave no uncertainty"
        assert unc.shape == frames.shape, (
            f"uncertainty of shape {unc.shape} for frames of {frames.shape}"
        )
        assert unc.dtype == np.float32, f"uncertainty must be float32, got {unc.dtype}"
        assert np.all(np.isfinite(unc)) and np.all(unc >= 0), (
            "uncertainty has negative or non-finite values"
        )

    def test_input_not_modified(self, denoiser: Denoiser, dtype: Any) -> None:
        frames = self.frames(self.batch, dtype)
        before = frames.copy()
        self.restore(denoiser, frames)
        np.testing.assert_array_equal(
            frames, before, err_msg="restore() modified the frames it was given"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _param_id(name: str, value: Any) -> str:
    if name == "estimate_camera":
        return "camera-estimated" if value else "camera-given"
    if isinstance(value, type):
        return np.dtype(value).name if value is not object else "object"
    if isinstance(value, tuple):
        return "x".join(map(str, value))
    return str(value)


__all__ = ["DenoiserTests", "camera_frames", "two_level_photons"]
