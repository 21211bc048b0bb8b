"""Degradations that turn HR training patches into LR inputs: the benchmark's MATLAB bicubic, the
Real-ESRGAN second-order real-world pipeline, and a configurable mix of the two.

`bicubic_lr` is MATLAB `imresize(hr, 1/s, 'bicubic')` on uint8 (per-pass rounding) via
`sr_core.imaging.imresize` -- the protocol behind the published PSNR tables.  `RealESRGANDegrader`
follows the second-order degradation model of Real-ESRGAN (Wang et al., ICCV-W 2021, Sec. 3; the
official `realesrgan/models/realesrgan_model.py` `feed_data` and `basicsr/data/degradations.py` /
`realesrgan_dataset.py`): blur (isotropic / anisotropic / generalised / plateau Gaussian kernels, or
a sinc filter), random resize (area / bilinear / bicubic), Gaussian or Poisson noise (colour or
grey), JPEG compression; the whole sequence twice with the second-stage parameters, then a resize
to the target size and a final sinc filter before or after the last JPEG.  The published defaults
are in the frozen dataclass `RealESRGANParams`.  Everything is torch (CPU or GPU) driven by one
seeded `torch.Generator` (on the CPU, so results do not depend on the device), except JPEG, which
Pillow encodes/decodes per image on the CPU.  The code is ours.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import imaging

__all__ = [
    "bicubic_lr", "RealESRGANParams", "RealESRGANDegrader", "DegradationMix", "random_kernel",
    "circular_lowpass_kernel", "BICUBIC", "REALESRGAN",
]


# --------------------------------------------------------------------------------------------
# Benchmark bicubic


def bicubic_lr(hr, scale: int = 4):
    """MATLAB-compatible bicubic downscaling by `scale` (the benchmark protocol).

    numpy uint8 HxWxC -> uint8; torch uint8 (..., H, W) -> uint8; torch float in [0, 1] -> float,
    quantised to uint8 levels first and rounded after each pass exactly like the uint8 path, so the
    float result equals the benchmark LR / 255.
    """
    if isinstance(hr, torch.Tensor) and hr.is_floating_point():
        u8 = hr.detach().clamp(0, 1).mul(255).round().to(torch.uint8)
        return imaging.imresize(u8, 1.0 / scale).to(hr.dtype) / 255.0
    return imaging.imresize(hr, 1.0 / scale)


# --------------------------------------------------------------------------------------------
# Real-ESRGAN second-order degradation


@dataclass(frozen=True)
class RealESRGANParams:
    """Published Real-ESRGAN x4 defaults (options `train_realesrnet_x4plus.yml`)."""

    # ---- first degradation stage: blur kernel (applied to HR)
    blur_kernel_size: int = 21  # kernels are odd sizes drawn from 7, 9, ..., 21
    kernel_list: tuple = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kernel_prob: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)  # probability of each kernel type
    sinc_prob: float = 0.1  # probability of a sinc filter instead of a Gaussian-type kernel
    blur_sigma: tuple = (0.2, 3.0)  # Gaussian std range (px)
    betag_range: tuple = (0.5, 4.0)  # shape of the generalised Gaussian
    betap_range: tuple = (1.0, 2.0)  # shape of the plateau kernel
    # ---- first stage: resize, noise, JPEG
    resize_prob: tuple = (0.2, 0.7, 0.1)  # up, down, keep
    resize_range: tuple = (0.15, 1.5)  # scale factor range
    gaussian_noise_prob: float = 0.5  # Gaussian (else Poisson) noise
    noise_range: tuple = (1.0, 30.0)  # Gaussian sigma in 0..255 levels
    poisson_scale_range: tuple = (0.05, 3.0)  # Poisson noise strength
    gray_noise_prob: float = 0.4  # the same noise on all channels
    jpeg_range: tuple = (30, 95)  # JPEG quality
    # ---- second degradation stage
    second_blur_prob: float = 0.8  # probability of blurring in stage 2
    blur_kernel_size2: int = 21
    kernel_list2: tuple = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
    kernel_prob2: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sinc_prob2: float = 0.1
    blur_sigma2: tuple = (0.2, 1.5)
    betag_range2: tuple = (0.5, 4.0)
    betap_range2: tuple = (1.0, 2.0)
    resize_prob2: tuple = (0.3, 0.4, 0.3)
    resize_range2: tuple = (0.3, 1.2)
    gaussian_noise_prob2: float = 0.5
    noise_range2: tuple = (1.0, 25.0)
    poisson_scale_range2: tuple = (0.05, 2.5)
    gray_noise_prob2: float = 0.4
    jpeg_range2: tuple = (30, 95)
    # ---- final sinc filter (applied in the last step, before or after the last JPEG)
    final_sinc_prob: float = 0.8
    resize_modes: tuple = ("area", "bilinear", "bicubic")  # random resize picks one uniformly

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _u(g: torch.Generator, lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand((), generator=g).item())


def _choice(g: torch.Generator, items: Sequence, probs: Optional[Sequence[float]] = None):
    if probs is None:
        return items[int(torch.randint(0, len(items), (1,), generator=g).item())]
    p = torch.tensor(probs, dtype=torch.float64)
    return items[int(torch.multinomial(p / p.sum(), 1, generator=g).item())]


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    return xx, yy


def _sigma_matrix(sig_x: float, sig_y: float, theta: float) -> torch.Tensor:
    d = torch.tensor([[sig_x ** 2, 0.0], [0.0, sig_y ** 2]], dtype=torch.float64)
    c, s = math.cos(theta), math.sin(theta)
    u = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    return u @ d @ u.T


def _gaussian_family(size: int, sig_x: float, sig_y: float, theta: float, kind: str, beta: float) -> torch.Tensor:
    """Anisotropic Gaussian / generalised Gaussian / plateau kernel, normalised to sum 1."""
    inv = torch.linalg.inv(_sigma_matrix(sig_x, sig_y, theta))
    xx, yy = _grid(size)
    q = inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy  # x^T S^-1 x
    if kind == "gaussian":
        k = torch.exp(-0.5 * q)
    elif kind == "generalized":
        k = torch.exp(-0.5 * q.clamp_min(0) ** beta)
    elif kind == "plateau":
        k = 1.0 / (q.clamp_min(0) ** beta + 1.0)
    else:
        raise ValueError(kind)
    return k / k.sum()


def circular_lowpass_kernel(cutoff: float, size: int) -> torch.Tensor:
    """2-D sinc (circular low-pass) filter: cutoff * J1(cutoff * r) / (2 pi r), normalised to sum 1."""
    from scipy.special import j1

    xx, yy = _grid(size)
    r = torch.sqrt(xx * xx + yy * yy).numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        k = cutoff * j1(cutoff * r) / (2 * np.pi * r)
    k[r == 0] = cutoff ** 2 / (4 * np.pi)
    k = torch.from_numpy(k)
    return k / k.sum()


def random_kernel(g: torch.Generator, size_max: int, kinds: Sequence[str], probs: Sequence[float],
                  sigma: Sequence[float], betag: Sequence[float], betap: Sequence[float],
                  sinc_prob: float, scale: int = 4) -> tuple[torch.Tensor, dict]:
    """One random blur kernel (float64, odd size padded to `size_max`) and its parameters."""
    size = int(_choice(g, list(range(7, size_max + 1, 2))))
    if torch.rand((), generator=g).item() < sinc_prob:
        # sinc: lower cutoffs for small kernels, as in Real-ESRGAN
        cutoff = _u(g, math.pi / 3, math.pi) if size < 13 else _u(g, math.pi / 5, math.pi)
        k = circular_lowpass_kernel(cutoff, size)
        info = {"type": "sinc", "size": size, "cutoff": cutoff}
    else:
        kind = _choice(g, list(kinds), list(probs))
        iso = kind.endswith("iso") and not kind.endswith("aniso")
        sx = _u(g, *sigma)
        sy = sx if iso else _u(g, *sigma)
        theta = 0.0 if iso else _u(g, -math.pi, math.pi)
        if kind.startswith("generalized"):
            # beta < 1 half the time, as in the official sampler
            beta = _u(g, betag[0], 1.0) if torch.rand((), generator=g).item() < 0.5 else _u(g, 1.0, betag[1])
            family = "generalized"
        elif kind.startswith("plateau"):
            beta = _u(g, betap[0], 1.0) if torch.rand((), generator=g).item() < 0.5 else _u(g, 1.0, betap[1])
            family = "plateau"
        else:
            beta, family = 1.0, "gaussian"
        k = _gaussian_family(size, sx, sy, theta, family, beta)
        info = {"type": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta, "beta": beta}
    pad = (size_max - size) // 2
    k = F.pad(k, (pad, pad, pad, pad))
    return k, info


def _filter(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D filtering of (C, H, W) or (N, C, H, W) with one kernel, reflect padding."""
    squeeze = x.ndim == 3
    if squeeze:
        x = x[None]
    n, c, h, w = x.shape
    ks = k.shape[-1]
    pad = ks // 2
    mode = "reflect" if pad < min(h, w) else "replicate"
    xp = F.pad(x, (pad, pad, pad, pad), mode=mode)
    weight = k.to(x.dtype).to(x.device).expand(c, 1, ks, ks)
    y = F.conv2d(xp, weight, groups=c)
    return y[0] if squeeze else y


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    x4 = x[None]
    if mode == "area":
        y = F.interpolate(x4, size=size, mode="area")
    else:
        y = F.interpolate(x4, size=size, mode=mode, align_corners=False)
    return y[0]


