"""Overlapping tiles with smooth blending, so any frame size runs without seams.

Tiles overlap by ``overlap`` pixels; each tile's output is weighted by a window
that ramps (raised cosine) from ~0 to 1 across the overlap on sides shared with
a neighbour and is flat on the frame border, and the weighted sum is divided
by the summed weights. With an overlap larger than the network's effective
receptive field (the outer quarter of the overlap is not used at all), the tiled result equals the whole-frame result up to
float rounding.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

TileFn = Callable[[torch.Tensor], torch.Tensor]  # (B, C, h, w) -> (B, Cout, h, w)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    starts.append(size - tile)
    return starts


def _ramp(length: int, overlap: int, left: bool, right: bool) -> torch.Tensor:
    # The outer quarter of the overlap gets weight 0: those pixels lack context
    # (their receptive field is cut by the tile edge) and the neighbour covers them.
    w = torch.ones(length, dtype=torch.float32)
    margin = overlap // 4
    blend = overlap - 2 * margin
    if overlap > 0:
        r = torch.zeros(overlap, dtype=torch.float32)
        r[margin : margin + blend] = 0.5 - 0.5 * torch.cos(torch.linspace(0, np.pi, blend + 2)[1:-1])
        r[margin + blend :] = 1.0
        if left:
            w[:overlap] = r
        if right:
            w[-overlap:] = r.flip(0)
    return w


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if (ph < h and pw < w) else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def run_tiled(
    fn: TileFn, x: torch.Tensor, *, tile: int, overlap: int, multiple: int, batch: int,
    out_channels: int = 1,
) -> torch.Tensor:
    """Apply ``fn`` to (N, C, H, W) ``x`` in overlapping tiles, batched across tiles and frames."""
    n, _, h, w = x.shape
    if h <= tile and w <= tile:
        xp, _ = pad_to_multiple(x, multiple)
        outs = [fn(xp[i : i + batch]) for i in range(0, n, batch)]
        return torch.cat(outs, 0)[..., :h, :w].float()
    tile = max(multiple, tile - tile % multiple)
    # Tile starts stay on the pooling grid, so tiles see the same downsampling as the frame.
    overlap = min(overlap - overlap % multiple, tile // 2)
    # A frame smaller than the tile along one axis is padded up to the tile there.
    xp, _ = pad_to_multiple(x, multiple)
    ph, pw = max(xp.shape[-2], tile), max(xp.shape[-1], tile)
    if (ph, pw) != tuple(xp.shape[-2:]):
        xp = F.pad(xp, (0, pw - xp.shape[-1], 0, ph - xp.shape[-2]), mode="replicate")
    ys, xs = tile_starts(ph, tile, overlap), tile_starts(pw, tile, overlap)
    acc = torch.zeros((n, out_channels, ph, pw), dtype=torch.float32, device=x.device)
    wsum = torch.zeros((1, 1, ph, pw), dtype=torch.float32, device=x.device)
    jobs = [(i, y, xx) for i in range(n) for y in ys for xx in xs]
    windows = {}
    for y in ys:
        for xx in xs:
            wy = _ramp(tile, overlap, y > 0, y + tile < ph)
            wx = _ramp(tile, overlap, xx > 0, xx + tile < pw)
            win = (wy[:, None] * wx[None, :]).to(x.device)
            windows[(y, xx)] = win
            wsum[0, 0, y : y + tile, xx : xx + tile] += win
    for k in range(0, len(jobs), batch):
        chunk = jobs[k : k + batch]
        inp = torch.stack([xp[i, :, y : y + tile, xx : xx + tile] for i, y, xx in chunk])
        out = fn(inp).float()
        for o, (i, y, xx) in zip(out, chunk):
            acc[i, :, y : y + tile, xx : xx + tile] += o * windows[(y, xx)]
    return (acc / wsum)[..., :h, :w]
