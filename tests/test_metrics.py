"""Tests of sr_core.metrics: Y conversion, PSNR, SSIM, LR consistency, and the Set5 bicubic figure."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sr_core.imaging import imresize, load_image, mod_crop
from sr_core.metrics import lr_psnr, psnr, psnr_y, rgb_to_y, ssim, ssim_y

SHARED = Path(__file__).resolve().parents[2] / "shared"
SET5_HR = SHARED / "data" / "eval" / "Set5" / "HR"
needs_set5 = pytest.mark.skipif(
    not SET5_HR.is_dir(), reason=f"Set5 benchmark data not found at {SET5_HR} (shared data folder absent)"
)


def _rand_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_rgb_to_y_known_values():
    px = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = rgb_to_y(px)
    assert y.dtype == np.float64 and y.shape == (1, 5)
    assert np.allclose(y[0], [16.0, 235.0, 16 + 65.481, 16 + 128.553, 16 + 24.966], atol=1e-9)
    g = _rand_u8((4, 5))
    assert np.array_equal(rgb_to_y(g), g.astype(np.float64))  # grayscale used as is
    assert np.array_equal(rgb_to_y(g[:, :, None]), g.astype(np.float64))
    assert not np.allclose(rgb_to_y(np.dstack([g] * 3)), g)  # Y of gray RGB is in 16..235, not g


def test_psnr_known_values():
    a = np.zeros((4, 4), np.uint8)
    assert psnr(a, a) == math.inf
    b = np.full((4, 4), 10, np.uint8)  # MSE 100
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100), abs=1e-12)  # 28.1308 dB
    assert psnr(a, b) == pytest.approx(28.130803608679106, abs=1e-9)
    c = a.copy()
    c[0, 0] = 255  # MSE 255^2 / 16 -> 10 log10(16)
    assert psnr(a, c) == pytest.approx(10 * math.log10(16), abs=1e-12)
    assert psnr(a / 255.0, b / 255.0, data_range=1.0) == pytest.approx(psnr(a, b), abs=1e-9)
    with pytest.raises(ValueError):
        psnr(a, np.zeros((4, 5)))


def test_psnr_y_border_and_channels():
    hr = _rand_u8((20, 20, 3))
    sr = hr.copy()
    sr[:2] = 0  # damage only the top border rows
    assert psnr_y(sr, hr, 2) == math.inf
    assert psnr_y(sr, hr, 1) < 100
    # only the Y channel counts: a uniform +1 on every channel moves Y by (65.481+128.553+24.966)/255
    a = np.full((10, 10, 3), 100, np.uint8)
    b = a + 1
    expect = 10 * math.log10(255**2 / ((65.481 + 128.553 + 24.966) / 255) ** 2)
    assert psnr_y(a, b, 0) == pytest.approx(expect, abs=1e-9)
    g = _rand_u8((12, 12), 1)
    assert psnr_y(g, g, 4) == math.inf


def _ssim_naive(a, b, L=255.0):
    """Direct 2-D (non-separable) reference of the Gaussian SSIM, valid region."""
    r = np.arange(11) - 5.0
    g = np.exp(-(r**2) / (2 * 1.5**2))
    win = np.outer(g, g)
    win /= win.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    h, w = a.shape
    vals = []
    for i in range(h - 10):
        for j in range(w - 10):
            pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
            ma, mb = (win * pa).sum(), (win * pb).sum()
            va = (win * pa * pa).sum() - ma * ma
            vb = (win * pb * pb).sum() - mb * mb
            cv = (win * pa * pb).sum() - ma * mb
            vals.append(((2 * ma * mb + c1) * (2 * cv + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_ssim_known_cases():
    a = _rand_u8((24, 20)).astype(np.float64)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    # constant images: SSIM reduces to the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = (0.01 * 255) ** 2
    x, y = np.full((16, 16), 50.0), np.full((16, 16), 100.0)
    assert ssim(x, y) == pytest.approx((2 * 50 * 100 + c1) / (50**2 + 100**2 + c1), abs=1e-12)
    b = np.clip(a + np.random.default_rng(2).normal(0, 20, a.shape), 0, 255)
    s = ssim(a, b)
    assert 0.0 < s < 1.0
    assert s == pytest.approx(ssim(b, a), abs=1e-12)
    assert s == pytest.approx(_ssim_naive(a, b), abs=1e-10)
    with pytest.raises(ValueError):
        ssim(np.zeros((10, 20)), np.zeros((10, 20)))  # smaller than the window


def test_ssim_y():
    hr = _rand_u8((30, 30, 3))
    assert ssim_y(hr, hr, 4) == pytest.approx(1.0, abs=1e-12)
    sr = np.clip(hr.astype(int) + 8, 0, 255).astype(np.uint8)
    assert ssim_y(sr, hr, 4) == pytest.approx(_ssim_naive(rgb_to_y(sr)[4:-4, 4:-4], rgb_to_y(hr)[4:-4, 4:-4]), abs=1e-10)


def test_lr_psnr():
    hr = _rand_u8((24, 36, 3))
    lr = imresize(hr, 1 / 4)
    assert lr_psnr(hr, lr, 4) == math.inf  # the downscale is deterministic
    sr = imresize(lr, 4)
    v = lr_psnr(sr, lr, 4)
    assert 10 < v < math.inf
    with pytest.raises(ValueError):
        lr_psnr(sr, lr[:-1], 4)


@needs_set5
def test_set5_bicubic_x4_matches_published():
    ps, ss = [], []
    for p in sorted(SET5_HR.glob("*.png")):
        hr = mod_crop(np.asarray(load_image(p).convert("RGB")), 4)
        sr = imresize(imresize(hr, 1 / 4), 4)
        ps.append(psnr_y(sr, hr, 4))
        ss.append(ssim_y(sr, hr, 4))
    assert len(ps) == 5
    assert 28.42 <= float(np.mean(ps)) <= 28.43  # published 28.42 dB
    assert 0.810 <= float(np.mean(ss)) <= 0.812  # published (MATLAB, uint8 Y) 0.8104
