"""Typed configuration, validated from ``config.yaml``.

Every section is a pydantic model with ``extra="forbid"``: a misspelt key is an
error naming its path, never a silently ignored setting. The documented
reference is ``config.yaml`` at the repository root (also shipped inside the
package as the default). The ``hook`` section's model lives in
:mod:`lowdose.wire.hook_config`, because the acquisition side uses it without the daemon.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from lowdose.wire.hook_config import ConfigSection, HookConfig, check_endpoint

from .dashboard.config import DashboardConfig
from .store.config import StorageConfig


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the key and the fix."""


class CurveConfig(ConfigSection):
    """CURVE encryption and authentication for tcp:// endpoints on a facility network."""

    enabled: bool = False
    server_secret_key: Path | None = None  # zmq.auth .key_secret file of the daemon
    authorized_keys_dir: Path | None = None  # public .key files of the allowed microscopes


class ServerConfig(ConfigSection):
    endpoints: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5571"])
    preview_endpoint: str | None = "tcp://127.0.0.1:5572"
    rcvhwm_frames: int = Field(16, ge=1, le=10000)
    sndhwm_messages: int = Field(1000, ge=1)
    preview_hwm_frames: int = Field(2, ge=1)
    heartbeat_s: float = Field(1.0, gt=0)
    curve: CurveConfig = CurveConfig()

    @field_validator("endpoints")
    @classmethod
    def _endpoints(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one endpoint is needed")
        return [check_endpoint(e) for e in v]

    @field_validator("preview_endpoint")
    @classmethod
    def _preview(cls, v: str | None) -> str | None:
        return None if v is None else check_endpoint(v)


class RestoreConfig(ConfigSection):
    denoiser: str = "auto"
    denoiser_options: dict[str, Any] = Field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    policy: Literal["fifo", "latest"] = "latest"
    batch_size: int = Field(4, ge=1, le=1024)
    queue_frames: int = Field(32, ge=1)
    backfill: bool = True
    store_uncertainty: bool = True
    # online adaptation to the run's own frames (denoisers that can: unet, n2v, their checkpoints)
    adapt: bool = False
    adapt_threads: int = Field(1, ge=1, le=256)
    adapt_cpu_share: float = Field(0.5, gt=0, le=1)
    adapt_steps_per_version: int = Field(100, ge=1)
    adapt_max_steps: int = Field(2000, ge=1)
    adapt_final_s: float = Field(30.0, ge=0)
    adapt_frames: int = Field(16, ge=2, le=1024)
    adapt_redo: bool = True
    adapt_options: dict[str, Any] = Field(default_factory=dict)

    def adapt_settings(self, run: str) -> dict[str, Any]:
        """Keyword arguments of a denoiser's ``start_adaptation`` for run ``run``."""
        return {
            "threads": self.adapt_threads, "cpu_share": self.adapt_cpu_share,
            "steps_per_version": self.adapt_steps_per_version, "max_steps": self.adapt_max_steps,
            "final_s": self.adapt_final_s, "frames": self.adapt_frames, "options": dict(self.adapt_options),
            "run": run,
        }


class MetricsConfig(ConfigSection):
    port: int = Field(0, ge=0, le=65535)  # 0: no Prometheus HTTP endpoint
    address: str = "127.0.0.1"


class LowdoseConfig(ConfigSection):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    restore: RestoreConfig = RestoreConfig()
    metrics: MetricsConfig = MetricsConfig()
    dashboard: DashboardConfig = DashboardConfig()
    hook: HookConfig = HookConfig()


def default_config_text() -> str:
    """The documented default ``config.yaml`` shipped in the package."""
    return files("lowdose").joinpath("config.yaml").read_text()


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> LowdoseConfig:
    """Read and validate ``config.yaml``; ``None`` gives the shipped defaults."""
    if path is None:
        data: Any = yaml.safe_load(default_config_text())
        where = "the default config"
    else:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist; `lowdose config > {path}` writes the default one")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from None
        where = str(path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a YAML mapping of sections (server, storage, restore, metrics, dashboard, hook)")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return LowdoseConfig.model_validate(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                lines.append(f"  {key}: unknown key (check the spelling against config.yaml's reference)")
            else:
                lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError(f"invalid configuration in {where}:\n" + "\n".join(lines)) from None


__all__ = [
    "ConfigError",
    "CurveConfig",
    "DashboardConfig",
    "HookConfig",
    "LowdoseConfig",
    "MetricsConfig",
    "RestoreConfig",
    "ServerConfig",
    "StorageConfig",
    "default_config_text",
    "load_config",
]
