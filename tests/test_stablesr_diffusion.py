"""StableSR schedule, respacing, Gaussian tile window, tile plan and the aggregation sampler.

The fixture tests/fixtures/stablesr_sampler_parity.* was made by the scratch script
/work/scratch/stablesr_sampler_oracle/make_fixture.py, which ran the OFFICIAL code of IceClear/StableSR:
`LatentDiffusionSRTextWT.register_schedule / q_sample_respace / sample_canvas / p_sample_loop_canvas /
p_sample_canvas / p_mean_variance_canvas / _gaussian_weights` (ldm/models/diffusion/ddpm.py, with the
official `DiffusionWrapper`) and `space_timesteps` plus the respacing loop of
scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py, on a 1x4x28x44 latent with a stand-in denoiser
(the fixed functions `_struct_enc`/`_unet` below, name-seeded weights) and recorded noise
(`torch.randn` seeded 1000 + k for schedule index k; the official also draws at k = 0 and masks it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sr_core.diffusion.stablesr import (TileBox, canvas_sample, gaussian_weights, plan_tiles, q_sample, respace,
                                        sd_betas, sd_schedule, space_timesteps, tile_offsets)
from sr_core.nets.init import deterministic_tensor

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-4


@pytest.fixture(scope="module")
def fx():
    from safetensors.torch import load_file

    return load_file(str(FIX / "stablesr_sampler_parity.safetensors")), json.loads(
        (FIX / "stablesr_sampler_parity.json").read_text())


# ---- the stand-in denoiser of the fixture (same maths as the scratch oracle's standin.py)

def _sqrt_one_minus_abar(t: torch.Tensor) -> torch.Tensor:
    ac = np.cumprod(1.0 - np.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=np.float64) ** 2)
    return torch.from_numpy(np.sqrt(1.0 - ac)[t.numpy()]).float().view(-1, 1, 1, 1)


def _struct_enc(z_tile, t):
    w = deterministic_tensor("standin.struct.weight", (4, 4, 3, 3))
    return F.conv2d(z_tile, w, padding=1) * (1.0 + t.float().view(-1, 1, 1, 1) / 1000.0)


def _unet(x, t, context, struct):
    w = deterministic_tensor("standin.unet.weight", (4, 4, 3, 3))
    b = deterministic_tensor("standin.unet.bias", (4,))
    tt = t.float().view(-1, 1, 1, 1)
    return (_sqrt_one_minus_abar(t) * x + 0.1 * torch.tanh(F.conv2d(x, w, b, padding=1) + torch.tanh(struct))
            + 0.05 * torch.sin(tt / 150.0) + 0.02 * context.mean())


def _noise(k, shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(1000 + k))


# ---- schedule

def test_sd_betas_hand_values():
    b = sd_betas()
    assert b.dtype == np.float64 and b.shape == (1000,)
    a, z = math.sqrt(0.00085), math.sqrt(0.012)
    assert b[0] == pytest.approx(0.00085, abs=1e-15) and b[-1] == pytest.approx(0.012, abs=1e-15)
    assert b[1] == pytest.approx((a + (z - a) / 999) ** 2, rel=1e-12)
    assert b[500] == pytest.approx((a + 500 * (z - a) / 999) ** 2, rel=1e-12)
    ac = np.cumprod(1 - b)
    assert ac[999] == pytest.approx(0.0046600, rel=1e-4)  # the well-known SD value: sqrt = 0.068265


def test_sd_betas_match_official(fx):
    t, _ = fx
    np.testing.assert_allclose(sd_betas(), t["sd.betas"].double().numpy(), rtol=1e-14, atol=0)


def test_space_timesteps_hand_and_official(fx):
    _, meta = fx
    assert space_timesteps(1000, 4) == [0, 333, 666, 999]
    assert space_timesteps(1000, 2) == [0, 999]
    assert space_timesteps(1000, 1) == [0]  # official: stride 1, keeps only timestep 0
    assert space_timesteps(1000, 1000) == list(range(1000))
    assert space_timesteps(10, 4) == [0, 3, 6, 9]
    for n, ts in meta["space_timesteps"].items():
        assert space_timesteps(1000, int(n)) == ts, n
    with pytest.raises(ValueError):
        space_timesteps(1000, 1001)


def test_respace_hand_values():
    b = sd_betas()
    ac = np.cumprod(1 - b)
    s = respace(b, 4)
    assert s.timesteps.tolist() == [0, 333, 666, 999] and s.base_T == 1000 and s.N == 4
    assert s.betas[0] == pytest.approx(b[0], rel=1e-14)
    assert s.betas[1] == pytest.approx(1 - ac[333] / ac[0], rel=1e-12)
    assert s.betas[3] == pytest.approx(1 - ac[999] / ac[666], rel=1e-12)
    np.testing.assert_allclose(s.alphas_cumprod, ac[[0, 333, 666, 999]], rtol=1e-12)
    # posterior variance at index k: beta_k (1 - abar_{k-1}) / (1 - abar_k); zero at k = 0
    k = 2
    assert s.posterior_variance[k] == pytest.approx(s.betas[k] * (1 - ac[333]) / (1 - ac[666]), rel=1e-12)
    assert s.posterior_variance[0] == 0.0 and s.posterior_log_variance_clipped[0] == pytest.approx(math.log(1e-20))
    full = respace(b, 1000)
    np.testing.assert_allclose(full.betas, b, rtol=1e-12)
    assert full.timesteps.tolist() == list(range(1000))


def test_respaced_buffers_match_official(fx):
    t, meta = fx
    for run in meta["runs"]:
        s = respace(sd_betas(), run["steps"])
        name = run["name"]
        assert s.timesteps.tolist() == run["ori_timesteps"], name
        # the official computes the respaced schedule in float32: agreement to float32 precision
        np.testing.assert_allclose(s.betas, t[f"{name}.betas"].double().numpy(), rtol=2e-5, atol=1e-7)
        np.testing.assert_allclose(s.alphas_cumprod, t[f"{name}.alphas_cumprod"].double().numpy(), rtol=2e-5)
        np.testing.assert_allclose(s.posterior_log_variance_clipped,
                                   t[f"{name}.posterior_log_variance_clipped"].double().numpy(), rtol=1e-5, atol=1e-4)


def test_q_sample_x_T_matches_official(fx):
    t, meta = fx
    for run in meta["runs"]:
        x_T = q_sample(t["z_lr"], sd_schedule(), 999, t["noise0"])
        assert (x_T - t[f"{run['name']}.x_T"]).abs().max().item() <= 1e-6


# ---- tiles

def test_gaussian_weights_official_and_shape(fx):
    t, _ = fx
    for n in (16, 64):
        w = gaussian_weights(n, n)
        assert w.dtype == torch.float64 and w.shape == (n, n)
        torch.testing.assert_close(w, t[f"gauss_{n}"].double(), rtol=1e-12, atol=0)
    w = gaussian_weights(8, 12)
    assert w.shape == (8, 12)
    assert torch.allclose(w, w.flip(1))  # x is centred at (w-1)/2: symmetric
    assert w.argmax().item() // 12 == 4  # y is centred at h/2 (official)
    peak = 1 / math.sqrt(2 * math.pi * 0.01)
    assert w.max().item() <= peak ** 2


def test_tile_offsets_hand():
    assert tile_offsets(40, 16, 8) == [0, 8, 16, 24]
    assert tile_offsets(44, 16, 8) == [0, 8, 16, 24, 28]  # last tile aligned to the edge
    assert tile_offsets(28, 16, 8) == [0, 8, 12]
    assert tile_offsets(64, 64, 32) == [0]
    assert tile_offsets(96, 64, 32) == [0, 32]
    assert tile_offsets(100, 64, 32) == [0, 32, 36]
    with pytest.raises(ValueError):
        tile_offsets(10, 16, 8)
    with pytest.raises(ValueError):
        tile_offsets(40, 16, 16)


def test_plan_tiles_cover_and_order():
    boxes = plan_tiles(28, 44, 16, 8)
    assert boxes[0] == TileBox(0, 16, 0, 16) and boxes[1] == TileBox(8, 24, 0, 16)  # rows inner
    assert len(boxes) == 3 * 5
    cover = torch.zeros(28, 44)
    for b in boxes:
        assert b.y1 - b.y0 == 16 and b.x1 - b.x0 == 16
        b.crop(cover).add_(1)
    assert cover.min() >= 1
    assert plan_tiles(10, 44, 16, 8)[0] == TileBox(0, 10, 0, 16)  # a short side: one full-length tile


# ---- sampler parity with the official code

@pytest.mark.parametrize("name", ["eps_4", "v_4", "eps_50", "eps_1000"])
def test_canvas_sample_matches_official(fx, name):
    t, meta = fx
    run = next(r for r in meta["runs"] if r["name"] == name)
    z_lr, ctx = t["z_lr"], t["context"]
    seen_t = []

    def model_fn(x_tile, t_model, box):
        seen_t.append(int(t_model[0]))
        return _unet(x_tile, t_model, ctx, _struct_enc(box.crop(z_lr), t_model))

    s = respace(sd_betas(), run["steps"])
    x0 = canvas_sample(model_fn, t[f"{name}.x_T"], s, tile=run["tile"], overlap=run["overlap"], noise_fn=_noise,
                       parameterization=run["parameterization"])
    diff = (x0 - t[f"{name}.x0"]).abs().max().item()
    assert diff <= TOL, f"{name}: max abs diff {diff:.3g}"
    assert seen_t[0] == 999 and seen_t[-1] == 0 and set(seen_t) == set(run["ori_timesteps"])


def test_canvas_sample_pointwise_model_is_tile_invariant():
    """Blending per-pixel outputs with any positive window returns them unchanged: tiled == untiled."""
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(2, 4, 20, 36, generator=g)
    s = respace(sd_betas(), 3)

    def model_fn(x, t, box):
        return torch.tanh(x) * 0.5 + t.view(-1, 1, 1, 1).float() / 2000

    steps = []
    a = canvas_sample(model_fn, x_T, s, tile=12, overlap=5, noise_fn=_noise, callback=steps.append)
    b = canvas_sample(model_fn, x_T, s, tile=64, overlap=32, noise_fn=_noise)  # one tile (clamped to the latent)
    assert (a - b).abs().max().item() <= 1e-5
    assert [d["k"] for d in steps] == [2, 1, 0] and [d["t"] for d in steps] == [999, 500, 0]  # round(499.5) = 500
    # last step adds no noise: x_prev = mean = x0_pred at k = 0 (coef1 = 1, coef2 = 0)
    assert torch.allclose(steps[-1]["x_prev"], steps[-1]["x0_pred"], atol=1e-6)


def test_canvas_sample_errors():
    s = respace(sd_betas(), 2)
    x = torch.zeros(1, 4, 16, 16)
    with pytest.raises(ValueError, match="parameterization"):
        canvas_sample(lambda x, t, b: x, x, s, tile=8, overlap=4, noise_fn=_noise, parameterization="x0")
    with pytest.raises(ValueError, match="model_fn returned"):
        canvas_sample(lambda x, t, b: x[..., :2, :], x, s, tile=8, overlap=4, noise_fn=_noise)
    with pytest.raises(ValueError, match="noise_fn"):
        canvas_sample(lambda x, t, b: x, x, s, tile=8, overlap=4, noise_fn=lambda k, sh: torch.zeros(1))
