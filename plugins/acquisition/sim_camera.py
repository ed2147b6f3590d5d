"""A simulated low-light camera, as a Python camera device in a real MMCore.

The camera renders :class:`lowdose.models.simulate.Specimen` with Poisson shot
noise, read noise, gain and offset (``expose``), so the noise-free truth of
every delivered frame is known. Frame ``n`` (counting every exposure since the
device was initialised or :meth:`SimLowLightCamera.reset_counter`) shows the
specimen at time ``t = n`` frames and is drawn with the noise generator
``default_rng([seed, n])``: a frame is reproducible from its number alone, so
:meth:`SimLowLightCamera.truth_for` and :meth:`expected_adu_for` need no memory
of past frames. The number travels with the frame as ``sim_frame`` in the
camera metadata of sequenced acquisitions, and :attr:`last_frame` /
:attr:`frame_log` hold it for snapped ones.

``make_sim_core()`` gives a :class:`UniMMCore` with this camera and nothing
else: no hardware configuration file is needed.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from pymmcore_plus.experimental.unicore import CameraDevice, ShutterDevice, UniMMCore, pymm_property

from lowdose.models.simulate import KINDS, CameraModel, Specimen, expected_adu, expose

from .pymmcore_plus_hook import release_core

CAMERA_LABEL = "SimCam"
SHUTTER_LABEL = "SimShutter"


class SimShutter(ShutterDevice):
    """The excitation light. MDA engines open and close a shutter around snaps."""

    def __init__(self) -> None:
        super().__init__()
        self._open = False

    def get_open(self) -> bool:
        return self._open

    def set_open(self, open: bool) -> None:
        self._open = bool(open)


class SimLowLightCamera(CameraDevice):
    """Low-light fluorescence camera with a known, slowly moving specimen."""

    def __init__(
        self,
        shape: tuple[int, int] = (512, 512),
        *,
        peak_photons: float = 20.0,
        offset: float = 100.0,
        gain: float = 1.0,
        read_noise: float = 1.5,
        seed: int = 0,
        kind: str = "mixed",
        drift_px_per_frame: float = 0.2,
        exposure_ms: float = 10.0,
        frame_log_size: int = 100_000,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}; got {kind!r}")
        self._height, self._width = int(shape[0]), int(shape[1])
        self._peak_photons = float(peak_photons)
        self._offset = float(offset)
        self._gain = float(gain)
        self._read_noise = float(read_noise)
        self._seed = int(seed)
        self._kind = kind
        self._drift = float(drift_px_per_frame)
        self._exposure_ms = float(exposure_ms)
        # The specimen is expensive to render (about a second at 512x512), and
        # only its size, kind, seed and drift change it: build it lazily, once.
        self._specimen: Specimen | None = None
        self._specimen_lock = threading.Lock()
        self._next_frame = 0
        self.last_frame: int | None = None
        # (frame number, perf_counter at readout), in delivery order; bounded so a
        # long run does not grow memory.
        self.frame_log: deque[tuple[int, float]] = deque(maxlen=frame_log_size)

    # ------------------------------------------------------------ the camera API

    def get_exposure(self) -> float:
        return self._exposure_ms

    def set_exposure(self, exposure: float) -> None:
        self._exposure_ms = float(exposure)

    def shape(self) -> tuple[int, int]:
        return (self._height, self._width)

    def dtype(self) -> Any:
        return np.uint16

    def start_sequence(
        self, n: int | None, get_buffer: Callable[[Sequence[int], Any], np.ndarray]
    ) -> Iterator[Mapping]:
        limit = n if n is not None else 2**63
        shape, dtype = self.shape(), self.dtype()
        count = 0
        while count < limit:
            t0 = time.perf_counter()
            number = self._claim_frame_number()
            pixels = self.render(number)
            # A real camera cannot deliver before its exposure is over.
            remaining = self._exposure_ms / 1000.0 - (time.perf_counter() - t0)
            if remaining > 0:
                time.sleep(remaining)
            buf = get_buffer(shape, dtype)
            buf[:] = pixels
            self.last_frame = number
            self.frame_log.append((number, time.perf_counter()))
            count += 1
            yield {"sim_frame": str(number), "sim_peak_photons": f"{self._peak_photons:g}"}

    def get_offset(self) -> float:
        return self._offset

    def set_offset(self, value: float) -> None:
        self._offset = float(value)

    def get_gain(self) -> float:
        return self._gain

    def set_gain(self, value: float) -> None:
        self._gain = float(value)

    # ------------------------------------------------------------ properties

    @pymm_property(limits=(0.0, 1e6))
    def peak_photons(self) -> float:
        """Photo-electrons at the brightest structure per exposure: the dose."""
        return self._peak_photons

    @peak_photons.setter
    def peak_photons(self, value: float) -> None:
        self._peak_photons = float(value)

    @pymm_property(limits=(0.0, 100.0))
    def read_noise(self) -> float:
        """Read noise, e- rms."""
        return self._read_noise

    @read_noise.setter
    def read_noise(self, value: float) -> None:
        self._read_noise = float(value)

    @pymm_property(limits=(0, 2**31 - 1))
    def seed(self) -> int:
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(value)
        self._specimen = None

    @pymm_property(limits=(8, 8192))
    def image_width(self) -> int:
        return self._width

    @image_width.setter
    def image_width(self, value: int) -> None:
        self._width = int(value)
        self._specimen = None

    @pymm_property(limits=(8, 8192))
    def image_height(self) -> int:
        return self._height

    @image_height.setter
    def image_height(self, value: int) -> None:
        self._height = int(value)
        self._specimen = None

    @pymm_property(allowed_values=KINDS)
    def specimen(self) -> str:
        return self._kind

    @specimen.setter
    def specimen(self, value: str) -> None:
        self._kind = str(value)
        self._specimen = None

    @pymm_property(is_read_only=True)
    def frames_exposed(self) -> int:
        return self._next_frame

    # ------------------------------------------------------------ ground truth

    @property
    def camera_model(self) -> CameraModel:
        return CameraModel(offset=self._offset, gain=self._gain, read_noise=self._read_noise)

    def truth_for(self, frame_number: int) -> np.ndarray:
        """Noise-free normalised fluorescence (float32, ~[0, 1]) shown in frame ``frame_number``."""
        return self._get_specimen().truth(float(frame_number))

    def expected_adu_for(self, frame_number: int) -> np.ndarray:
        """Noise-free image in ADU (float32) for frame ``frame_number``: the PSNR reference."""
        return expected_adu(self.truth_for(frame_number), self._peak_photons, self.camera_model)

    def render(self, frame_number: int) -> np.ndarray:
        """The noisy frame ``frame_number`` (uint16), reproducible from its number."""
        rng = np.random.default_rng([self._seed, frame_number])
        return expose(self.truth_for(frame_number), self._peak_photons, self.camera_model, rng)

    def reset_counter(self, next_frame: int = 0) -> None:
        self._next_frame = next_frame
        self.last_frame = None
        self.frame_log.clear()

    def _claim_frame_number(self) -> int:
        n = self._next_frame
        self._next_frame += 1
        return n

    def _get_specimen(self) -> Specimen:
        with self._specimen_lock:
            spec = self._specimen
            if spec is None or spec.shape != (self._height, self._width):
                spec = Specimen(
                    (self._height, self._width),
                    kind=self._kind,
                    seed=self._seed,
                    drift_px_per_frame=self._drift,
                )
                self._specimen = spec
            return spec

    def warm_up(self) -> None:
        """Render the specimen now, so the first exposure of a run is not late."""
        self._get_specimen()


def make_sim_core(
    shape: tuple[int, int] = (512, 512),
    *,
    pixel_size_um: float = 0.1,
    label: str = CAMERA_LABEL,
    warm_up: bool = True,
    reset_per_sequence: bool = True,
    **camera_kwargs: Any,
) -> tuple[UniMMCore, SimLowLightCamera]:
    """A core with the simulated camera and a shutter, ready for ``core.mda.run``.

    A time-lapse needs nothing more: the MDA engine snaps (or sequences) the
    camera and toggles the shutter. A pixel-size preset gives stores a physical
    scale. With ``reset_per_sequence`` the frame counter restarts at every
    ``sequenceStarted``, so frame ``n`` of a run (the hook's seq ``n``) shows
    ``camera.truth_for(n)`` whether the MDA snaps or sequences the camera.
    Call :func:`close_core` when done.
    """
    core = UniMMCore()
    camera = SimLowLightCamera(shape, **camera_kwargs)
    core.loadPyDevice(label, camera)
    core.initializeDevice(label)
    core.setCameraDevice(label)
    core.loadPyDevice(SHUTTER_LABEL, SimShutter())
    core.initializeDevice(SHUTTER_LABEL)
    core.setShutterDevice(SHUTTER_LABEL)
    # MMCore matches pixel-size presets against C++ device properties only, and a
    # Python camera is invisible there: key the preset on a Core property instead.
    core.definePixelSizeConfig("sim", "Core", "AutoShutter", core.getProperty("Core", "AutoShutter"))
    core.setPixelSizeUm("sim", pixel_size_um)
    core.setPixelSizeConfig("sim")
    if reset_per_sequence:
        # Frame n of every MDA then shows truth(n): the hook's seq n is the frame number.
        core.mda.events.sequenceStarted.connect(lambda *_: camera.reset_counter())
    if warm_up:
        camera.warm_up()
    return core, camera


def close_core(core: Any) -> None:
    """Release a core made by :func:`make_sim_core` (see :func:`release_core`)."""
    release_core(core)
