"""Tests of sr_core.color: AdaIN and wavelet colour fix, dispatch and errors."""

from __future__ import annotations

import pytest
import torch

from sr_core.color import adain, color_fix, wavelet, wavelet_split
from sr_core.types import COLOR_FIXES


def _smooth(n, h, w, seed=0):
    """A smooth colour image in [0.2, 0.8] (low-frequency content only)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return 0.2 + 0.6 * (img - img.amin()) / (img.amax() - img.amin())


def _checker(h, w, amp):
    """Pixel-level checkerboard: pure high frequency, zero mean."""
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return amp * (((yy + xx) % 2).float() * 2 - 1)


@pytest.mark.parametrize("mode", ["adain", "wavelet"])
@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (64, 48), (130, 97)])
def test_fix_against_itself_is_noop(mode, h, w):
    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w))
    y = color_fix(x, x, mode)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float((y - x).abs().max()) < 1e-5


def test_adain_matches_reference_statistics():
    g = torch.Generator().manual_seed(1)
    out = torch.rand(2, 3, 40, 60, generator=g) * 0.3 + 0.5  # washed-out, shifted colours
    ref = torch.rand(2, 3, 40, 60, generator=g) ** 2
    y = adain(out, ref)
    assert torch.allclose(y.mean(dim=(-2, -1)), ref.mean(dim=(-2, -1)), atol=1e-5)
    y_std = y.std(dim=(-2, -1), unbiased=False)
    r_std = ref.std(dim=(-2, -1), unbiased=False)
    assert torch.allclose(y_std, r_std, rtol=1e-3)
    # the structure of out is kept: per channel, y is an increasing affine map of out
    corr = torch.corrcoef(torch.stack([y[0, 0].flatten(), out[0, 0].flatten()]))[0, 1]
    assert float(corr) > 0.9999


def test_adain_reference_of_other_size_and_flat_channel():
    out = torch.rand(1, 3, 32, 32)
    ref = torch.rand(1, 3, 8, 8)
    y = adain(out, ref)
    assert torch.allclose(y.mean(dim=(-2, -1)), ref.mean(dim=(-2, -1)), atol=1e-5)
    flat = torch.full((1, 3, 16, 16), 0.7)
    y = adain(flat, ref)  # a flat channel stays (nearly) flat, at the reference mean
    assert torch.isfinite(y).all()
    assert float(y.std(dim=(-2, -1)).max()) < 1e-3
    assert torch.allclose(y.mean(dim=(-2, -1)), ref.mean(dim=(-2, -1)), atol=1e-3)


def test_wavelet_keeps_out_detail_and_ref_colour():
    h, w = 96, 80
    ref = _smooth(1, h, w)
    pattern = _checker(h, w, 0.05).expand(1, 3, h, w)
    shift = torch.tensor([0.08, -0.06, 0.04]).view(1, 3, 1, 1)
    out = ref + pattern + shift
    y = wavelet(out, ref)
    # the colour shift is gone (on average and per pixel), the high-frequency pattern remains
    assert float((y - ref).mean(dim=(-2, -1)).abs().max()) < 2e-3
    detail = y - ref
    assert float((detail - pattern).abs().max()) < 0.02
    assert float((detail * pattern).sum() / (pattern * pattern).sum()) == pytest.approx(1.0, abs=0.02)
    # through the dispatcher (values stay in [0, 1] here, so the clamp changes nothing)
    assert torch.allclose(color_fix(out, ref, "wavelet"), y.clamp(0, 1))
    # AdaIN in contrast cannot remove a spatially varying pattern but does fix the mean shift
    a = adain(out, ref)
    assert float((a - ref).mean(dim=(-2, -1)).abs().max()) < 1e-5


@pytest.mark.parametrize("h,w", [(1, 1), (5, 7), (40, 33)])
@pytest.mark.parametrize("dilation", [1, 2, 16])
def test_atrous_blur_is_the_depthwise_3x3_kernel_with_holes(h, w, dilation):
    """The separable blur (shifted views) computes the [1 2 1]x[1 2 1]/16 depthwise convolution with holes and
    replicate padding -- also where the holes reach past a small image."""
    from sr_core.color import _atrous_blur

    x = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h * w + dilation))
    k1 = torch.tensor([1.0, 2.0, 1.0])
    kernel = (torch.outer(k1, k1) / 16.0).expand(3, 1, 3, 3).contiguous()
    xp = torch.nn.functional.pad(x, (dilation,) * 4, mode="replicate")
    ref = torch.nn.functional.conv2d(xp, kernel, dilation=dilation, groups=3)
    torch.testing.assert_close(_atrous_blur(x, dilation), ref, atol=1e-6, rtol=0)


def test_wavelet_split_sums_back_and_low_is_smooth():
    x = torch.rand(1, 3, 50, 70, generator=torch.Generator().manual_seed(3))
    high, low = wavelet_split(x, levels=5)
    assert torch.allclose(high + low, x, atol=1e-6)
    # low pass removes most pixel-to-pixel variation
    tv = lambda t: float((t[..., 1:, :] - t[..., :-1, :]).abs().mean())
    assert tv(low) < 0.1 * tv(x)
    # a constant image is all low frequency (replicate padding keeps borders exact)
    c = torch.full((1, 3, 9, 9), 0.25)
    hc, lc = wavelet_split(c)
    assert float(hc.abs().max()) < 1e-6 and torch.allclose(lc, c)


def test_wavelet_needs_same_size():
    with pytest.raises(ValueError, match="same size"):
        wavelet(torch.rand(1, 3, 16, 16), torch.rand(1, 3, 8, 8))


def test_none_returns_out_unchanged():
    out = torch.rand(1, 3, 20, 20)
    ref = torch.rand(1, 3, 20, 20)
    assert torch.equal(color_fix(out, ref, "none"), out)


def test_output_clamped():
    g = torch.Generator().manual_seed(5)
    out = torch.rand(1, 3, 32, 32, generator=g)
    ref = torch.rand(1, 3, 32, 32, generator=g) * 3 - 1  # wide range: results spill out of [0, 1]
    for mode in COLOR_FIXES:
        y = color_fix(out * 2 - 0.5, ref, mode)
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0


def test_half_precision_keeps_dtype():
    x = torch.rand(1, 3, 24, 24).half()
    for mode in ("adain", "wavelet"):
        y = color_fix(x, x, mode)
        assert y.dtype == torch.float16
        assert float((y.float() - x.float()).abs().max()) < 2e-3


def test_unknown_mode():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError) as e:
        color_fix(x, x, "histogram")
    msg = str(e.value)
    assert "histogram" in msg and all(m in msg for m in COLOR_FIXES)
