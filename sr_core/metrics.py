"""Full-reference image-quality metrics of the standard super-resolution benchmark protocol.

This module computes the numbers SR papers report: PSNR and SSIM on the luma (Y) channel of
ITU-R BT.601 in the studio range 16..235 (MATLAB `rgb2ycbcr` on uint8 pixels, kept in float
without rounding, as the common SR benchmark scripts do), with `scale` border pixels cropped on
each side and grayscale images used as they are; SSIM is Wang et al.'s (2004) index with an
11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, L = 255, averaged over the valid region.
It also provides SRDiff's LR-consistency PSNR (the SR result downscaled with MATLAB-compatible
bicubic and compared with the LR input) and a plain PSNR on raw arrays.  It corresponds to the
evaluation step of the benchmark protocol described in the data notes (docs/DATA.md).
"""

from __future__ import annotations

import math

import numpy as np

from sr_core.imaging import imresize

__all__ = ["rgb_to_y", "psnr", "psnr_y", "ssim", "ssim_y", "lr_psnr"]

# BT.601 studio-swing luma coefficients for R, G, B in [0, 255] (MATLAB rgb2ycbcr, first row).
_Y_COEFFS = np.array([65.481, 128.553, 24.966], dtype=np.float64) / 255.0


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Y (16..235) of an HxWx3 RGB image with values in [0, 255], as float64 HxW, unrounded.

    HxW and HxWx1 (grayscale) images are returned as they are (as float64).
    """
    a = np.asarray(img)
    if a.ndim == 2:
        return a.astype(np.float64)
    if a.ndim == 3 and a.shape[2] == 1:
        return a[:, :, 0].astype(np.float64)
    if a.ndim == 3 and a.shape[2] in (3, 4):
        rgb = a[:, :, :3].astype(np.float64)
        return 16.0 + rgb @ _Y_COEFFS
    raise ValueError(f"rgb_to_y expects HxW, HxWx1 or HxWx3, got shape {a.shape}")


def _same_shape(a: np.ndarray, b: np.ndarray, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {a.shape} vs {b.shape}")


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    border = int(border)
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if border == 0:
        return a
    if a.shape[0] <= 2 * border or a.shape[1] <= 2 * border:
        raise ValueError(f"image of {a.shape[0]}x{a.shape[1]} is too small for a border of {border}")
    return a[border:-border, border:-border, ...]


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB between two arrays of the same shape (float64 maths; inf when identical)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    _same_shape(a, b, "psnr")
    if a.size == 0:
        raise ValueError("psnr: empty arrays")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(float(data_range) ** 2 / mse)


def psnr_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """Y-channel PSNR (data range 255) of uint8 images with `border` pixels cropped on each side."""
    sr = np.asarray(sr)
    hr = np.asarray(hr)
    _same_shape(sr, hr, "psnr_y")
    return psnr(_crop(rgb_to_y(sr), border), _crop(rgb_to_y(hr), border), 255.0)


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r * r) / (2.0 * sigma * sigma))
    return g / g.sum()


def _filter_valid(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """2-D 'valid' filtering of HxW `x` with the separable window outer(g, g)."""
    k = g.shape[0]
    h, w = x.shape
    rows = np.zeros((h - k + 1, w), dtype=np.float64)
    for i in range(k):
        rows += g[i] * x[i : i + h - k + 1, :]
    out = np.zeros((h - k + 1, w - k + 1), dtype=np.float64)
    for j in range(k):
        out += g[j] * rows[:, j : j + w - k + 1]
    return out


def _ssim_2d(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    g = _gaussian_window()
    if a.shape[0] < g.size or a.shape[1] < g.size:
        raise ValueError(f"ssim needs at least {g.size}x{g.size} pixels, got {a.shape[0]}x{a.shape[1]}")
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mu_a = _filter_valid(a, g)
    mu_b = _filter_valid(b, g)
    mu_aa, mu_bb, mu_ab = mu_a * mu_a, mu_b * mu_b, mu_a * mu_b
    var_a = _filter_valid(a * a, g) - mu_aa
    var_b = _filter_valid(b * b, g) - mu_bb
    cov = _filter_valid(a * b, g) - mu_ab
    num = (2.0 * mu_ab + c1) * (2.0 * cov + c2)
    den = (mu_aa + mu_bb + c1) * (var_a + var_b + c2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of two HxW arrays (or HxWxC: the mean over channels), Gaussian 11x11 / 1.5, valid region."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    _same_shape(a, b, "ssim")
    if a.ndim == 2:
        return _ssim_2d(a, b, data_range)
    if a.ndim == 3:
        return float(np.mean([_ssim_2d(a[:, :, c], b[:, :, c], data_range) for c in range(a.shape[2])]))
    raise ValueError(f"ssim expects HxW or HxWxC arrays, got shape {a.shape}")


def ssim_y(sr: np.ndarray, hr: np.ndarray, border: int) -> float:
    """Y-channel SSIM (L = 255) of uint8 images with `border` pixels cropped on each side."""
    sr = np.asarray(sr)
    hr = np.asarray(hr)
    _same_shape(sr, hr, "ssim_y")
    return _ssim_2d(_crop(rgb_to_y(sr), border), _crop(rgb_to_y(hr), border), 255.0)


def lr_psnr(sr: np.ndarray, lr: np.ndarray, scale: int) -> float:
    """SRDiff's LR-consistency PSNR: imresize(sr, 1/scale) (uint8) vs `lr`, all channels, no crop."""
    sr = np.asarray(sr)
    lr = np.asarray(lr)
    if sr.dtype != np.uint8 or lr.dtype != np.uint8:
        raise ValueError(f"lr_psnr expects uint8 images, got {sr.dtype} and {lr.dtype}")
    down = imresize(sr, 1.0 / int(scale))
    _same_shape(down, lr, "lr_psnr (downscaled SR vs LR)")
    return psnr(down, lr, 255.0)
