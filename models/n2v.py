"""Noise2Void blind-spot masking with the N2V2 fixes (training only).

N2V2 (Höck et al. 2022): the masked pixel is replaced by the median of its
neighbourhood *excluding itself* (plain N2V's random neighbour copy leaks the
pixel's own value with probability 1/24 and, with max-pool/skip architectures,
produces checkerboard artefacts); the network side of the fix (blur-pool, no
full-resolution skip) is ``FastUNet(blind_spot_safe=True)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def blind_spot_mask(
    x: torch.Tensor, fraction: float = 0.02, radius: int = 2, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (masked input, boolean mask) for a (B, 1, H, W) batch.

    One pixel is masked per cell of a grid with ~1/fraction pixels per cell
    (stratified sampling spreads the masked pixels evenly).
    """
    b, c, h, w = x.shape
    cell = max(2, int(round(fraction ** -0.5)))
    gh, gw = -(-h // cell), -(-w // cell)
    oy = torch.randint(0, cell, (b, gh, gw), generator=generator)
    ox = torch.randint(0, cell, (b, gh, gw), generator=generator)
    ys = (torch.arange(gh)[None, :, None] * cell + oy).clamp(max=h - 1)
    xs = (torch.arange(gw)[None, None, :] * cell + ox).clamp(max=w - 1)
    mask = torch.zeros((b, h, w), dtype=torch.bool)
    bi = torch.arange(b)[:, None, None].expand_as(ys)
    mask[bi, ys, xs] = True
    mask = mask[:, None].to(x.device)
    # median of the (2r+1)^2 - 1 neighbours, the centre excluded
    k = 2 * radius + 1
    patches = F.unfold(F.pad(x, (radius,) * 4, mode="reflect"), k)  # (B, C*k*k, H*W)
    patches = patches.reshape(b, c, k * k, h * w)
    centre = (k * k) // 2
    neigh = torch.cat([patches[:, :, :centre], patches[:, :, centre + 1 :]], 2)
    med = neigh.median(2).values.reshape(b, c, h, w)
    return torch.where(mask, med, x), mask
