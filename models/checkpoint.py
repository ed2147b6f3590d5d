"""Checkpoint files: everything needed to rebuild and use a model, nothing executable.

Saved with ``torch.save`` and read with ``weights_only=True`` (plain dicts,
lists, numbers, strings and tensors), so loading a file cannot run code.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lowdose.plugins.denoisers.interface import DenoiserError

FORMAT = "lowdose-model"
FORMAT_VERSION = 1
KINDS = ("unet", "n2v", "ddpm", "rddpm")


class CheckpointError(DenoiserError):
    """A checkpoint file is missing, unreadable, or not a lowdose model."""


@dataclass
class Checkpoint:
    kind: str  # "unet" | "n2v" | "ddpm" | "rddpm" (residual diffusion over a base network)
    arch: dict[str, Any]  # network config for unet.build_network
    state_dict: dict[str, torch.Tensor]
    normalisation: dict[str, Any]  # NormSpec fields
    noise_model: dict[str, Any] = field(default_factory=dict)  # camera/dose ranges trained on
    diffusion: dict[str, Any] = field(default_factory=dict)  # steps, prediction (ddpm only)
    data: dict[str, Any] = field(default_factory=dict)  # training data summary
    metrics: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)  # step, epoch, recipe, hyper-parameters
    lowdose_version: str = ""
    optimizer: dict[str, Any] | None = None  # only in resumable (non-shipped) checkpoints
    # rddpm only: the network it refines, embedded (kind, arch, state_dict, normalisation, checksum),
    # so a later retraining of that network cannot silently change what this model refines
    base: dict[str, Any] | None = None
    checksum: str = ""  # sha256 of the file it was read from

    def to_dict(self, with_optimizer: bool = True) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "arch": self.arch,
            "state_dict": self.state_dict,
            "normalisation": self.normalisation,
            "noise_model": self.noise_model,
            "diffusion": self.diffusion,
            "data": self.data,
            "metrics": self.metrics,
            "training": self.training,
            "lowdose_version": self.lowdose_version,
            "optimizer": self.optimizer if with_optimizer else None,
            "base": self.base,
        }


def lowdose_version() -> str:
    from lowdose import __version__

    return __version__


def save_checkpoint(ckpt: Checkpoint, path: str | Path, with_optimizer: bool = True) -> str:
    """Write atomically (temp file + rename: a killed run never leaves half a file); return sha256."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(ckpt.to_dict(with_optimizer), buf)
    data = buf.getvalue()
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/garbled files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file ({type(exc).__name__}: {exc}); "
            f"re-download or retrain it"
        ) from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a lowdose model checkpoint (missing format={FORMAT!r})")
    if raw.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {raw['format_version']}, newer than this lowdose "
            f"understands ({FORMAT_VERSION}); upgrade lowdose"
        )
    missing = [k for k in ("kind", "arch", "state_dict", "normalisation") if k not in raw]
    if missing or raw["kind"] not in KINDS:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {missing or 'a valid kind'}")
    return Checkpoint(
        kind=raw["kind"], arch=raw["arch"], state_dict=raw["state_dict"],
        normalisation=raw["normalisation"], noise_model=raw.get("noise_model") or {},
        diffusion=raw.get("diffusion") or {}, data=raw.get("data") or {},
        metrics=raw.get("metrics") or {}, training=raw.get("training") or {},
        lowdose_version=raw.get("lowdose_version", ""), optimizer=raw.get("optimizer"),
        base=raw.get("base"), checksum=hashlib.sha256(data).hexdigest(),
    )


def build_from_checkpoint(ckpt: Checkpoint, path: str | Path = "<memory>") -> torch.nn.Module:
    from .unet import build_network

    try:
        net = build_network(ckpt.arch)
        net.load_state_dict(ckpt.state_dict)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {path} does not match its architecture config: {exc}") from exc
    return net
