"""RRDBNet (ESRGAN's Residual-in-Residual Dense Block network) as used by SRDiff as its LR encoder.

Corresponds to `RRDBNet` in the official SRDiff code (LeiaLi/SRDiff, `models/diffsr_modules.py`,
with its blocks `RRDB` / `ResidualDenseBlock_5C` in `models/commons.py`); the parameter names here
are the ones under the `rrdb.` prefix of the official checkpoint (`conv_first`,
`RRDB_trunk.N.RDB{1,2,3}.conv{1..5}`, `trunk_conv`, `upconv1`, `upconv2` [`upconv3` at x8],
`HRconv`, `conv_last`), so an official `rrdb.*` state dict loads strictly.  Value convention, as in
the official code: the input LR image is in [-1, 1] (SRDiff normalises images with mean 0.5 /
std 0.5); the network maps it to [0, 1] internally, and returns the SR image clamped to [0, 1] and
mapped back to [-1, 1].  With `get_fea=True` it also returns the list of `nb + 1` LR-resolution
features: the output of every RRDB block followed by the trunk output (`conv_first` features +
`trunk_conv`); SRDiff's UNet concatenates `feas[2::3]` (blocks 3, 6 and the trunk for nb = 8).
SRDiff's configuration is nf = 32, nb = 8, gc = nf // 2 = 16.  The code is ours.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResidualDenseBlock", "RRDB", "RRDBNet"]


class ResidualDenseBlock(nn.Module):
    """Five densely connected 3x3 convs; the last one's output is scaled by 0.2 and added to the input."""

    def __init__(self, nf: int = 64, gc: int = 32):
        super().__init__()
        self.conv1 = nn.Conv2d(nf, gc, 3, 1, 1)
        self.conv2 = nn.Conv2d(nf + gc, gc, 3, 1, 1)
        self.conv3 = nn.Conv2d(nf + 2 * gc, gc, 3, 1, 1)
        self.conv4 = nn.Conv2d(nf + 3 * gc, gc, 3, 1, 1)
        self.conv5 = nn.Conv2d(nf + 4 * gc, nf, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
        x1 = act(self.conv1(x))
        x2 = act(self.conv2(torch.cat((x, x1), 1)))
        x3 = act(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = act(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x + 0.2 * x5


class RRDB(nn.Module):
    """Residual in Residual Dense Block: three dense blocks, residual scaled by 0.2."""

    def __init__(self, nf: int, gc: int = 32):
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.RDB3(self.RDB2(self.RDB1(x)))


class RRDBNet(nn.Module):
    """RRDB trunk at LR resolution, then nearest-neighbour x2 upsampling + conv per factor of 2.

    Args:
        in_nc, out_nc: image channels in and out (3, 3).
        nf: trunk features (SRDiff: 32).
        nb: number of RRDB blocks (SRDiff: 8).
        gc: growth channels of the dense blocks (SRDiff: nf // 2).
        scale: 2, 4 or 8; one `upconvK` per factor of two (official: upconv1, upconv2, and
            upconv3 at x8).
    """

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 32, nb: int = 8, gc: int = 16,
                 scale: int = 4):
        super().__init__()
        n_up = int(round(math.log2(scale))) if scale > 0 else -1
        if scale not in (2, 4, 8):
            raise ValueError(f"RRDBNet supports scale 2, 4 or 8, got {scale}")
        self.in_nc, self.out_nc, self.nf, self.nb, self.gc, self.scale = in_nc, out_nc, nf, nb, gc, scale
        self.conv_first = nn.Conv2d(in_nc, nf, 3, 1, 1)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = nn.Conv2d(nf, nf, 3, 1, 1)
        for i in range(1, n_up + 1):
            self.add_module(f"upconv{i}", nn.Conv2d(nf, nf, 3, 1, 1))
        self.n_up = n_up
        self.HRconv = nn.Conv2d(nf, nf, 3, 1, 1)
        self.conv_last = nn.Conv2d(nf, out_nc, 3, 1, 1)

    def config(self) -> dict:
        """Constructor arguments, e.g. for config.json next to exported weights."""
        return dict(in_nc=self.in_nc, out_nc=self.out_nc, nf=self.nf, nb=self.nb, gc=self.gc,
                    scale=self.scale)

    def forward(self, x: torch.Tensor, get_fea: bool = False, clamp: bool = True):
        """x: LR image (N, in_nc, h, w) in [-1, 1].  Returns SR (N, out_nc, s*h, s*w) in [-1, 1],
        and with `get_fea` also the list of nb + 1 features (N, nf, h, w).  `clamp=False` (ours, for
        training only) skips the official output clamp so that every pixel receives a gradient."""
        feas = []
        x = (x + 1) / 2
        fea_first = fea = self.conv_first(x)
        for block in self.RRDB_trunk:
            fea = block(fea)
            feas.append(fea)
        fea = fea_first + self.trunk_conv(fea)
        feas.append(fea)
        for i in range(1, self.n_up + 1):
            up = F.interpolate(fea, scale_factor=2, mode="nearest")
            fea = F.leaky_relu(getattr(self, f"upconv{i}")(up), 0.2)
        out = self.conv_last(F.leaky_relu(self.HRconv(fea), 0.2))
        if clamp:
            out = out.clamp(0, 1)
        out = out * 2 - 1
        if get_fea:
            return out, feas
        return out
