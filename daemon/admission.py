"""Whether a valid frame may join its run: the per-run limits its run's ``start`` sets.

The wire (``lowdose.wire.protocol``) bounds every message on its own; what only the run can say,
its declared sizes, its end, and how far its channels and slices have grown, is checked here,
in the I/O thread, before the frame is queued for writing (rule 5).
"""

from __future__ import annotations

from lowdose.wire.protocol import MAX_CZ, Ack, Error, ErrorCode, Frame

from .runs import FinishedRun, RunState


def frame_refusal(state: RunState, frame: Frame, run_cz: dict[str, tuple[int, int]]) -> tuple[ErrorCode, str] | None:
    """Why ``frame`` does not belong to ``state``'s run, or None (and then its C x Z is noted in ``run_cz``).

    Sizes the start declared bound the run's tables (rule 5); a frame past the run's end would be
    written but never restored nor summarised (rule 3), so it is refused rather than acked.
    """
    sizes, index = state.start.sizes, frame.index
    for axis in "tpcz":
        declared = sizes.get(axis, 0)
        if declared > 0 and getattr(index, axis) >= declared:
            return ErrorCode.INDEX_OUT_OF_RANGE, (
                f"frame index {axis}={getattr(index, axis)} is outside the run's declared "
                f"sizes[{axis!r}]={declared}; declare larger sizes (or none) in a new run's start")
    # Each frame's (c+1)(z+1) is bounded at the wire, but C and Z grow apart (c=255 in one frame,
    # z=9999 in the next): the store lays out C x Z, so the run's reach is what must stay within MAX_CZ.
    # (A run resumed from disk starts counting again from its start's sizes.)
    c0, z0 = run_cz.get(frame.run, (max(sizes.get("c", 1), 1), max(sizes.get("z", 1), 1)))
    cz = (max(c0, index.c + 1), max(z0, index.z + 1))
    if cz[0] * cz[1] > MAX_CZ:
        return ErrorCode.INDEX_OUT_OF_RANGE, (
            f"frame index c={index.c}, z={index.z} would make run {frame.run!r} span {cz[0]} channels x "
            f"{cz[1]} slices, over the {MAX_CZ} one position may hold; declare sizes within it")
    end = state.end
    if end is not None and frame.seq >= end.frames:
        return ErrorCode.RUN_FINISHED, (
            f"run {frame.run!r} ended with {end.frames} frames (seq 0..{end.frames - 1}); seq {frame.seq} "
            f"comes after its end and is not stored: start a new run for more frames")
    run_cz[frame.run] = cz
    return None


def finished_run_reply(state: FinishedRun, seq: int | None, daemon_id: str) -> Ack | Error:
    """The answer to a message for a finished run: its acks again, or ``run_finished`` for a frame it
    does not hold (a new frame would be neither restored nor summarised: rule 3)."""
    if seq is not None and not any(lo <= seq <= hi for lo, hi in state.ranges):
        return Error(code=ErrorCode.RUN_FINISHED, run=state.run, seq=seq, daemon=daemon_id,
                     reason=f"run {state.run!r} is finished; seq {seq} is not stored: start a new run for more frames")
    return Ack(run=state.run, ranges=list(state.ranges), daemon=daemon_id, finished=True)
