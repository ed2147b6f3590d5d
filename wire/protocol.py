"""The lowdose wire protocol: typed messages over multipart ZeroMQ.

Every message is ``[tag, header, *payload]``:

* ``tag``    -- ``b"lowdose/<version>"``; a receiver rejects versions it does not speak.
* ``header`` -- a msgpack map, validated into one of the models below by ``kind``.
* ``payload``-- for ``frame`` only: one part holding the pixels, C order, sent zero-copy.

Nothing is unpickled and nothing is trusted: :func:`decode` checks the tag, the
header's size and schema, and that ``shape x dtype`` equals the payload's size
before anything else sees the message (rule 5 of ``docs/design.md``). See
``docs/protocol.md`` for the language-neutral description; a test keeps the two
in step.
"""

from __future__ import annotations

import re
from enum import Enum
from typing import Annotated, Any, Literal, Union

import msgpack
import numpy as np
from pydantic import (
    AfterValidator,
    BeforeValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

PROTOCOL_NAME = b"lowdose"
PROTOCOL_VERSION = 1
TAG = PROTOCOL_NAME + b"/" + str(PROTOCOL_VERSION).encode()

MAX_HEADER_BYTES = 1 << 20  # headers carry metadata, never pixels
MAX_FRAME_SIDE = 32768
MAX_FRAME_BYTES = 1 << 31
FRAME_DTYPES = ("uint8", "uint16", "uint32", "int16", "int32", "float32")
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
OWNER_PATTERN = re.compile(r"^[A-Za-z0-9_.:\-]{16,128}$")


class ErrorCode(str, Enum):
    """Every ``error`` code a daemon sends; ``docs/protocol.md`` has the same table."""

    MALFORMED = "malformed"  # wrong number of parts, not msgpack, not a map
    UNSUPPORTED_VERSION = "unsupported_version"  # tag version not spoken by this daemon
    UNKNOWN_KIND = "unknown_kind"  # ``kind`` not in this version
    INVALID = "invalid"  # header fails the schema
    TOO_LARGE = "too_large"  # payload over MAX_FRAME_BYTES
    SIZE_MISMATCH = "size_mismatch"  # payload size != shape x dtype
    SHAPE_MISMATCH = "shape_mismatch"  # frame shape/dtype differ from the run's start
    UNKNOWN_RUN = "unknown_run"  # no start seen for this run (daemon restarted?)
    START_MISMATCH = "start_mismatch"  # a run with this id exists with another shape/dtype
    STORE_FAILED = "store_failed"  # the daemon could not write: keep the frame, resend later
    UNEXPECTED_KIND = "unexpected_kind"  # a daemon-to-client kind sent to the daemon
    NOT_OWNER = "not_owner"  # this connection did not start the run (wrong or missing owner token / CURVE key)
    INDEX_OUT_OF_RANGE = "index_out_of_range"  # frame index outside the sizes its run's start declared
    RUN_FINISHED = "run_finished"  # frame past the run's end: it would never be restored nor summarised
    INTERNAL = "internal"  # the daemon failed on this message (a bug, logged there); it serves the next one

    def __str__(self) -> str:
        return self.value


#: Codes after which a frame is worth sending again later; any other code naming a seq
#: rejects that frame for good (resending the same bytes would get the same answer).
TRANSIENT_ERRORS = frozenset({ErrorCode.STORE_FAILED})


# Free-form maps (start.summary, start.sequence, frame.metadata) are the one place a client chooses the
# shape of what the daemon holds, copies and recurses into (JSON, pydantic's dump): bounded here, once, at
# the wire, so no layer behind it has to be robust to a 600-deep or million-key map (rule 5).
MAX_FREEFORM_DEPTH = 32  # nested maps/lists, the top map counting 1
MAX_FREEFORM_KEYS = 4096  # keys in one map
MAX_FREEFORM_STRING = 65536  # characters (or bytes) of one key or string value
MAX_FREEFORM_ELEMENTS = 100_000  # maps, lists and values in one field, all levels together
MAX_TEXT = 256  # instrument, source, one channel name
#: Replies echo a client's ``run`` and explain in ``reason``; both are cut to these lengths so every
#: error stays far below the MAX_HEADER_BYTES the daemon imposes on others.
MAX_ECHO_RUN = 128
MAX_REASON = 2000


def freeform_problem(value: Any) -> str | None:
    """Why ``value`` exceeds the free-form bounds, or None. Iterative: a hostile depth costs no stack."""
    stack = [(value, 1)]
    elements = 0
    while stack:
        v, depth = stack.pop()
        elements += 1
        if elements > MAX_FREEFORM_ELEMENTS:
            return f"more than {MAX_FREEFORM_ELEMENTS} elements in all"
        if isinstance(v, (dict, list, tuple)):
            if depth > MAX_FREEFORM_DEPTH:
                return f"nested deeper than {MAX_FREEFORM_DEPTH} levels"
            if isinstance(v, dict):
                if len(v) > MAX_FREEFORM_KEYS:
                    return f"a map of {len(v)} keys (at most {MAX_FREEFORM_KEYS})"
                for k, x in v.items():
                    if isinstance(k, (str, bytes)) and len(k) > MAX_FREEFORM_STRING:
                        return f"a key of {len(k)} characters (at most {MAX_FREEFORM_STRING})"
                    stack.append((x, depth + 1))
            else:
                if len(v) > MAX_FREEFORM_ELEMENTS:
                    return f"a list of {len(v)} items (at most {MAX_FREEFORM_ELEMENTS})"
                stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, (str, bytes)) and len(v) > MAX_FREEFORM_STRING:
            return f"a string of {len(v)} characters (at most {MAX_FREEFORM_STRING})"
    return None