def _noise(x: torch.Tensor, g: torch.Generator, gauss_prob: float, sigma_range, poisson_range,
           gray_prob: float) -> tuple[torch.Tensor, dict]:
    gray = torch.rand((), generator=g).item() < gray_prob
    c, h, w = x.shape
    if torch.rand((), generator=g).item() < gauss_prob:
        sigma = _u(g, *sigma_range) / 255.0
        shape = (1, h, w) if gray else (c, h, w)
        n = torch.randn(shape, generator=g, dtype=torch.float32).to(x.device) * sigma
        return x + n, {"noise": "gaussian", "sigma": sigma * 255.0, "gray": gray}
    scale = _u(g, *poisson_range)
    src = x.clamp(0, 1)
    if gray:
        src = (0.299 * src[0] + 0.587 * src[1] + 0.114 * src[2])[None]
    q = torch.round(src * 255.0)
    # number of distinct levels per image decides the Poisson "photon" scale (as upstream)
    vals = max(int(torch.unique(q).numel()), 2)
    vals = 2 ** math.ceil(math.log2(vals))
    lam = (q / 255.0 * vals).cpu().to(torch.float64)
    sample = torch.poisson(lam, generator=g).to(x.dtype).to(x.device) / vals
    n = (sample - lam.to(x.dtype).to(x.device) / vals) * scale
    return x + n, {"noise": "poisson", "scale": scale, "gray": gray}


