"""SRDiff: parity with the official code (committed fixture), the DDPM maths, checkpoint loading, the method.

`tests/fixtures/srdiff_parity.{safetensors,json}` were produced by running the official LeiaLi/SRDiff
modules (commit in the json's `meta`) built from configs/diffsr_df2k4x.yaml and filled with
`sr_core.nets.init.deterministic_fill_`: state-dict names/shapes, the schedule buffers, RRDB features,
the conditioning map, UNet outputs, one ancestral step and a full 100-step sampling run (8x8 LR -> 32x32)
with the noise of a seeded torch generator.  Ours must agree to 1e-4 (max abs diff).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core import api
from sr_core.diffusion import ddpm
from sr_core.methods.srdiff import SRDiff, load_srdiff_state_dict, write_bundle
from sr_core.nets.init import deterministic_fill_
from sr_core.nets.srdiff_unet import OFFICIAL_SCHEDULE_BUFFERS, SRDiffModel, official_div2k_config
from sr_core.registry import Registry
from sr_core.types import RunContext, Settings, WeightsUnavailable
from sr_core import imaging
from sr_core import weights as W

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    return json.loads((FIX / "srdiff_parity.json").read_text()), load_file(str(FIX / "srdiff_parity.safetensors"))


@pytest.fixture(scope="module")
def official_model():
    m = SRDiffModel.from_config(official_div2k_config()).eval().requires_grad_(False)
    return deterministic_fill_(m)


def _maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------ parity with the official code


def test_state_dict_names_and_shapes_match_official(fixture, official_model):
    meta, _ = fixture
    official = [kv for kv in meta["keys"] if kv[0] not in OFFICIAL_SCHEDULE_BUFFERS]
    assert sorted([k, list(v.shape)] for k, v in official_model.state_dict().items()) == official
    assert {k for k, _ in meta["keys"]} - {k for k, _ in official} == set(OFFICIAL_SCHEDULE_BUFFERS)
    assert sum(p.numel() for p in official_model.parameters()) == meta["meta"]["n_params"]


def test_schedule_matches_official_buffers(fixture):
    _, f = fixture
    sch = ddpm.make_schedule(100, "cosine", 0.008)
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                 "posterior_mean_coef1", "posterior_mean_coef2", "sqrt_recip_alphas_cumprod",
                 "sqrt_recipm1_alphas_cumprod"):
        ours = torch.from_numpy(np.array(getattr(sch, name), dtype=np.float32))
        assert _maxdiff(ours, f["buf_" + name]) <= 1e-6, name


def test_rrdb_features_conditioning_and_unet_match_official(fixture, official_model):
    _, f = fixture
    m = official_model
    with torch.no_grad():
        out, feas = m.rrdb(f["img_lr"], get_fea=True)
        assert _maxdiff(out, f["rrdb_out"]) <= TOL
        for i in (2, 5, 8):
            assert _maxdiff(feas[i], f[f"rrdb_fea{i}"]) <= TOL
        _, cond = m.encode(f["img_lr"])
        assert _maxdiff(cond, f["cond_hr"]) <= TOL
        eps = m.denoise_fn(f["unet_x"], f["unet_t"], [x.expand(2, -1, -1, -1) for x in feas])
        assert _maxdiff(eps, f["unet_eps"]) <= TOL
        eps2 = m.denoise_fn(f["unet_x"], f["unet_t"], cond_hr=cond.expand(2, -1, -1, -1))
        assert torch.equal(eps, eps2)


def test_one_step_and_full_sampling_match_official(fixture, official_model):
    meta, f = fixture
    m = official_model
    sch = ddpm.make_schedule(100)
    with torch.no_grad():
        _, cond = m.encode(f["img_lr"])

        def den(x, t):
            return m.denoise_fn(x, t, cond_hr=cond)

        x_prev, x0 = ddpm.p_sample(den, f["unet_x"][:1], sch, 50, f["p50_noise"])
        assert _maxdiff(x_prev, f["p50_out"]) <= TOL and _maxdiff(x0, f["p50_x0"]) <= TOL
        g = torch.Generator().manual_seed(meta["meta"]["sample_seed"])
        draws = [torch.randn(1, 3, 32, 32, generator=g) for _ in range(100)]
        assert _maxdiff(torch.cat(draws[:3]), f["sample_noise_head"]) == 0.0, "torch's random stream changed"
        r = ddpm.sample(den, (1, 3, 32, 32), sch, noise=draws)
    sr = r.clamp(-1, 1) / 2 + f["img_lr_up"]
    assert _maxdiff(sr, f["sample_sr"]) <= TOL


def test_lr_upsampling_matches_official_loader(fixture):
    """up(LR) = MATLAB bicubic of lr_uint8 / 256 (the official loader's divisor), in [-1, 1]."""
    _, f = fixture
    lr01 = f["lr_u8"].permute(2, 0, 1)[None].float() / 255.0
    gain = official_div2k_config()["diffusion"]["lr_up_gain"]
    up = imaging.imresize(lr01 * gain, 4.0) * 2 - 1
    assert _maxdiff(up, f["img_lr_up"]) <= 1e-5
    assert _maxdiff(lr01 * 2 - 1, f["img_lr"]) <= 1e-6


# ------------------------------------------------------------------ DDPM maths


def test_cosine_schedule_hand_values():
    T, s = 100, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = ddpm.cosine_beta_schedule(T, s)
    assert betas.dtype == np.float64 and betas.shape == (T,)
    assert betas[0] == pytest.approx(1 - f(1) / f(0), rel=1e-12)
    assert betas[41] == pytest.approx(1 - f(42) / f(41), rel=1e-12)
    assert betas[-1] == 0.999  # f(T) = 0: the clip binds at the last step
    sch = ddpm.make_schedule(T)
    ac = np.cumprod(1 - betas)
    assert np.allclose(sch.alphas_cumprod, ac, rtol=0, atol=1e-15)
    assert sch.posterior_variance[0] == 0.0 and sch.posterior_mean_coef2[0] == 0.0
    assert sch.posterior_mean_coef1[0] == pytest.approx(1.0, abs=1e-12)
    k = 30
    assert sch.posterior_variance[k] == pytest.approx(betas[k] * (1 - ac[k - 1]) / (1 - ac[k]), rel=1e-12)
    # x0 from eps inverts q_sample exactly (no clipping)
    x0 = torch.rand(1, 3, 4, 4) * 2 - 1
    eps = torch.randn(1, 3, 4, 4)
    xt = ddpm.q_sample(x0, sch, k, eps)
    assert torch.allclose(ddpm.predict_x0(xt, eps, sch, k, clip=False), x0, atol=1e-5)
    assert torch.allclose(xt, math.sqrt(ac[k]) * x0 + math.sqrt(1 - ac[k]) * eps, atol=1e-6)


def test_respacing():
    base = ddpm.make_schedule(100)
    assert ddpm.respace(base, 100) is base
    assert ddpm.respaced_timesteps(100, 1) == [99]
    ts = ddpm.respaced_timesteps(100, 10)
    assert ts[0] == 0 and ts[-1] == 99 and len(ts) == 10
    for n in (1, 2, 7, 25, 99):
        sch = ddpm.respace(base, n)
        assert sch.N == n and list(sch.timesteps) == ddpm.respaced_timesteps(100, n)
        assert np.allclose(sch.alphas_cumprod, base.alphas_cumprod[sch.timesteps], rtol=1e-8, atol=0)
        assert sch.posterior_variance[0] == 0.0
    sch = ddpm.respace(base, [0, 50, 99])
    assert sch.betas[1] == pytest.approx(1 - base.alphas_cumprod[50] / base.alphas_cumprod[0], rel=1e-12)
    with pytest.raises(ValueError):
        ddpm.respaced_timesteps(100, 0)
    # the network gets the original timesteps
    seen = []
    ddpm.sample(lambda x, t: (seen.append(int(t[0])), torch.zeros_like(x))[1], (1, 3, 2, 2), ddpm.respace(base, 4),
                generator=torch.Generator().manual_seed(0))
    assert seen == [99, 66, 33, 0]


def test_chain_split_equals_full_run_and_noise_forms_agree():
    sch = ddpm.respace(ddpm.make_schedule(100), 6)
    den = lambda x, t: torch.tanh(x) * 0.5 + t.float()[:, None, None, None] * 1e-3  # noqa: E731
    g = torch.Generator().manual_seed(3)
    draws = [torch.randn(1, 3, 5, 5, generator=g) for _ in range(6)]  # x_T, then steps 5..1
    full = ddpm.sample(den, (1, 3, 5, 5), sch, noise=draws)
    keyed = lambda k: draws[sch.N - k]  # noqa: E731
    assert torch.equal(ddpm.sample(den, (1, 3, 5, 5), sch, noise=keyed), full)
    assert torch.equal(ddpm.sample(den, (1, 3, 5, 5), sch, generator=torch.Generator().manual_seed(3)), full)
    mid = ddpm.reverse_chain(den, draws[0], sch, start=5, end=3, noise=keyed)
    assert torch.equal(ddpm.reverse_chain(den, mid, sch, start=2, noise=keyed), full)
    calls = []
    ddpm.reverse_chain(den, draws[0], sch, noise=keyed, callback=lambda d: calls.append((d["k"], d["t"])))
    assert calls == [(5, 99), (4, 79), (3, 59), (2, 40), (1, 20), (0, 0)]


# ------------------------------------------------------------------ checkpoints


def _official_like_checkpoint(model: SRDiffModel, path: Path, betas=None) -> Path:
    """An official-format file: {'global_step', 'optimizer_states', 'state_dict': {'model': ...}} with the
    schedule buffers of GaussianDiffusion, saved with the legacy (non-zip) serialisation."""
    sch = ddpm.make_schedule(100)
    sd = dict(model.state_dict())
    for name in OFFICIAL_SCHEDULE_BUFFERS:
        arr = getattr(sch, name) if hasattr(sch, name) else None
        if arr is None:
            arr = {"log_one_minus_alphas_cumprod": np.log(1 - sch.alphas_cumprod)}[name]
        sd[name] = torch.tensor(np.asarray(arr), dtype=torch.float32)
    if betas is not None:
        sd["betas"] = betas
    opt = torch.optim.Adam([p for p in model.denoise_fn.parameters()][:2], lr=2e-4)
    ck = {"global_step": 400000, "optimizer_states": [opt.state_dict()], "state_dict": {"model": sd}}
    torch.save(ck, path, _use_new_zipfile_serialization=False)
    return path


def test_official_checkpoint_loads_strictly_and_runs(tmp_path, official_model):
    path = _official_like_checkpoint(official_model, tmp_path / "model_ckpt_steps_400000.ckpt")
    m = SRDiff("official", paths={"model": str(path)})
    assert m.availability().ok and m.info.id == "srdiff" and m.info.steps.default == 100
    assert m.info.supports_interpolation and m.info.size_multiple == 2 and m.info.uses_seed
    assert "no licence" in m.info.licence
    loaded = m.model(torch.device("cpu"))
    for k, v in official_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    # a checkpoint of another schedule is refused
    bad = _official_like_checkpoint(official_model, tmp_path / "bad.ckpt", betas=torch.full((100,), 0.02))
    with pytest.raises(WeightsUnavailable, match="schedule"):
        load_srdiff_state_dict(SRDiffModel.from_config(official_div2k_config()), W.load_state_dict(bad))
    # a missing key is an error naming it
    sd = dict(official_model.state_dict())
    sd.pop("denoise_fn.final_conv.1.bias")
    with pytest.raises(WeightsUnavailable, match="final_conv"):
        load_srdiff_state_dict(SRDiffModel.from_config(official_div2k_config()), sd)
    # the method's run is the DDPM on the official pipeline (2 steps, 8x8 LR)
    lr = torch.rand(1, 3, 8, 8)
    st = Settings(steps=2, seed=5)
    ctx = RunContext(settings=st, device=torch.device("cpu"), generator=torch.Generator().manual_seed(5),
                     full_size=(8, 8))
    with torch.inference_mode():
        out = m.run(lr, ctx)
        sch = ddpm.respace(ddpm.make_schedule(100), 2)
        fresh = RunContext(settings=st, device=torch.device("cpu"), generator=torch.Generator().manual_seed(5),
                           full_size=(8, 8))  # the same request's noise, asked for by key
        f_T = fresh.randn(("srdiff", "x_T"), 3, 32, 32, 4)
        f_z = fresh.randn(("srdiff", "z", int(sch.timesteps[1])), 3, 32, 32, 4)
        up = imaging.imresize(lr * (255 / 256), 4.0) * 2 - 1
        _, cond = official_model.encode(lr * 2 - 1)
        sch = ddpm.respace(ddpm.make_schedule(100), 2)
        r = ddpm.sample(lambda x, t: official_model.denoise_fn(x, t, cond_hr=cond), (1, 3, 32, 32), sch,
                        noise=[f_T[:, :, :32, :32], f_z[:, :, :32, :32]])
    assert out.shape == (1, 3, 32, 32)
    assert _maxdiff(out, ((r.clamp(-1, 1) / 2 + up) + 1) / 2) <= 1e-5


def test_official_unavailable_message(monkeypatch, tmp_path):
    monkeypatch.setenv("SR_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SRDIFF_WEIGHTS", raising=False)
    a = SRDiff("official").availability()
    assert not a.ok and "model_ckpt_steps_400000.ckpt" in a.reason and "SRDIFF_WEIGHTS" in a.reason
    assert "releases/tag/v1.0.0" in a.reason
    m = SRDiff("mini", bundle_dir=tmp_path / "nothing")
    assert not m.availability().ok and "srdiff-mini" in m.availability().reason


# ------------------------------------------------------------------ the method on a tiny bundle

TINY = {"unet": {"dim": 8, "out_dim": 3, "dim_mults": [1, 2], "cond_dim": 8, "rrdb_num_block": 2, "sr_scale": 4},
        "rrdb": {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 2, "gc": 4, "scale": 4},
        "diffusion": {"timesteps": 100, "beta_schedule": "cosine", "beta_s": 0.008, "res_rescale": 2.0,
                      "clip_input": True, "default_steps": 4}}


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    model = deterministic_fill_(SRDiffModel.from_config(TINY), scale=0.5)
    return write_bundle(tmp_path_factory.mktemp("srdiff-mini"), model)


def _lr_image(w=12, h=10, seed=0) -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return Image.fromarray(a)


def test_mini_bundle_runs_through_the_facade(tiny_bundle):
    m = SRDiff("mini", bundle_dir=tiny_bundle)
    assert m.availability().ok
    info = m.info
    assert info.id == "srdiff-mini" and info.steps.default == 4 and info.steps.max == 100 and info.size_multiple == 1
    reg = Registry()
    reg.add(m)
    img = _lr_image()
    r1 = api.upscale(img, "srdiff-mini", Settings(seed=3), registry=reg)
    assert r1.image.size == (48, 40) and r1.settings.steps == 4
    r2 = api.upscale(img, "srdiff-mini", Settings(seed=3), registry=reg)
    r3 = api.upscale(img, "srdiff-mini", Settings(seed=4), registry=reg)
    a1, a2, a3 = (np.asarray(r.image, dtype=np.int16) for r in (r1, r2, r3))
    assert np.array_equal(a1, a2) and not np.array_equal(a1, a3)
    one = api.upscale(img, "srdiff-mini", Settings(seed=3, steps=1), registry=reg)
    assert one.image.size == (48, 40)
    tiled = api.upscale(img, "srdiff-mini", Settings(seed=3, tile=8, tile_overlap=4), registry=reg)
    assert tiled.image.size == (48, 40)
    # tiles share the noise fields: the tiled result stays close to the untiled one
    assert np.abs(np.asarray(tiled.image, dtype=np.int16) - a1).mean() < 20


def test_mini_run_equals_ddpm_with_the_context_noise(tiny_bundle):
    m = SRDiff("mini", bundle_dir=tiny_bundle)
    lr = torch.rand(1, 3, 6, 6)
    st = Settings(steps=3, seed=9)

    def ctx():
        return RunContext(settings=st, device=torch.device("cpu"), generator=torch.Generator().manual_seed(9),
                          full_size=(6, 6))

    with torch.inference_mode():
        out = m.run(lr, ctx())
        c = ctx()
        sess = m.prepare(lr, c)
        noise = sess.noise(c)
        x_T = noise(3)
        r = ddpm.reverse_chain(sess.denoise, x_T, sess.schedule, noise=noise)
        assert torch.equal(out, sess.image(r))
        # reverse_from at the top index with x_T is the same run (fields are drawn in order of first use,
        # so x_T's field is drawn first, as a full run does)
        c2 = ctx()
        x_T2 = m.prepare(lr, c2).noise(c2)(3)
        assert torch.equal(x_T2, x_T) and torch.equal(m.reverse_from(x_T2, 2, lr, c2), out)
        # diffusing a residual and reversing from index 0 gives back (almost) that residual's image
        hr = imaging.imresize(lr, 4.0).clamp(0, 1)
        x0 = sess.residual(hr)
        assert _maxdiff(sess.image(x0), hr) <= 1e-6
        assert torch.equal(m.diffuse(x0, 1, x_T, steps=3), sess.diffuse(x0, 1, x_T))


def test_bundled_srdiff_mini_serves_and_interpolates(one_thread):
    """The committed srdiff-mini bundle loads through the default registry (checksum verified), upscales,
    and the studio's lambda = 0 / 1 reproduce the two single-seed runs."""
    from sr_core import studio
    from sr_core.registry import default_registry
    from sr_core.weights import ASSETS_WEIGHTS, sha256_file

    folder = ASSETS_WEIGHTS / "srdiff-mini"
    want = (folder / "SHA256SUMS").read_text().split()[0]
    assert sha256_file(folder / "model.safetensors") == want
    reg = default_registry()
    assert "srdiff-mini" in reg.ids() and reg.get("srdiff-mini").availability().ok
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (12, 10, 3), dtype=np.uint8))
    st = Settings(steps=3, color_fix="none")
    a = api.upscale(img, "srdiff-mini", st.replace(seed=1), registry=reg).image
    b = api.upscale(img, "srdiff-mini", st.replace(seed=2), registry=reg).image
    assert a.size == (40, 48) and not np.array_equal(np.asarray(a), np.asarray(b))
    res = studio.interpolate("srdiff-mini", img, [1, 2], [0.0, 1.0], settings=st, registry=reg)
    assert np.array_equal(np.asarray(res.images[0]), np.asarray(a))
    assert np.array_equal(np.asarray(res.images[-1]), np.asarray(b))


@pytest.mark.parametrize("dtype,min_db", [(torch.bfloat16, 30.0), (torch.float16, 40.0)])
def test_half_precision_path_of_the_bundled_srdiff_mini(monkeypatch, dtype, min_db):
    """What CUDA runs by default (`dtype="auto"`: fp16 autocast for the RRDB encoder and the UNet; "bf16"),
    exercised on the CPU under its autocast of that dtype (CUDA's cannot run here): 4 respaced ancestral steps give
    fp32 in [0, 1] within `min_db` of the fp32 run (measured 36.4 dB bf16, 47.3 dB fp16 at LR 16 px)."""
    from sr_core.api import run_method
    from sr_core.bench import synthetic_image
    from precision_helpers import assert_half_close

    m = SRDiff("mini")
    x = synthetic_image(16, seed=3)
    ref = run_method(m, x, Settings(seed=1, steps=4))
    monkeypatch.setattr(m, "_autocast", lambda device: torch.autocast("cpu", dtype=dtype))
    out = run_method(m, x, Settings(seed=1, steps=4))
    assert_half_close(out, ref, min_db)
