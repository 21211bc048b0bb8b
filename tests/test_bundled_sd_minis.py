"""The committed mini-sd / osediff-mini / stablesr-mini bundles: files match their SHA256SUMS, the two
methods load through the default registry on the shared mini-sd prior and upscale an image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sr_core import api
from sr_core.registry import default_registry
from sr_core.types import Settings
from sr_core.weights import ASSETS_WEIGHTS, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _check_sums(folder):
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    assert lines
    for line in lines:
        h, name = line.split()
        assert sha256_file(folder / name) == h, (folder.name, name)


def test_bundles_are_intact_and_share_the_prior():
    for mid in ("mini-sd", "osediff-mini", "stablesr-mini"):
        _check_sums(ASSETS_WEIGHTS / mid)
        assert (ASSETS_WEIGHTS / mid / "MODEL_CARD.md").is_file()
    unet = json.loads((ASSETS_WEIGHTS / "mini-sd" / "unet" / "config.json").read_text())
    vae = json.loads((ASSETS_WEIGHTS / "mini-sd" / "vae" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == vae["latent_channels"] == 16
    assert vae["scaling_factor"] > 0
    # both methods name the prior folder instead of copying it
    assert json.loads((ASSETS_WEIGHTS / "osediff-mini" / "config.json").read_text())["prior_folder"] == "../mini-sd"
    assert not (ASSETS_WEIGHTS / "osediff-mini" / "unet").exists()
    assert json.loads((ASSETS_WEIGHTS / "stablesr-mini" / "config.json").read_text())["prior"] == "../mini-sd"
    assert not (ASSETS_WEIGHTS / "stablesr-mini" / "unet").exists()


def test_stablesr_mini_opens_at_its_measured_default_w():
    """The export writes default_fidelity from the bundle's sweep; the method, the CLI and the app start there."""
    import argparse

    from sr_core.__main__ import _settings_from
    from sr_core.training.recipes_stablesr import default_fidelity

    cfg = json.loads((ASSETS_WEIGHTS / "stablesr-mini" / "config.json").read_text())
    assert cfg["default_fidelity"] == default_fidelity(cfg["eval_x4_w_sweep"])
    info = default_registry().get("stablesr-mini").info
    assert info.default_fidelity == cfg["default_fidelity"]
    assert ("Opens at w = 1" in info.description) == (info.default_fidelity == 1.0)
    args = argparse.Namespace(preset=None, scale=None, steps=None, seed=None, tile=None, tile_overlap=None,
                              fidelity=None, color_fix=None, device=None)
    assert _settings_from(args, info).fidelity == info.default_fidelity
    assert _settings_from(argparse.Namespace(**{**vars(args), "fidelity": 0.25}), info).fidelity == 0.25
    row = lambda w0, bic: {"0": {"psnr_y": w0}, "bicubic": {"psnr_y": bic}}  # noqa: E731
    assert default_fidelity({"BSD100": row(14.5, 25.96)}) == 1.0
    assert default_fidelity({"BSD100": row(25.2, 25.96), "Set5": row(10.0, 28.0)}) == 0.5  # BSD100 decides
    assert default_fidelity({"BSD100": row(23.5, 25.96)}) == 0.5  # a realism end under bicubic is expected
    assert default_fidelity({"BSD100": row(22.9, 25.96)}) == 1.0  # > 3 dB under: far from the image
    assert default_fidelity({}) == 0.5
    from sr_core.methods.stablesr import StableSR

    assert StableSR("official").info.default_fidelity == 0.5  # the official scripts' --dec_w 0.5