def _jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """Pillow JPEG encode/decode of one (3, H, W) image in [0, 1] (on the CPU)."""
    a = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    b = np.asarray(Image.open(buf).convert("RGB"))
    return torch.from_numpy(b.copy()).permute(2, 0, 1).to(x.device, x.dtype) / 255.0


class RealESRGANDegrader:
    """Real-ESRGAN second-order degradation of HR images (N, 3, H, W) in [0, 1] -> LR (N, 3, H/s, W/s).

    Each image draws its own parameters from `generator` (a CPU torch.Generator), so the output is a
    pure function of the seed.  `last_info` keeps the parameters drawn for each image.
    """

    def __init__(self, params: RealESRGANParams = RealESRGANParams(), scale: int = 4):
        self.p = params
        self.scale = int(scale)
        self.last_info: list[dict] = []

    def _stage(self, x: torch.Tensor, g: torch.Generator, second: bool, ori_hw: tuple[int, int]) -> tuple[torch.Tensor, dict]:
        p = self.p
        info: dict = {}
        sfx = "2" if second else ""
        if not second or torch.rand((), generator=g).item() < p.second_blur_prob:
            k, kinfo = random_kernel(
                g, getattr(p, "blur_kernel_size" + sfx), getattr(p, "kernel_list" + sfx),
                getattr(p, "kernel_prob" + sfx), getattr(p, "blur_sigma" + sfx), getattr(p, "betag_range" + sfx),
                getattr(p, "betap_range" + sfx), getattr(p, "sinc_prob" + sfx), self.scale)
            x = _filter(x, k)
            info["blur"] = kinfo
        # random resize
        updown = _choice(g, ["up", "down", "keep"], list(getattr(p, "resize_prob" + sfx)))
        lo, hi = getattr(p, "resize_range" + sfx)
        if updown == "up":
            s = _u(g, 1.0, hi)
        elif updown == "down":
            s = _u(g, lo, 1.0)
        else:
            s = 1.0
        mode = _choice(g, list(p.resize_modes))
        h, w = x.shape[-2:]
        if second:
            size = (max(1, int(ori_hw[0] / self.scale * s)), max(1, int(ori_hw[1] / self.scale * s)))
        else:
            size = (max(1, int(h * s)), max(1, int(w * s)))
        x = _resize(x, size, mode)
        info["resize"] = {"scale": s, "mode": mode, "size": list(size)}
        x, ninfo = _noise(x, g, getattr(p, "gaussian_noise_prob" + sfx), getattr(p, "noise_range" + sfx),
                          getattr(p, "poisson_scale_range" + sfx), getattr(p, "gray_noise_prob" + sfx))
        info["noise"] = ninfo
        return x.clamp(0, 1), info  # upstream clips after adding noise

    def degrade_one(self, hr: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, dict]:
        p = self.p
        ori_hw = tuple(hr.shape[-2:])
        out_hw = (ori_hw[0] // self.scale, ori_hw[1] // self.scale)
        x, info1 = self._stage(hr.float(), g, False, ori_hw)
        q1 = int(round(_u(g, *p.jpeg_range)))
        x = _jpeg(x.clamp(0, 1), q1)
        info1["jpeg"] = q1
        x, info2 = self._stage(x, g, True, ori_hw)
        # final: resize back to the target size + sinc, in one of two orders around the last JPEG
        sinc = None
        if torch.rand((), generator=g).item() < p.final_sinc_prob:
            size = int(_choice(g, list(range(7, p.blur_kernel_size2 + 1, 2))))
            sinc = circular_lowpass_kernel(_u(g, math.pi / 3, math.pi), size)
        mode = _choice(g, list(p.resize_modes))
        q2 = int(round(_u(g, *p.jpeg_range2)))
        order = "resize_sinc_jpeg" if torch.rand((), generator=g).item() < 0.5 else "jpeg_resize_sinc"
        if order == "resize_sinc_jpeg":
            x = _resize(x, out_hw, mode)
            if sinc is not None:
                x = _filter(x, sinc)
            x = _jpeg(x.clamp(0, 1), q2)
        else:
            x = _jpeg(x.clamp(0, 1), q2)
            x = _resize(x, out_hw, mode)
            if sinc is not None:
                x = _filter(x, sinc)
        x = (x.clamp(0, 1) * 255.0).round() / 255.0
        info = {"stage1": info1, "stage2": info2,
                "final": {"order": order, "mode": mode, "jpeg": q2, "sinc": sinc is not None}}
        return x.to(hr.dtype), info

    def __call__(self, hr: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if hr.ndim != 4:
            raise ValueError(f"expected (N, 3, H, W), got {tuple(hr.shape)}")
        outs, self.last_info = [], []
        for i in range(hr.shape[0]):
            y, info = self.degrade_one(hr[i], generator)
            outs.append(y)
            self.last_info.append(info)
        return torch.stack(outs)


# --------------------------------------------------------------------------------------------
# Mix

BICUBIC = "bicubic"
REALESRGAN = "realesrgan"


@dataclass(frozen=True)
class DegradationMix:
    """Which degradation makes each training LR: per-sample choice of bicubic vs Real-ESRGAN."""

    bicubic: float = 1.0  # relative weight of the benchmark bicubic degradation
    realesrgan: float = 0.0  # relative weight of the Real-ESRGAN second-order pipeline
    params: RealESRGANParams = field(default_factory=RealESRGANParams)

    def __post_init__(self):
        if self.bicubic < 0 or self.realesrgan < 0 or self.bicubic + self.realesrgan <= 0:
            raise ValueError("DegradationMix weights must be >= 0 and not both 0")

    @property
    def p_realesrgan(self) -> float:
        return self.realesrgan / (self.bicubic + self.realesrgan)

    def describe(self) -> str:
        if self.realesrgan == 0:
            return "bicubic x4 (MATLAB imresize on uint8, the benchmark protocol)"
        if self.bicubic == 0:
            return "Real-ESRGAN second-order degradation (published defaults)"
        return (f"mix: {100 * (1 - self.p_realesrgan):.0f}% bicubic (MATLAB imresize), "
                f"{100 * self.p_realesrgan:.0f}% Real-ESRGAN second-order degradation")

    def to_dict(self) -> dict:
        d = {"bicubic": self.bicubic, "realesrgan": self.realesrgan, "description": self.describe()}
        if self.realesrgan > 0:
            d["params"] = self.params.to_dict()
        return d

    def apply(self, hr: torch.Tensor, lr_bicubic: Optional[torch.Tensor], generator: torch.Generator,
              scale: int = 4) -> torch.Tensor:
        """LR batch for HR batch `hr` (N, 3, H, W) in [0, 1]; `lr_bicubic` may hold the bicubic LR."""
        if lr_bicubic is None:
            lr_bicubic = bicubic_lr(hr, scale)
        if self.realesrgan == 0:
            return lr_bicubic
        pick = torch.rand(hr.shape[0], generator=generator) < self.p_realesrgan
        if not pick.any():
            return lr_bicubic
        out = lr_bicubic.clone()
        deg = RealESRGANDegrader(self.params, scale)
        idx = pick.nonzero().flatten()
        out[idx.to(out.device)] = deg(hr[idx.to(hr.device)], generator).to(out.dtype)
        return out
