"""What a denoiser that adapts online offers the daemon (``restore.adapt``). Imports nothing of lowdose.

A denoiser with a ``start_adaptation(**settings)`` method returns an :class:`OnlineAdaptation`: it
fine-tunes a copy of itself on the frames offered to it, in its own thread, and publishes numbered
versions. The daemon restores each batch with the newest version (or the base model before the
first), so weights change only between batches; a failure inside the adaptation is reported by
``error`` and leaves the newest good version in use.
"""

from __future__ import annotations

from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

# (position, channel, z): frames of one key are one field of view over time
FieldKey = tuple[int, int, int]


@runtime_checkable
class OnlineAdaptation(Protocol):
    def offer(self, frames: Sequence[tuple[FieldKey, int, np.ndarray]], offset: float | None, gain: float | None) -> None:
        """Hand over raw frames ``(key, t, pixels)`` to learn from; returns at once (bounded buffer)."""

    def current(self) -> tuple[int, Any] | None:
        """``(version, denoiser)`` of the newest published version; None before the first."""

    def finish(self) -> None:
        """No more frames: train the final steps, publish the final version, then stop. Returns at once."""

    @property
    def done(self) -> bool:
        """The final version is published (or the adaptation failed): ``current()`` will not change."""

    @property
    def error(self) -> str | None:
        """Why the adaptation stopped early, if it failed."""

    def close(self) -> None:
        """Stop the thread now and wait for it."""


def adaptation_of(denoiser: object, settings: dict[str, Any]) -> OnlineAdaptation | None:
    """The denoiser's online adaptation, started with ``settings``; None if it cannot adapt."""
    start = getattr(denoiser, "start_adaptation", None)
    return start(**settings) if callable(start) else None
