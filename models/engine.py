"""The inference engine shared by all models: device, precision, tiles, batches.

CUDA with autocast (bf16 where supported, else fp16) and channels-last when a
GPU is available, CPU otherwise. Tile and batch size are chosen from the free
memory unless given.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch
from torch import nn

from lowdose.plugins.denoisers.registry import resolve_device

from .tiling import run_tiled

CPU_TILE = 512  # larger tiles gain nothing on a CPU and cost cache misses
MAX_TILE = 2048


def torch_device(device: str = "auto") -> torch.device:
    """The torch device for a ``restore.device`` value; a clear error for an unusable one."""
    dev = torch.device(resolve_device(device))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available in this torch build")
    return dev


def free_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil is a dependency, but a guess is better than failing
        return 4 << 30


@dataclass(frozen=True)
class EnginePlan:
    tile: int
    batch: int


def plan_tiles(
    device: torch.device, bytes_per_px: float, frame_shape: tuple[int, int], n_items: int,
    tile: int | None = None, batch: int | None = None, multiple: int = 8, max_tile: int | None = None,
) -> EnginePlan:
    """Largest tile (and then batch) whose activations fit in half the free memory."""
    budget = 0.5 * free_memory_bytes(device)
    cap = max_tile or (CPU_TILE if device.type == "cpu" else MAX_TILE)
    if tile is None:
        tile = cap
        while tile > 64 and tile * tile * bytes_per_px > budget:
            tile //= 2
        tile = min(tile, max(frame_shape) + (-max(frame_shape)) % multiple)
    tile = max(multiple, tile - tile % multiple)
    if batch is None:
        fit = int(budget // max(tile * tile * bytes_per_px, 1))
        batch = max(1, min(fit, 64 if device.type == "cuda" else 4, n_items))
    return EnginePlan(tile=tile, batch=batch)


class InferenceEngine:
    """Runs a network on (N, C, H, W) tensors in overlapping tiles on one device."""

    def __init__(self, device: str = "auto", amp: bool = True) -> None:
        self.device = torch_device(device)
        self.amp = amp and self.device.type == "cuda"
        self.channels_last = self.device.type == "cuda"

    def prepare(self, net: nn.Module) -> nn.Module:
        net = net.to(self.device).eval()
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        return net

    def autocast(self) -> ContextManager[object]:
        if not self.amp:
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def tiled(
        self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, plan: EnginePlan,
        overlap: int, multiple: int,
    ) -> torch.Tensor:
        def wrapped(t: torch.Tensor) -> torch.Tensor:
            with self.autocast():
                return fn(self.to_device(t)).float()

        with torch.inference_mode():
            return run_tiled(wrapped, x, tile=plan.tile, overlap=overlap, multiple=multiple, batch=plan.batch)