def _check_freeform(value: Any) -> Any:
    problem = freeform_problem(value)
    if problem is not None:
        raise ValueError(
            f"free-form metadata too large: {problem}; send at most {MAX_FREEFORM_DEPTH} levels, "
            f"{MAX_FREEFORM_KEYS} keys per map, {MAX_FREEFORM_STRING}-character strings, "
            f"{MAX_FREEFORM_ELEMENTS} elements"
        )
    return value


def clip_text(value: Any, limit: int) -> Any:
    """``value`` cut to ``limit`` characters, marked as cut; non-strings pass through."""
    if isinstance(value, str) and len(value) > limit:
        return value[: limit - 15] + f"...[{len(value) - limit + 15} cut]"
    return value


class ProtocolError(ValueError):
    """A message that cannot be used. ``code`` is machine-readable, ``reason`` is for people."""

    def __init__(self, code: ErrorCode, reason: str, *, run: str | None = None, seq: int | None = None):
        reason = clip_text(reason, MAX_REASON)  # it quotes what the client sent, which may be huge
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.run = run
        self.seq = seq


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_run_id(value: str) -> str:
    if not RUN_ID_PATTERN.match(value):
        raise ValueError(
            "run id must be 1-128 characters of letters, digits, '_', '.', '-', "
            "starting with a letter or digit (it names the store on disk)"
        )
    return value


def _check_shape(v: tuple[int, int]) -> tuple[int, int]:
    if not all(1 <= n <= MAX_FRAME_SIDE for n in v):
        raise ValueError(f"frame shape must be (Y, X) with 1 <= side <= {MAX_FRAME_SIDE}; got {v}")
    return v


def _check_dtype(v: str) -> str:
    if v not in FRAME_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(FRAME_DTYPES)}; got {v!r}")
    return v


