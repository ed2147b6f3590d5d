"""Networks (``nn.Module`` only): the compact live UNet and the diffusion UNet.

No normalisation layer in the fast UNet: per-tile statistics (GroupNorm,
InstanceNorm) would make a tiled frame differ from the whole frame.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class BlurPool(nn.Module):
    """Anti-aliased 2x downsampling (N2V2's replacement for max-pooling)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16.0
        self.register_buffer("kernel", k.expand(channels, 1, 3, 3).contiguous(), persistent=False)
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel.to(x.dtype), stride=2, groups=self.channels)


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.LeakyReLU(0.1, inplace=True),
    )


class FastUNet(nn.Module):
    """CARE-style compact UNet for live restoration.

    ``blind_spot_safe=True`` gives the N2V2 variant: blur-pool instead of
    max-pool and no skip connection at full resolution (both suppress the
    checkerboard artefacts of plain Noise2Void), and no residual input path
    (it would hand the masked pixel straight to the output).
    """

    def __init__(
        self, in_channels: int = 1, base: int = 16, depth: int = 3, residual: bool = True,
        blind_spot_safe: bool = False,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.residual = residual and not blind_spot_safe
        self.top_skip = not blind_spot_safe
        chans = [base * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.down.append(_double_conv(cin, c))
            self.pool.append(BlurPool(c) if blind_spot_safe else nn.MaxPool2d(2))
            cin = c
        self.bottom = _double_conv(chans[-2], chans[-1])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.Conv2d(chans[i + 1], chans[i], 1))
            skip = chans[i] if (i > 0 or self.top_skip) else 0
            self.dec.append(_double_conv(chans[i] + skip, chans[i]))
        self.head = nn.Conv2d(chans[0], 1, 1)

    @property
    def multiple(self) -> int:
        return 2**self.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for down, pool in zip(self.down, self.pool):
            h = down(h)
            skips.append(h)
            h = pool(h)
        h = self.bottom(h)
        for level, (up, dec) in enumerate(zip(self.up, self.dec)):
            h = up(F.interpolate(h, scale_factor=2.0, mode="nearest"))
            skip = skips[-1 - level]
            if level < self.depth - 1 or self.top_skip:
                h = torch.cat([h, skip], 1)
            h = dec(h)
        out = self.head(h)
        return out + x[:, :1] if self.residual else out


# --------------------------------------------------------------------------- diffusion UNet


def _noise_embedding(log_snr: torch.Tensor, dim: int) -> torch.Tensor:
    """Fourier features of the continuous noise level (log-SNR, roughly in [-20, 20])."""
    half = dim // 2
    freqs = torch.exp(torch.linspace(0, math.log(1000.0), half, device=log_snr.device))
    arg = (log_snr.float()[:, None] / 20.0) * freqs[None, :] * math.pi
    return torch.cat([torch.sin(arg), torch.cos(arg)], 1)


def _groups(c: int) -> int:
    return 8 if c % 8 == 0 else 1


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(cin), cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2 = nn.GroupNorm(_groups(cout), cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, 1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, c: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(c), c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.out = nn.Conv2d(c, c, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(o.transpose(-1, -2).reshape(b, c, h, w))


class DiffusionUNet(nn.Module):
    """Conditional denoiser of the DDPM (SR3/Palette-style, scaled down).

    Input: the noisy target and the low-dose frame stacked as 2 channels, and
    the continuous noise level (log-SNR). Attention only at the lowest
    resolution, where it is cheap.
    """

    def __init__(
        self, base: int = 32, mults: tuple[int, ...] = (1, 2, 2), blocks: int = 1,
        attention: bool = True, in_channels: int = 2,
    ) -> None:
        super().__init__()
        self.levels = len(mults)
        emb_dim = base * 4
        self.emb_dim = base
        self.emb = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv2d(in_channels, base, 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        chans = [base]
        c = base
        for i, m in enumerate(mults):
            blocks_i = nn.ModuleList()
            for _ in range(blocks):
                blocks_i.append(ResBlock(c, base * m, emb_dim))
                c = base * m
                chans.append(c)
            self.down.append(blocks_i)
            if i < len(mults) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, emb_dim)
        self.attn = Attention(c) if attention else nn.Identity()
        self.mid2 = ResBlock(c, c, emb_dim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, m in reversed(list(enumerate(mults))):
            blocks_i = nn.ModuleList()
            for _ in range(blocks):
                blocks_i.append(ResBlock(c + chans.pop(), base * m, emb_dim))
                c = base * m
            self.up.append(blocks_i)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(c), c)
        self.out = nn.Conv2d(c, 1, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @property
    def multiple(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, x: torch.Tensor, log_snr: torch.Tensor) -> torch.Tensor:
        emb = self.emb(_noise_embedding(log_snr, self.emb_dim).to(x.dtype))
        h = self.inp(x)
        skips = [h]
        for i, blocks in enumerate(self.down):
            for blk in blocks:
                h = blk(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, emb)), emb)
        for i, blocks in enumerate(self.up):
            for blk in blocks:
                h = blk(torch.cat([h, skips.pop()], 1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


def build_network(arch: dict[str, Any]) -> nn.Module:
    """Build a network from the architecture config stored in a checkpoint."""
    arch = dict(arch)
    name = arch.pop("name", None)
    if name == "FastUNet":
        return FastUNet(**arch)
    if name == "DiffusionUNet":
        if "mults" in arch:
            arch["mults"] = tuple(arch["mults"])
        return DiffusionUNet(**arch)
    raise ValueError(f"unknown network {name!r} in architecture config (expected FastUNet or DiffusionUNet)")


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