def test_osediff_and_stablesr_minis_serve():
    reg = default_registry()
    assert "mini-sd" not in reg.ids()  # a prior, not a method
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 18, 3), dtype=np.uint8))
    assert reg.get("osediff-mini").availability().ok
    a = api.upscale(img, "osediff-mini", Settings(), registry=reg).image
    b = api.upscale(img, "osediff-mini", Settings(), registry=reg).image
    assert a.size == (72, 80) and np.array_equal(np.asarray(a), np.asarray(b))  # one step, deterministic
    assert reg.get("stablesr-mini").availability().ok
    outs = {w: np.asarray(api.upscale(img, "stablesr-mini", Settings(seed=3, steps=4, fidelity=w),
                                      registry=reg).image).astype(np.float32) for w in (0.0, 1.0)}
    assert outs[0.0].shape == (80, 72, 3)
    assert np.abs(outs[0.0] - outs[1.0]).mean() > 0.5  # w changes the image
    again = np.asarray(api.upscale(img, "stablesr-mini", Settings(seed=3, steps=4, fidelity=1.0), registry=reg).image)
    assert np.array_equal(again.astype(np.float32), outs[1.0])  # seeded


@pytest.mark.filterwarnings("ignore:There are modules")
def test_osediff_half_precision_matches_fp32():
    """The half-precision path (what CUDA runs by default: fp16, or bf16) casts every input and buffer
    consistently and stays close to fp32 -- checked on the CPU, whose kernels accept both dtypes, on
    the bundled mini through the tiled path (latent and VAE tiles)."""
    import torch

    from sr_core.methods.osediff import OSEDiffModel, load_osediff_weights, mini_prior_folder, pil_bicubic

    folder = ASSETS_WEIGHTS / "osediff-mini"
    ckpt = load_osediff_weights(folder / "osediff.safetensors")
    rng = np.random.default_rng(1)
    lr = torch.from_numpy(rng.random((1, 3, 6, 6), dtype=np.float32)).repeat_interleave(4, -1).repeat_interleave(4, -2)
    x = pil_bicubic(lr, 4) * 2 - 1  # a smooth 96-px image
    outs = {}
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        m = OSEDiffModel(mini_prior_folder(folder), ckpt, device=torch.device("cpu"), dtype=dt, vae_encoder_tile=64,
                         vae_decoder_tile=8)
        assert next(m.unet.parameters()).dtype == next(m.vae.parameters()).dtype == dt
        with torch.inference_mode():
            out = m(x, "", tile=8, overlap=4)
        assert out.shape == (1, 3, 96, 96) and torch.isfinite(out).all()
        outs[dt] = out.float().clamp(-1, 1)
    for dt, floor in ((torch.bfloat16, 30.0), (torch.float16, 40.0)):
        mse = ((outs[dt] - outs[torch.float32]) / 2).pow(2).mean()
        assert 10 * torch.log10(1 / mse) > floor, (dt, 10 * torch.log10(1 / mse))


@pytest.mark.parametrize("dtype,min_db", [("bf16", 40.0), ("fp16", 50.0)])
def test_stablesr_half_precision_matches_fp32(monkeypatch, dtype, min_db):
    """StableSR's half-precision path (what CUDA runs: weights cast by `compute_dtype`, fp16 by default) on the bundled
    stablesr-mini, on the CPU (whose kernels take both dtypes; `compute_dtype` is made to give the half type here, as
    it does on CUDA): 4 aggregated steps + the CFW decode at w = 0.5 give fp32 in [0, 1] within `min_db` of the fp32
    run (measured 49.8 dB bf16, 70.1 dB fp16 at LR 16 px)."""
    import torch

    import sr_core.methods.stablesr as S
    from sr_core.api import run_method
    from sr_core.bench import synthetic_image
    from sr_core.types import Settings
    from precision_helpers import assert_half_close

    x = synthetic_image(16, seed=3)
    st = Settings(seed=1, steps=4, fidelity=0.5)
    ref = run_method(S.StableSR("mini"), x, st)
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    monkeypatch.setattr(S, "compute_dtype", lambda device, choice: half)
    m = S.StableSR("mini", dtype=dtype)
    out = run_method(m, x, st)
    assert all(p.dtype == half for p in next(iter(m._models.values())).parameters())
    assert_half_close(out, ref, min_db)