RunId = Annotated[str, AfterValidator(_check_run_id)]
FreeForm = Annotated[dict[str, Any], BeforeValidator(_check_freeform)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
FrameShape = Annotated[tuple[int, int], AfterValidator(_check_shape)]
PixelDtype = Annotated[str, AfterValidator(_check_dtype)]


MAX_T = 2**40
MAX_POSITIONS = 100_000
MAX_CHANNELS = 256
MAX_Z = 10_000
MAX_SEQ = 2**62
#: Channels x z slices of one position. The daemon's index lays out a position's frames in blocks of
#: 256 time points x C x Z cells of 12 bytes, so this bounds one block (what one frame may make it
#: allocate) to 48 MiB; 16384 is 8 channels of 2048 slices, or 16 of 1024.
MAX_CZ = 16384


class FrameIndex(_Message):
    """Position of a frame in the acquisition: time point, stage position, channel, z slice."""

    # Upper bounds far past any microscope, so one hostile index cannot make the store size its
    # per-frame tables (and the NGFF channel list) for billions of entries.
    t: int = Field(0, ge=0, lt=MAX_T)
    p: int = Field(0, ge=0, lt=MAX_POSITIONS)
    c: int = Field(0, ge=0, lt=MAX_CHANNELS)
    z: int = Field(0, ge=0, lt=MAX_Z)

    @model_validator(mode="after")
    def _cz(self) -> "FrameIndex":
        if (self.c + 1) * (self.z + 1) > MAX_CZ:
            raise ValueError(f"(c + 1) x (z + 1) must be at most {MAX_CZ} (channels x slices of one position); "
                             f"got c={self.c}, z={self.z}")
        return self


_SIZE_LIMITS = {"t": MAX_T, "p": MAX_POSITIONS, "c": MAX_CHANNELS, "z": MAX_Z}


class Start(_Message):
    """A run begins (or is announced again after a daemon restart: idempotent)."""

    kind: Literal["start"] = "start"
    run: RunId
    instrument: Text = "unknown"
    source: Text = "unknown"  # which hook: "pymmcore-plus", "pycromanager", ...
    shape: FrameShape  # (Y, X) of every frame
    dtype: PixelDtype
    sizes: dict[str, int] = Field(default_factory=dict)  # expected t/p/c/z sizes; absent = unknown
    pixel_size_um: float | None = None
    z_step_um: float | None = None
    frame_interval_s: float | None = None
    channel_names: list[Text] = Field(default_factory=list, max_length=MAX_CHANNELS)
    camera_offset: float | None = None  # ADU; None: estimated by the denoiser
    camera_gain: float | None = None  # ADU per e-
    summary: FreeForm = Field(default_factory=dict)  # free-form summary metadata
    sequence: FreeForm | None = None  # the useq MDASequence as JSON, when known
    # A secret the hook draws once per run: only connections that present it in a start may send
    # the run's frames and receive its acks. The daemon keeps only owner_digest() of it.
    owner: str | None = Field(None, pattern=OWNER_PATTERN.pattern)

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, v: dict[str, int]) -> dict[str, int]:
        bad = set(v) - {"t", "p", "c", "z"}
        if bad:
            raise ValueError(f"sizes keys must be among t, p, c, z; got {sorted(bad)}")
        if any(n < 0 for n in v.values()):
            raise ValueError("sizes must be >= 0")
        # sizes lay out the store's tables before any frame arrives: bounded like the index they declare
        for axis, most in _SIZE_LIMITS.items():
            if v.get(axis, 0) > most:
                raise ValueError(f"sizes[{axis!r}] must be at most {most}; got {v[axis]}")
        if max(v.get("c", 1), 1) * max(v.get("z", 1), 1) > MAX_CZ:
            raise ValueError(f"sizes c x z must be at most {MAX_CZ} (channels x slices of one position); "
                             f"got {v.get('c')} x {v.get('z')}")
        return v


def new_owner_token() -> str:
    """A fresh owner token for :attr:`Start.owner` (128 random bits)."""
    import secrets

    return secrets.token_urlsafe(16)


def owner_digest(token: str | None, client_key: str | None = None) -> str | None:
    """What a daemon stores of a run's owner: a hash of the token bound to the CURVE client key, if any.

    None for a client that sent no token (an old hook): such a run has no secret to check.
    """
    if token is None:
        return None
    import hashlib

    h = hashlib.sha256(b"lowdose-owner\0" + token.encode() + b"\0" + (client_key or "").encode())
    return "sha256:" + h.hexdigest()


