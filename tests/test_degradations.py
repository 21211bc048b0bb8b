"""Degradations: bicubic equals the benchmark imresize; Real-ESRGAN pipeline is seeded, sized and in range."""

import math

import numpy as np
import pytest
import torch

from sr_core import imaging
from sr_core.training import degradations as D


def _hr(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, size // 8, size // 8, generator=g)
    return torch.nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_bicubic_equals_imaging_imresize():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    ref = imaging.imresize(a, 0.25)
    assert np.array_equal(D.bicubic_lr(a, 4), ref)
    t = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0
    out = D.bicubic_lr(t, 4)
    assert out.shape == (1, 3, 10, 9)
    assert np.array_equal((out[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy(), ref)


def test_realesrgan_deterministic_and_seed_dependent():
    hr = _hr()
    deg = D.RealESRGANDegrader(D.RealESRGANParams(), scale=4)
    a = deg(hr, torch.Generator().manual_seed(3))
    info_a = deg.last_info
    b = deg(hr, torch.Generator().manual_seed(3))
    c = deg(hr, torch.Generator().manual_seed(4))
    assert a.shape == (2, 3, 16, 16)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    # values are uint8 levels
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-4)
    assert len(info_a) == 2 and "stage1" in info_a[0]


def test_realesrgan_parameters_in_published_ranges():
    p = D.RealESRGANParams()
    assert p.blur_sigma == (0.2, 3.0) and p.blur_sigma2 == (0.2, 1.5)
    assert p.noise_range == (1.0, 30.0) and p.noise_range2 == (1.0, 25.0)
    assert p.jpeg_range == (30, 95) and p.final_sinc_prob == 0.8 and p.second_blur_prob == 0.8
    assert math.isclose(sum(p.kernel_prob), 1.0)
    deg = D.RealESRGANDegrader(p, 4)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        _, info = deg.degrade_one(_hr(1, 48)[0], g)
        s1, s2 = info["stage1"], info["stage2"]
        assert 30 <= s1["jpeg"] <= 95 and 30 <= info["final"]["jpeg"] <= 95
        assert p.resize_range[0] <= s1["resize"]["scale"] <= p.resize_range[1]
        assert p.resize_range2[0] <= s2["resize"]["scale"] <= p.resize_range2[1]
        b = s1["blur"]
        assert 7 <= b["size"] <= 21 and b["size"] % 2 == 1
        if b["type"] != "sinc":
            assert 0.2 <= b["sigma_x"] <= 3.0
        n = s1["noise"]
        if n["noise"] == "gaussian":
            assert 1.0 <= n["sigma"] <= 30.0
        else:
            assert 0.05 <= n["scale"] <= 3.0


def test_kernels_normalised():
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        k, info = D.random_kernel(g, 21, D.RealESRGANParams().kernel_list, D.RealESRGANParams().kernel_prob,
                                  (0.2, 3.0), (0.5, 4.0), (1.0, 2.0), 0.3)
        assert k.shape == (21, 21)
        assert abs(float(k.sum()) - 1.0) < 1e-9
    s = D.circular_lowpass_kernel(math.pi / 2, 13)
    assert abs(float(s.sum()) - 1) < 1e-9 and torch.allclose(s, s.flip(0)) and torch.allclose(s, s.T)


def test_mix_on_the_fly_sizes_and_choice():
    hr = _hr(4, 32)
    lr_b = D.bicubic_lr(hr, 4)
    only_bic = D.DegradationMix(1.0, 0.0)
    assert torch.equal(only_bic.apply(hr, lr_b, torch.Generator().manual_seed(0)), lr_b)
    only_real = D.DegradationMix(0.0, 1.0)
    out = only_real.apply(hr, None, torch.Generator().manual_seed(0))
    assert out.shape == (4, 3, 8, 8) and not torch.equal(out, lr_b)
    mixed = D.DegradationMix(1.0, 1.0)
    assert mixed.p_realesrgan == 0.5
    m1 = mixed.apply(hr, lr_b, torch.Generator().manual_seed(5))
    m2 = mixed.apply(hr, lr_b, torch.Generator().manual_seed(5))
    assert torch.equal(m1, m2)
    assert "bicubic" in only_bic.describe() and "Real-ESRGAN" in only_real.describe()
    with pytest.raises(ValueError):
        D.DegradationMix(0.0, 0.0)
