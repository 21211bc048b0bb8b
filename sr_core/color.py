"""Colour fix: pull a super-resolved image's colours back to those of the (upsampled) input.

Diffusion SR often shifts colours (a known failure noted in the survey and by users).  StableSR and
OSEDiff post-process their output the same way, with one of two options (docs/METHODS.md,
"Colour fix"): `adain` matches each channel's mean and standard deviation of the output to those of
the bicubic-upsampled input, and `wavelet` splits both images into low and high frequencies with a
5-level a-trous ("with holes") blur and keeps the output's high frequencies over the input's low
frequency.  `none` leaves the output alone.  This module is our own implementation of those three
options; `color_fix` dispatches on the mode name (the values of `sr_core.types.COLOR_FIXES`) and
clamps the result to [0, 1].  Computation runs in float32 at least; results keep `out`'s dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sr_core.types import COLOR_FIXES

__all__ = ["adain", "wavelet", "wavelet_split", "color_fix"]

_EPS = 1e-6


def _check_pair(out: torch.Tensor, ref: torch.Tensor, same_size: bool) -> None:
    if out.dim() != 4 or ref.dim() != 4:
        raise ValueError(
            f"colour fix expects (N, C, H, W) tensors, got {tuple(out.shape)} and {tuple(ref.shape)}"
        )
    if out.shape[1] != ref.shape[1]:
        raise ValueError(f"channel counts differ: out has {out.shape[1]}, ref has {ref.shape[1]}")
    if ref.shape[0] not in (1, out.shape[0]):
        raise ValueError(f"batch sizes differ: out has {out.shape[0]}, ref has {ref.shape[0]}")
    if same_size and tuple(out.shape[-2:]) != tuple(ref.shape[-2:]):
        raise ValueError(
            f"wavelet colour fix needs images of the same size, got {tuple(out.shape[-2:])} "
            f"and {tuple(ref.shape[-2:])} (upsample the reference to the output size first)"
        )


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def adain(out: torch.Tensor, ref: torch.Tensor, eps: float = _EPS) -> torch.Tensor:
    """Match per-image, per-channel mean and std of `out` (N, C, H, W) to those of `ref`.

    Statistics are over the spatial dimensions with the population std (unbiased=False) and
    sqrt(var + eps) in place of std, so a flat channel of `out` becomes flat at ref's mean.  `ref`
    may have any spatial size (only its statistics are used) and a batch of 1 or N.  Not clamped.
    """
    _check_pair(out, ref, same_size=False)
    wd = _work_dtype(out.dtype)
    o = out.to(wd)
    r = ref.to(device=out.device, dtype=wd)
    o_mean = o.mean(dim=(-2, -1), keepdim=True)
    o_std = torch.sqrt(o.var(dim=(-2, -1), unbiased=False, keepdim=True) + eps)
    r_mean = r.mean(dim=(-2, -1), keepdim=True)
    r_std = torch.sqrt(r.var(dim=(-2, -1), unbiased=False, keepdim=True) + eps)
    res = (o - o_mean) * (r_std / o_std) + r_mean
    return res.to(out.dtype)


def _atrous_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One a-trous level: the 3x3 [1 2 1]x[1 2 1]/16 kernel with holes (per channel), replicate padding.

    Computed separably from shifted views of the padded image (rows, then columns): the same sums as the
    depthwise 3x3 convolution (to float rounding) at a third to a seventh of its time on a CPU."""
    d = dilation
    h, w = x.shape[-2:]
    xp = F.pad(x, (d, d, d, d), mode="replicate")
    rows = xp[..., 0:h, :] + 2 * xp[..., d:d + h, :] + xp[..., 2 * d:2 * d + h, :]
    return (rows[..., 0:w] + 2 * rows[..., d:d + w] + rows[..., 2 * d:2 * d + w]) / 16


def wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) of x (N, C, H, W): low = `levels` a-trous blurs (dilation 2**i at level i),
    high = x - low, so high + low == x."""
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    low = x
    for i in range(levels):
        low = _atrous_blur(low, 2**i)
    return x - low, low


def wavelet(out: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """High frequencies of `out` plus the low frequency of `ref` (same (H, W); batch 1 or N).

    The split is `wavelet_split`: a `levels`-level a-trous decomposition with a 3x3 binomial
    kernel and replicate padding.  Not clamped.
    """
    _check_pair(out, ref, same_size=True)
    wd = _work_dtype(out.dtype)
    o = out.to(wd)
    r = ref.to(device=out.device, dtype=wd)
    high, _ = wavelet_split(o, levels)
    _, low = wavelet_split(r, levels)
    return (high + low).to(out.dtype)


def color_fix(out: torch.Tensor, ref: torch.Tensor, mode: str) -> torch.Tensor:
    """Apply colour fix `mode` ("adain", "wavelet" or "none") to `out` against `ref`; clamp to [0, 1].

    `ref` is the LR input bicubic-upsampled to `out`'s size.  Unknown modes raise ValueError.
    """
    if mode == "adain":
        res = adain(out, ref)
    elif mode == "wavelet":
        res = wavelet(out, ref)
    elif mode == "none":
        res = out
    else:
        raise ValueError(f"unknown colour fix {mode!r}; valid: {', '.join(COLOR_FIXES)}")
    return res.clamp(0.0, 1.0)