class Frame(_Message):
    """One camera frame; its pixels travel in the next message part."""

    kind: Literal["frame"] = "frame"
    run: RunId
    seq: int = Field(ge=0, lt=MAX_SEQ)  # per-run sequence number: resends reuse it, so writes are idempotent
    index: FrameIndex = FrameIndex()
    shape: FrameShape
    dtype: PixelDtype
    timestamp: float = 0.0  # seconds since the epoch, when the hook received the frame
    elapsed_ms: float | None = None  # since acquisition start, from the camera metadata
    exposure_ms: float | None = None
    metadata: FreeForm = Field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize


class End(_Message):
    """A run ends. ``frames`` is how many frames (seq 0..frames-1) the hook produced."""

    kind: Literal["end"] = "end"
    run: RunId
    frames: int = Field(ge=0, le=MAX_SEQ)
    reason: Literal["finished", "cancelled", "error"] = "finished"


class Heartbeat(_Message):
    kind: Literal["heartbeat"] = "heartbeat"
    run: str | None = Field(None, max_length=MAX_ECHO_RUN)  # echoed in the reply
    daemon: str | None = None  # instance id of the daemon, in replies


class StatusRequest(_Message):
    kind: Literal["status"] = "status"


class Ack(_Message):
    """Frames durably in the raw store. ``ranges`` are inclusive [first, last] seq ranges."""

    kind: Literal["ack"] = "ack"
    run: str
    ranges: list[tuple[int, int]]
    daemon: str = ""
    finished: bool = False  # the run's end was received and every frame is written


class Error(_Message):
    """A refusal. ``code`` is an :class:`ErrorCode` value; it stays a string on the wire so that a
    client meeting a code from a newer daemon can still read the message (and treats it as final)."""

    kind: Literal["error"] = "error"
    code: str
    reason: str
    run: str | None = None
    seq: int | None = None
    daemon: str = ""

    @field_validator("reason", mode="before")
    @classmethod
    def _short_reason(cls, v: Any) -> Any:
        return clip_text(v, MAX_REASON)

    @field_validator("run", mode="before")
    @classmethod
    def _short_run(cls, v: Any) -> Any:
        # a run this long was never valid, so a cut one cannot name another client's run
        return clip_text(v, MAX_ECHO_RUN)


class StatusReply(_Message):
    kind: Literal["status_reply"] = "status_reply"
    daemon: str
    status: dict[str, Any]


class Preview(_Message):
    """A restored frame on the viewers' PUB socket: ``[run, tag, header, pixels]``; may drop."""

    kind: Literal["preview"] = "preview"
    run: str
    seq: int
    index: FrameIndex
    shape: FrameShape
    dtype: PixelDtype
    mode: Literal["live", "backfill"] = "live"
    model: str = ""

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.shape[1] * np.dtype(self.dtype).itemsize


Message = Annotated[
    Union[Start, Frame, End, Heartbeat, StatusRequest, Ack, Error, StatusReply, Preview],
    Field(discriminator="kind"),
]
_MESSAGE = TypeAdapter(Message)
KINDS = ("start", "frame", "end", "heartbeat", "status", "ack", "error", "status_reply", "preview")


def encode(msg: _Message, payload: Any = None) -> list[Any]:
    """Multipart parts for ``msg``; ``payload`` (a C-contiguous buffer) is not copied here."""
    header = msgpack.packb(msg.model_dump(mode="json"), use_bin_type=True)
    parts: list[Any] = [TAG, header]
    if payload is not None:
        parts.append(payload)
    return parts


