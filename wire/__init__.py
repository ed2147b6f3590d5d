"""What both ends of the wire share: messages, error codes, the hook's configuration.

The acquisition client (``lowdose.plugins.acquisition``) and the daemon
(``lowdose.daemon``) both import this package; it imports neither. See
``docs/protocol.md`` for the protocol in language-neutral terms.
"""

from .hook_config import HookConfig
from .protocol import (
    TAG,
    Ack,
    End,
    Error,
    ErrorCode,
    Frame,
    FrameIndex,
    Heartbeat,
    Preview,
    ProtocolError,
    Start,
    StatusReply,
    StatusRequest,
    decode,
    encode,
    encode_frame,
    frame_pixels,
)

__all__ = [
    "TAG",
    "Ack",
    "End",
    "Error",
    "ErrorCode",
    "Frame",
    "FrameIndex",
    "Heartbeat",
    "HookConfig",
    "Preview",
    "ProtocolError",
    "Start",
    "StatusReply",
    "StatusRequest",
    "decode",
    "encode",
    "encode_frame",
    "frame_pixels",
]
