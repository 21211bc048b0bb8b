"""Classical interpolation baselines behind the same interface as every learned method.

`bicubic` is MATLAB's `imresize(I, s, 'bicubic')` on uint8 (the benchmark protocol's reference,
bit-exact with the official Set5 LR files), `lanczos` is Pillow's Lanczos-3 filter.  They need no
weights, ignore seeds and steps, and serve as the "before" image of the UI's slider.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .. import imaging
from ..types import Availability, MethodInfo, RunContext

_SCALES = (2, 3, 4, 8)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy())


def _from_uint8(a: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.array(a, copy=True)).permute(2, 0, 1)[None].to(like.device, torch.float32) / 255.0


class Bicubic:
    info = MethodInfo(
        id="bicubic",
        label="Bicubic (MATLAB imresize)",
        description="MATLAB-compatible bicubic interpolation: the benchmark's reference and the 'before' image.",
        scales=_SCALES,
        licence="MIT (no weights)",
    )

    def availability(self) -> Availability:
        return Availability(True)

    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        out = imaging.imresize(_to_uint8(lr), float(ctx.settings.scale))
        return _from_uint8(out, lr)


class Lanczos:
    info = MethodInfo(
        id="lanczos",
        label="Lanczos-3 (Pillow)",
        description="Pillow's Lanczos-3 resampling: slightly sharper than bicubic, with faint ringing.",
        scales=_SCALES,
        licence="MIT (no weights)",
    )

    def availability(self) -> Availability:
        return Availability(True)

    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        s = int(ctx.settings.scale)
        img = Image.fromarray(_to_uint8(lr))
        up = img.resize((img.width * s, img.height * s), Image.LANCZOS)
        return _from_uint8(np.asarray(up), lr)