def encode_frame(msg: Frame, pixels: np.ndarray) -> list[Any]:
    pixels = np.ascontiguousarray(pixels)
    if pixels.shape != tuple(msg.shape) or pixels.dtype != np.dtype(msg.dtype):
        raise ValueError(f"pixels {pixels.shape} {pixels.dtype} do not match header {msg.shape} {msg.dtype}")
    return encode(msg, memoryview(pixels).cast("B"))


def decode(parts: list[Any]) -> tuple[_Message, memoryview | None]:
    """Validate a received multipart message; raise :class:`ProtocolError` if it is unusable."""
    if len(parts) < 2:
        raise ProtocolError(ErrorCode.MALFORMED, f"expected at least 2 parts (tag, header), got {len(parts)}")
    tag = bytes(_buffer(parts[0]))
    if not tag.startswith(PROTOCOL_NAME + b"/"):
        raise ProtocolError(ErrorCode.MALFORMED, f"not a lowdose message (tag {tag[:32]!r})")
    if tag != TAG:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_VERSION,
            f"protocol {tag.decode(errors='replace')!r} is not supported; this daemon speaks {TAG.decode()}",
        )
    raw_header = _buffer(parts[1])
    if len(raw_header) > MAX_HEADER_BYTES:
        raise ProtocolError(ErrorCode.MALFORMED, f"header of {len(raw_header)} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        obj = msgpack.unpackb(raw_header, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(ErrorCode.MALFORMED, f"header is not valid msgpack: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(ErrorCode.MALFORMED, "header must be a msgpack map")
    run = obj.get("run") if isinstance(obj.get("run"), str) else None
    seq = obj.get("seq") if isinstance(obj.get("seq"), int) else None
    if obj.get("kind") not in KINDS:
        raise ProtocolError(ErrorCode.UNKNOWN_KIND, f"unknown message kind {obj.get('kind')!r}", run=run, seq=seq)
    try:
        msg = _MESSAGE.validate_python(obj)
    except ValidationError as exc:
        errors = exc.errors()
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:])[:100] or e['loc'][0]}: {e['msg']}" for e in errors[:5]
        ) + (f"; and {len(errors) - 5} more" if len(errors) > 5 else "")
        raise ProtocolError(ErrorCode.INVALID, f"bad {obj['kind']} header: {problems}", run=run, seq=seq) from None

    payload = None
    if isinstance(msg, (Frame, Preview)):
        if len(parts) != 3:
            raise ProtocolError(ErrorCode.MALFORMED, f"{msg.kind} must have 3 parts, got {len(parts)}", run=run, seq=seq)
        payload = _buffer(parts[2])
        if msg.nbytes > MAX_FRAME_BYTES:
            raise ProtocolError(ErrorCode.TOO_LARGE, f"frame of {msg.nbytes} bytes exceeds {MAX_FRAME_BYTES}", run=run, seq=seq)
        if len(payload) != msg.nbytes:
            raise ProtocolError(
                ErrorCode.SIZE_MISMATCH,
                f"payload is {len(payload)} bytes but shape {tuple(msg.shape)} x {msg.dtype} needs {msg.nbytes}",
                run=run,
                seq=seq,
            )
    elif len(parts) != 2:
        raise ProtocolError(ErrorCode.MALFORMED, f"{msg.kind} must have 2 parts, got {len(parts)}", run=run, seq=seq)
    return msg, payload


def frame_pixels(msg: Frame | Preview, payload: memoryview) -> np.ndarray:
    """A read-only array view of a validated frame's payload (no copy)."""
    return np.frombuffer(payload, dtype=msg.dtype).reshape(msg.shape)


def _buffer(part: Any) -> memoryview:
    # zmq.Frame (copy=False) exposes .buffer; bytes and memoryviews pass through
    buf = getattr(part, "buffer", part)
    return memoryview(buf).cast("B") if not isinstance(buf, memoryview) or buf.format != "B" else buf


def ranges_from_seqs(seqs: list[int]) -> list[tuple[int, int]]:
    """Collapse sorted or unsorted seqs into inclusive ranges: [0,1,2,5] -> [(0,2),(5,5)]."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqs)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return out
