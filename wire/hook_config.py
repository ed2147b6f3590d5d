"""The acquisition side's configuration: how a hook reaches the daemon and keeps its frames.

It is the ``hook`` section of ``config.yaml``; the daemon's own sections live in
``lowdose.daemon.config``, which reads the whole file. Kept here, beside the
protocol, so a hook process imports neither the daemon nor its dependencies.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator


class ConfigSection(BaseModel):
    """Base of every ``config.yaml`` section: a misspelt key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def check_endpoint(v: str) -> str:
    if not v.startswith(("tcp://", "ipc://", "inproc://")):
        raise ValueError(f"ZeroMQ endpoint must start with tcp://, ipc:// or inproc://; got {v!r}")
    return v


class HookConfig(ConfigSection):
    """Client side: what an acquisition hook uses to reach the daemon."""

    endpoint: str = "tcp://127.0.0.1:5571"
    memory_mb: float = Field(512.0, gt=0)  # unacked frames kept in RAM before spilling
    spool_dir: Path = Path("lowdose-spool")
    spool_fsync: bool = False  # flush each spooled frame to disk (survives a power cut, costs speed)
    window_frames: int = Field(8, ge=1)  # frames in flight without an ack
    ack_timeout_s: float = Field(3.0, gt=0)
    heartbeat_s: float = Field(1.0, gt=0)
    close_timeout_s: float = Field(60.0, ge=0)
    curve_server_public_key: Path | None = None
    curve_client_secret_key: Path | None = None

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return check_endpoint(v)
