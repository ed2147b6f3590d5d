"""The ``dashboard`` section of ``config.yaml``: the web page the daemon serves.

It lives with the dashboard, its only reader; ``lowdose.daemon.config`` gathers it into the
whole file's schema.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field, model_validator

from lowdose.wire.hook_config import ConfigSection


def is_loopback(address: str) -> bool:
    """Whether ``address`` reaches this machine only (a hostname other than localhost does not count)."""
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


class DashboardConfig(ConfigSection):
    enabled: bool = True
    address: str = "127.0.0.1"
    port: int = Field(5573, ge=1, le=65535)
    # Required when ``address`` is not loopback: every request must then carry it
    # (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``).
    token: str | None = Field(None, min_length=16)
    # Previews are downsampled to at most this many pixels on their longer side.
    preview_max_px: int = Field(512, ge=16, le=4096)
    # At most this many previews per second per browser; a slow browser gets fewer, never a backlog.
    preview_fps: float = Field(4.0, gt=0, le=30)
    # Seconds of counters the charts keep (sampled once a second).
    history_s: int = Field(600, ge=10, le=86400)

    @model_validator(mode="after")
    def _token_off_loopback(self) -> "DashboardConfig":
        if self.enabled and self.token is None and not is_loopback(self.address):
            raise ValueError(
                f"the dashboard binds {self.address}, reachable from other machines, so it needs a token: "
                "set dashboard.token (16+ characters, e.g. from `python -c \"import secrets; "
                "print(secrets.token_urlsafe(24))\"`) or bind dashboard.address: 127.0.0.1"
            )
        return self
