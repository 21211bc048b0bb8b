"""ResShift / SinSR mini recipes: the three stages chained on a tiny pack (CPU smoke), SinSR's three
losses (non-zero, differentiable, official call pattern), the teacher map, export -> bundle -> method."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_core.diffusion import resshift as rs
from sr_core.training import data as D
from sr_core.training import recipes_resshift as RR
from sr_core.training.recipes import RECIPES, apply_overrides
from sr_core.training.trainer import train
from training_helpers import tiny_kit


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("rsminis")
    return tiny_kit(root, 3, 1, train_size=(64, 64))


def _smoke(name, extra=()):
    r = RECIPES[name] if name in RECIPES else RR.RESSHIFT_RECIPES[name]
    return apply_overrides(r, list(r.smoke) + list(extra))


def _losses(out: Path) -> list[float]:
    with open(out / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def _tiny_nets(steps=4):
    mc = apply_overrides(RR.RESSHIFT_RECIPES["resshift-mini"], list(RR.SMOKE_MODEL_SETS) + [f"model.steps={steps}"])
    teacher, ae, cfg = RR.load_teacher("", mc.model_config)
    return teacher, ae, cfg


def _three_stages(tmp_path: Path, kw: dict):
    """Smoke runs of the three stages (3, 2 and 1 steps) and the two bundles exported from them (no figures):
    (vq run, resshift run, sinsr run, resshift bundle, sinsr bundle)."""
    vq, rs_run, sin_run = tmp_path / "vq", tmp_path / "rs", tmp_path / "sin"
    train(_smoke("vqf4-mini"), max_steps=3, out=vq, **kw)
    train(_smoke("resshift-mini", (f"ae_from={vq}",)), max_steps=2, out=rs_run, **kw)
    train(_smoke("sinsr-mini", (f"teacher_from={rs_run}",)), max_steps=1, out=sin_run, **kw)
    w = tmp_path / "w"
    rs_bundle = Path(RR.export_resshift_run(rs_run, model_id="resshift-mini", assets_dir=w, evaluate=False)["dir"])
    sin_bundle = Path(RR.export_resshift_run(sin_run, model_id="sinsr-mini", assets_dir=w, evaluate=False)["dir"])
    return vq, rs_run, sin_run, rs_bundle, sin_bundle


def test_registered_and_configs():
    assert {"vqf4-mini", "resshift-mini", "sinsr-mini"} <= set(RR.register({}))
    from sr_core.nets.resshift_unet import ResShiftUNet
    from sr_core.nets.vqgan import VQModel

    r, s = RR.mini_bundle_config({}, "resshift"), RR.mini_bundle_config({}, "sinsr")
    d = r["diffusion"]
    assert (d["steps"], d["kappa"], d["min_noise_level"], d["power"]) == (15, 2.0, 0.04, 0.3)
    ur, us = ResShiftUNet(**r["unet"]), ResShiftUNet(**s["unet"])
    assert {k: v.shape for k, v in ur.state_dict().items()} == {k: v.shape for k, v in us.state_dict().items()}
    ae = VQModel(**r["autoencoder"])
    assert not any("attn" in k for k in ae.state_dict())  # attn_type "none": no mid attention
    assert ae.downsample_factor == 4 and ae.quantize.n_e == 1024
    n_unet, n_ae = sum(p.numel() for p in ur.parameters()), sum(p.numel() for p in ae.parameters())
    assert 8e6 < n_unet < 11e6 and n_ae < 1e6
    assert RR.bundle_config_for(r, "sinsr", "x")["unet"]["direct_lq"] is True
    # the kit's run -> recipe round trip (export.recipe_from_dict) keeps these recipes' own fields
    from sr_core.training.export import recipe_from_dict

    for name in ("vqf4-mini", "resshift-mini", "sinsr-mini"):
        rec = _smoke(name, ("teacher_from=/x/y",) if name == "sinsr-mini" else ())
        back = recipe_from_dict(rec.to_dict())
        assert back.to_dict() == rec.to_dict() and hasattr(back, "export_run")


def test_vqgan_attn_type():
    from sr_core.nets.vqgan import VQModel

    cfg = RR.mini_bundle_config({"ae_attn_type": "vanilla"})
    assert any("mid.attn_1" in k for k in VQModel(**cfg["autoencoder"]).state_dict())
    cfg["autoencoder"]["ddconfig"]["attn_type"] = "linear"
    with pytest.raises(ValueError):
        VQModel(**cfg["autoencoder"])


def test_teacher_map_is_the_deterministic_sampler():
    teacher, ae, cfg = _tiny_nets(steps=5)
    sched = RR._schedule(cfg)
    g = torch.Generator().manual_seed(0)
    y, lq, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(3))
    got = RR.teacher_map(teacher, y, lq, sched, noise)
    want = rs.sample_sinsr_ddim(lambda x, t: teacher(x, t, lq=lq), y, sched, noise=noise)
    assert torch.equal(got, want) and not got.requires_grad


def test_sinsr_losses_follow_the_official_calls_and_are_differentiable():
    teacher, ae, cfg = _tiny_nets(steps=4)
    sched = RR._schedule(cfg)
    student = RR.load_teacher("", apply_overrides(RR.RESSHIFT_RECIPES["resshift-mini"],
                                                  list(RR.SMOKE_MODEL_SETS)).model_config)[0]
    torch.manual_seed(7)
    for p in student.parameters():  # a student that differs from the teacher
        p.data.add_(0.05 * torch.randn_like(p))
    student.requires_grad_(True)
    calls = []
    orig = student.forward

    def spy(x, t, lq=None):
        calls.append((x.detach().clone(), t.clone(), torch.is_grad_enabled()))
        return orig(x, t, lq=lq)

    student.forward = spy
    g = torch.Generator().manual_seed(1)
    z_gt, y, lq, noise = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(4))
    out = RR.sinsr_losses(student, teacher, z_gt, y, lq, sched, noise)
    T, s_T = sched.T, float(np.sqrt(sched.etas[-1] * sched.kappa ** 2 + 1))
    x_T = y + sched.kappa * sched.sqrt_etas[-1] * noise
    z_teacher = RR.teacher_map(teacher, y, lq, sched, noise)
    assert [int(c[1][0]) for c in calls] == [T - 1, 0, 0, T - 1]  # f(x_T), g(F), g(z_gt) no grad, f(g(z_gt))
    assert [c[2] for c in calls] == [True, True, False, True]
    torch.testing.assert_close(calls[0][0], (x_T / s_T).float())
    torch.testing.assert_close(calls[1][0], z_teacher / s_T)  # inverse input scaled as at T-1
    torch.testing.assert_close(calls[2][0], z_gt / s_T)
    student.forward = orig
    params = [p for p in student.parameters()]
    for k in ("distill", "inverse", "gt"):
        assert float(out[k].detach()) > 0
        grads = torch.autograd.grad(out[k], params, retain_graph=True, allow_unused=True)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0, k
    torch.testing.assert_close(out["loss"], out["distill"] + out["inverse"] + out["gt"])
    assert all(p.grad is None for p in teacher.parameters())


def test_pixel_term_is_the_served_output_and_reaches_the_unet():
    """`w_pixel`: the MSE between HR and what the method serves from the UNet's latent (nearest codes, decoder,
    clamp, colour fix), with the gradient passed straight through the quantiser to the UNet; off (0), the
    losses are ResShift's / SinSR's alone.  Stage 3 scores the same f(x_T) the distillation term uses."""
    from sr_core.api import apply_color_fix

    teacher, ae, cfg = _tiny_nets(steps=4)
    unet = RR.load_teacher("", apply_overrides(RR.RESSHIFT_RECIPES["resshift-mini"],
                                               list(RR.SMOKE_MODEL_SETS)).model_config)[0].requires_grad_(True)
    g = torch.Generator().manual_seed(3)
    hr = torch.rand(2, 3, 32, 32, generator=g)
    lr = torch.rand(2, 3, 8, 8, generator=g)
    z = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    pix = RR.pixel_mse(ae, z, hr, lr, 4, "wavelet")
    with torch.no_grad():
        want = torch.mean((apply_color_fix((ae.decode(z).clamp(-1, 1) + 1) / 2, lr, 4, "wavelet") - hr) ** 2)
    torch.testing.assert_close(pix.detach(), want, atol=1e-6, rtol=0)
    (gz,) = torch.autograd.grad(pix, z)
    assert float(gz.abs().sum()) > 0  # straight through the nearest-code lookup

    for w in (0.0, 0.5):
        tr = RR.ResShiftTrainer(unet, ae, cfg, w_pixel=w, color_fix="wavelet")
        torch.manual_seed(0)
        out = tr(hr, lr)
        if not w:
            assert set(out) == {"loss", "mse"} and torch.equal(out["loss"], out["mse"])
            continue
        torch.testing.assert_close(out["loss"], out["mse"] + 0.5 * out["pixel"])
        grads = torch.autograd.grad(out["pixel"], list(unet.parameters()), allow_unused=True)
        assert sum(float(x.abs().sum()) for x in grads if x is not None) > 0
        assert all(p.grad is None for p in ae.parameters())
    with pytest.raises(ValueError, match="pixel_color_fix"):
        RR.ResShiftTrainer(unet, ae, cfg, w_pixel=1.0, color_fix="sharpen")

    sched = RR._schedule(cfg)
    zs = []

    def pixel(zz):
        zs.append(zz)
        return RR.pixel_mse(ae, zz, hr, lr, 4, "wavelet")

    y, lq, noise, z_gt = (torch.randn(2, 3, 8, 8, generator=g) for _ in range(4))
    base = RR.sinsr_losses(unet, teacher, z_gt, y, lq, sched, noise)
    out = RR.sinsr_losses(unet, teacher, z_gt, y, lq, sched, noise, pixel=pixel, w_pixel=2.0)
    assert "pixel" not in base and len(zs) == 1
    t_last = torch.full((2,), sched.T - 1, dtype=torch.long)
    torch.testing.assert_close(zs[0], unet(rs.scale_input(rs.prior_sample(y, sched, noise), sched, t_last), t_last,
                                           lq=lq))
    torch.testing.assert_close(out["loss"], base["loss"] + 2.0 * out["pixel"])
    # a fine-tune on the pixel term alone: the terms of weight 0 are not computed -- no teacher call
    teacher_calls = []
    t_fwd = teacher.forward
    teacher.forward = lambda *a, **k: teacher_calls.append(1) or t_fwd(*a, **k)
    only = RR.sinsr_losses(unet, teacher, z_gt, y, lq, sched, noise, (0.0, 0.0, 0.0), pixel=pixel, w_pixel=1.0)
    assert set(only) == {"loss", "pixel"} and not teacher_calls
    torch.testing.assert_close(only["pixel"], out["pixel"])
    with pytest.raises(ValueError, match="every loss weight is 0"):
        RR.sinsr_losses(unet, teacher, z_gt, y, lq, sched, noise, (0.0, 0.0, 0.0))
    teacher.forward = t_fwd

    m = _smoke("sinsr-mini", ("teacher_from=", "w_pixel=0.25")).build_model()
    assert isinstance(m, RR.SinSRTrainer) and (m.w_pixel, m.color_fix) == (0.25, "wavelet")
    out = m(hr, lr)
    torch.testing.assert_close(out["loss"], out["distill"] + out["inverse"] + out["gt"] + 0.25 * out["pixel"])
    assert _smoke("resshift-mini", ("ae_from=", "w_pixel=1")).build_model().w_pixel == 1.0
    assert "Plus ours (not in the paper): 0.25 x the pixel MSE" in RR._pixel_text(
        _smoke("sinsr-mini", ("w_pixel=0.25",)), "the one-step output")
    assert RR._pixel_text(_smoke("sinsr-mini"), "x") == ""
    # the card says what trained: a pixel-only fine-tune of a student is not called a distillation
    cfg_b = RR.bundle_config_for(RR.mini_bundle_config({}, "sinsr"), "sinsr", "sinsr-mini")
    extra = {"eval_x4": {}, "unet_params": 1, "ae_params": 1, "unet_dtype": "fp16", "size_mb": 1.0, "which": "ema"}

    def card(*sets):
        return RR._card("sinsr-mini", "sinsr", _smoke("sinsr-mini", sets), {}, cfg_b, extra, {}, None)

    only = card("w_distill=0", "w_inverse=0", "w_gt=0", "w_pixel=1", "init_from=/b/sinsr-mini")
    assert "A fine-tune of the SinSR student `/b/sinsr-mini` (distilled" in only and "SinSR distillation" not in only
    assert "Plus ours (not in the paper): 1 x the pixel MSE between HR and the one-step output" in only
    assert "SinSR distillation from the frozen" in card() and "Plus ours" not in card()


def test_last_step_pixel_term_trains_on_the_states_the_sampler_reaches(tiny, tmp_path):
    """`resshift_cli chain-pack` caches, per crop, the state entering the stochastic sampler's last step; the
    UNet's t = 0 output from it is exactly the sampled latent, and `pixel_on=last_step` scores that output as
    the bundle serves it (alone with w_latent=0); the card says so and names the derived pack."""
    from sr_core.methods.resshift import unet_size_multiple

    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vq, rs_run = tmp_path / "vq", tmp_path / "rs"
    train(_smoke("vqf4-mini"), max_steps=2, out=vq, **kw)
    train(_smoke("resshift-mini", (f"ae_from={vq}",)), max_steps=2, out=rs_run, **kw)
    src = D.load_pack(tiny["pack"])
    unet, ae, cfg = RR.load_teacher(str(rs_run))
    assert src.lr.shape[1] % unet_size_multiple(cfg["unet"]) == 0
    info = RR.chain_pack(str(rs_run), tiny["pack"], tmp_path / "chain.npz", crops=3, seed=5, batch=2)
    p = D.load_pack(info["pack"])
    rows = [0, 4, 7]  # spread evenly over the 8 crops
    np.testing.assert_array_equal(p.hr, src.hr[rows])
    x_last = p.extras[RR.CHAIN_EXTRA]
    assert x_last.shape == (3, 12, 12, 3) and p.meta["derived"]["rows"] == 3
    assert "chain-pack" in p.meta["derived"]["command"] and "stochastic sampler" in p.meta["derived"]["what"]
    # the cached state reproduces the sample: the sampler's output is the UNet's x0 prediction at t = 0
    lq = torch.from_numpy(src.lr[rows[:2]]).permute(0, 3, 1, 2).float() / 255 * 2 - 1
    with torch.no_grad():
        want = rs.sample_resshift(lambda x, t: unet(x, t, lq=lq).float(), ae.encode(RR._bicubic_up(lq, 4)).float(),
                                  RR._schedule(cfg), generator=torch.Generator().manual_seed(5 * 1_000_003))
        tr = RR.ResShiftTrainer(unet, ae, cfg, w_pixel=1.0, pixel_on="last_step", w_latent=0.0)
        got = tr.last_step(torch.from_numpy(x_last[:2]).permute(0, 3, 1, 2), lq)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)

    # the term: the served output of that prediction; w_latent=0 computes no latent loss
    hr = torch.from_numpy(src.hr[rows]).permute(0, 3, 1, 2).float() / 255
    lr = torch.from_numpy(src.lr[rows]).permute(0, 3, 1, 2).float() / 255
    xl = torch.from_numpy(x_last).permute(0, 3, 1, 2)
    out = tr(hr, lr, xl)
    assert set(out) == {"loss", "pixel"}
    torch.testing.assert_close(out["pixel"], RR.pixel_mse(ae, tr.last_step(xl, lr * 2 - 1), hr, lr, 4, "wavelet"))
    both = RR.ResShiftTrainer(unet, ae, cfg, w_pixel=2.0, pixel_on="last_step", w_latent=0.5)(hr, lr, xl)
    torch.testing.assert_close(both["loss"], 0.5 * both["mse"] + 2.0 * both["pixel"])
    with pytest.raises(ValueError, match="chain-pack"):
        tr(hr, lr)
    with pytest.raises(ValueError, match="pixel_on"):
        RR.ResShiftTrainer(unet, ae, cfg, w_pixel=1.0, pixel_on="first_step")
    with pytest.raises(ValueError, match="both 0"):
        RR.ResShiftTrainer(unet, ae, cfg, w_pixel=0.0, w_latent=0.0)

    # the recipe reads the cached states from the batch; a short run on the derived pack trains
    sets = (f"ae_from={rs_run}", f"init_from={rs_run}", "w_pixel=1", "pixel_on=last_step", "w_latent=0")
    run = tmp_path / "last"
    train(_smoke("resshift-mini", sets), max_steps=2, out=run, **{**kw, "pack_path": info["pack"]})
    assert len(_losses(run)) == 2
    bundle = Path(RR.export_resshift_run(run, model_id="resshift-mini", assets_dir=tmp_path / "w",
                                         evaluate=False)["dir"])
    card = (bundle / "MODEL_CARD.md").read_text()
    assert f"A fine-tune of the resshift-mini UNet `{rs_run}` with ResShift's latent loss off" in card
    assert "pixel MSE between HR and the UNet's output at the stochastic sampler's last step" in card
    assert "The pack is derived (`resshift_cli chain-pack" in card and "3 crops of 48 px" in card


def test_three_stages_export_and_serve(tiny, tmp_path):
    from sr_core.methods.resshift import ResShift
    from sr_core.methods.sinsr import SinSR
    from sr_core.types import RunContext, Settings

    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    runs = {}
    for name, extra, steps in (("vqf4-mini", (), 30), ("resshift-mini", (), 30), ("sinsr-mini", (), 30)):
        if name == "resshift-mini":
            extra = (f"ae_from={runs['vqf4-mini']}",)
        if name == "sinsr-mini":
            extra = (f"teacher_from={runs['resshift-mini']}",)
        out = tmp_path / name
        info = train(_smoke(name, extra), max_steps=steps, out=out, **kw)
        losses = _losses(out)
        assert info["steps"] == steps and len(losses) == steps
        if name != "sinsr-mini":
            assert np.mean(losses[-6:]) < np.mean(losses[:6]), (name, losses)
        runs[name] = out
    # SinSR's loss is dominated by the inverse term (x_T carries noise of std ~2), so the per-batch log
    # of a 30-step run is noise: check that its optimiser lowers the loss on one fixed batch instead
    recipe = _smoke("sinsr-mini", (f"teacher_from={runs['resshift-mini']}",))
    batch = D.PackSource(D.load_pack(tiny["pack"]), recipe.patch_lr, 4, 0).batch(999, 4)
    m = recipe.build_model().train()
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=recipe.lr)
    torch.manual_seed(0)
    hist = []
    for _ in range(30):
        loss = recipe.loss(m, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        hist.append(float(loss.detach()))
    assert np.mean(hist[-5:]) < np.mean(hist[:5]), hist
    # stage 2 kept stage 1's autoencoder, stage 3 the teacher's
    ema1 = torch.load(runs["vqf4-mini"] / "ckpt" / "last.pt", weights_only=True)["ema"]
    ema2 = torch.load(runs["resshift-mini"] / "ckpt" / "last.pt", weights_only=True)["ema"]
    ema3 = torch.load(runs["sinsr-mini"] / "ckpt" / "last.pt", weights_only=True)["ema"]
    assert torch.equal(ema1["ae.quantize.embedding.weight"], ema2["ae.quantize.embedding.weight"])
    assert all(torch.equal(ema2[f"unet.{k[8:]}"], v) for k, v in ema3.items() if k.startswith("teacher."))

    lr = torch.rand(1, 3, 16, 16)
    ctx = RunContext(settings=Settings(scale=4), device=torch.device("cpu"), generator=torch.Generator())
    for name, cls in (("resshift-mini", ResShift), ("sinsr-mini", SinSR)):
        res = RR.export_resshift_run(runs[name], model_id=name, assets_dir=tmp_path / "weights",
                                     eval_sets=("Set5",), eval_root=tiny["eval"], notes="trained in a test")
        d = Path(res["dir"])
        for f in ("config.json", "model.safetensors", "autoencoder.safetensors", "MODEL_CARD.md", "SHA256SUMS"):
            assert (d / f).exists(), f
        card = (d / "MODEL_CARD.md").read_text()
        assert "Set5" in card and "bicubic" in card and "SetA" in card and "## Notes\ntrained in a test" in card
        assert "GroupNorm groups 8" in card
        assert res["eval_x4"]["Set5"]["n"] == 1
        # the minis' default colour fix: in the config, served, and both figures in the card
        f = res["eval_x4"]["Set5"]
        assert f["color_fix"] == "wavelet" and set(f["variants"]) == {"none"}
        assert f"colour fix wavelet) | {f['psnr_y']:.2f} / {f['ssim_y']:.4f}" in card
        assert f"without a colour fix | {f['variants']['none']['psnr_y']:.2f} / " in card
        method = cls("mini", bundle_dir=d)
        assert method.availability().ok and method.info.id == name
        assert method.info.default_color_fix == "wavelet"
        sr = method.run(lr, ctx)
        assert sr.shape == (1, 3, 64, 64) and 0 <= float(sr.min()) and float(sr.max()) <= 1
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["unet"].get("direct_lq", False) == (name == "sinsr-mini")
    # the bundle holds the EMA student (fp16) and the teacher's autoencoder (fp32)
    from sr_core.weights import load_state_dict

    unet = load_state_dict(tmp_path / "weights" / "sinsr-mini" / "model.safetensors")
    ae = load_state_dict(tmp_path / "weights" / "sinsr-mini" / "autoencoder.safetensors")
    assert unet["out.2.weight"].dtype == torch.float16
    torch.testing.assert_close(unet["out.2.weight"].float(), ema3["unet.out.2.weight"], atol=1e-3, rtol=1e-3)
    assert torch.equal(ae["quantize.embedding.weight"], ema3["ae.quantize.embedding.weight"])
    # init_from: a continued distillation starts its student from a sinsr-mini run or bundle, not the teacher
    for src, tol in ((runs["sinsr-mini"], 0.0), (tmp_path / "weights" / "sinsr-mini", 1e-3)):
        warm = _smoke("sinsr-mini", (f"teacher_from={runs['resshift-mini']}", f"init_from={src}")).build_model()
        assert all(p.requires_grad for p in warm.unet.parameters())
        assert not any(p.requires_grad for p in warm.teacher.parameters())
        student = {k: v for k, v in warm.state_dict().items() if k.startswith("unet.")}
        for k, v in student.items():
            torch.testing.assert_close(v, ema3[k], atol=tol, rtol=tol)
        assert any(not torch.equal(v, ema2[k]) for k, v in student.items())  # not the teacher


def test_warm_start_from_a_run_keeps_its_weights_and_codebook(tiny, tmp_path):
    """init_from: vqf4-mini continues from a trained autoencoder (no data-dependent codebook re-init) and
    resshift-mini from a trained UNet -- what a lent GPU's few minutes build on (the bundles' CPU weights)."""
    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vq = tmp_path / "vq"
    train(_smoke("vqf4-mini"), max_steps=3, out=vq, **kw)
    rs_run = tmp_path / "rs"
    train(_smoke("resshift-mini", (f"ae_from={vq}",)), max_steps=2, out=rs_run, **kw)
    src_vq = torch.load(vq / "ckpt" / "last.pt", weights_only=True)["ema"]
    src_rs = torch.load(rs_run / "ckpt" / "last.pt", weights_only=True)["ema"]

    warm = _smoke("vqf4-mini", (f"init_from={vq}",))
    m = warm.build_model()
    assert all(p.requires_grad for p in m.ae.parameters()) and int(m.steps_seen) == 1
    for k, v in m.state_dict().items():
        if k.startswith("ae."):
            assert torch.equal(v, src_vq[k]), k
    # a step at lr 0 leaves the codebook as it was (a cold start would re-seed it from encoder outputs)
    out = tmp_path / "vq_warm"
    train(_smoke("vqf4-mini", (f"init_from={vq}", "lr=0", "lr_min=0")), max_steps=1, out=out, **kw)
    emb = "ae.quantize.embedding.weight"
    assert torch.equal(torch.load(out / "ckpt" / "last.pt", weights_only=True)["model"][emb], src_vq[emb])

    m = _smoke("resshift-mini", (f"ae_from={vq}", f"init_from={rs_run}")).build_model()
    assert all(p.requires_grad for p in m.unet.parameters())
    for k, v in m.state_dict().items():
        if k.startswith("unet."):
            assert torch.equal(v, src_rs[k]), k
    bad = _smoke("resshift-mini", (f"ae_from={vq}", f"init_from={rs_run}", "model.model_channels=64"))
    with pytest.raises(Exception, match="does not fit"):  # another UNet config: refused, not half-loaded
        bad.build_model()


def test_decoder_finetune_keeps_the_latent_space_and_redecode_swaps_it_into_a_bundle(tiny, tmp_path, monkeypatch):
    """train=decoder: only post_quant_conv + decoder learn (encoder, quant_conv, codebook bit for bit the
    warm start's, no codebook restarts); `redecode_bundle` puts that decoder into an exported bundle,
    refuses one from another latent space, and rewrites the card's figures, sums and train_info."""
    from sr_core.methods.resshift import ResShift
    from sr_core.types import RunContext, Settings
    from sr_core.weights import load_state_dict, sha256_file

    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vq, rs_run = tmp_path / "vq", tmp_path / "rs"
    train(_smoke("vqf4-mini"), max_steps=3, out=vq, **kw)
    train(_smoke("resshift-mini", (f"ae_from={vq}",)), max_steps=2, out=rs_run, **kw)
    res = RR.export_resshift_run(rs_run, model_id="resshift-mini", assets_dir=tmp_path / "w", evaluate=False,
                                 notes="first notes")
    bundle = Path(res["dir"])
    (bundle / "MODEL_CARD.md").write_text((bundle / "MODEL_CARD.md").read_text() + "\n## Targets\nkept as is\n")

    with pytest.raises(ValueError, match="init_from"):
        _smoke("vqf4-mini", ("train=decoder",)).build_model()
    m = _smoke("vqf4-mini", ("train=decoder", f"init_from={bundle}")).build_model()
    trainable = {n.split(".")[1] for n, p in m.named_parameters() if p.requires_grad}
    assert trainable == {"decoder", "post_quant_conv"} and m.decoder_only and m.restart_every == 0
    dec = tmp_path / "dec"
    train(_smoke("vqf4-mini", ("train=decoder", f"init_from={bundle}", "restart_every=1")), max_steps=4,
          out=dec, **kw)
    old = load_state_dict(bundle / "autoencoder.safetensors")
    ema = torch.load(dec / "ckpt" / "last.pt", weights_only=True)["ema"]
    for k, v in old.items():
        same = torch.equal(ema[f"ae.{k}"], v)
        assert same == k.startswith(RR.LATENT_SIDE), k  # the latent side frozen, the decoder side moved

    other = tmp_path / "other"  # a fully trained autoencoder: another latent space
    train(_smoke("vqf4-mini", (f"init_from={bundle}",)), max_steps=2, out=other, **kw)
    before = {f: sha256_file(bundle / f) for f in ("autoencoder.safetensors", "model.safetensors")}
    with pytest.raises(ValueError, match="latent side differs"):
        RR.redecode_bundle(bundle, other, evaluate=False)
    assert sha256_file(bundle / "autoencoder.safetensors") == before["autoencoder.safetensors"]  # untouched

    def broken(*a, **k):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(RR, "evaluate_bundle", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):  # the old decoder is put back
        RR.redecode_bundle(bundle, dec, eval_sets=("Set5",), eval_root=tiny["eval"], device="cpu")
    assert sha256_file(bundle / "autoencoder.safetensors") == before["autoencoder.safetensors"]
    monkeypatch.undo()

    out = RR.redecode_bundle(bundle, dec, eval_sets=("Set5",), eval_root=tiny["eval"], device="cpu")
    new = load_state_dict(bundle / "autoencoder.safetensors")
    for k, v in new.items():
        assert torch.equal(v, ema[f"ae.{k}"].float()), k
    assert sha256_file(bundle / "model.safetensors") == before["model.safetensors"]
    sums = (bundle / "SHA256SUMS").read_text()
    assert sha256_file(bundle / "autoencoder.safetensors") in sums
    info = json.loads((bundle / "train_info.json").read_text())
    d = info["decoder_finetune"]
    assert d["steps"] == 4 and d["train"] == "decoder" and set(d["recon_after"]) == {"Set5"}
    assert info["exported_weights"] == "ema" and out["eval_x4"]["Set5"]["n"] == 1
    card = (bundle / "MODEL_CARD.md").read_text()
    assert "Decoder fine-tune" in card and "## Notes\nfirst notes" in card and card.endswith("## Targets\nkept as is\n")
    assert f"{out['eval_x4']['Set5']['psnr_y']:.2f}" in card
    sr = ResShift("mini", bundle_dir=bundle).run(
        torch.rand(1, 3, 16, 16), RunContext(settings=Settings(scale=4), device=torch.device("cpu"),
                                             generator=torch.Generator()))
    assert sr.shape == (1, 3, 64, 64)


def test_decoder_sr_learns_what_the_method_decodes(tiny, tmp_path):
    """train=decoder_sr: the decoder side learns from the latents the UNet samples (one step for a SinSR
    student, the stochastic sampler for ResShift), with the loss on exactly the colour-fixed output the method
    serves; encoder, codebook and UNet stay bit for bit; `redecode` takes the run and the card says what it
    learnt from; a UNet from another latent space and an unknown sampler are refused."""
    from sr_core.api import apply_color_fix
    from sr_core.weights import load_state_dict

    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vq, rs_run, sin_run, rs_bundle, sin_bundle = _three_stages(tmp_path, kw)
    assert [RR.sr_sampler_of(str(p)) for p in (rs_bundle, sin_bundle, rs_run, sin_run)] == \
        ["stochastic", "one_step", "stochastic", "one_step"]

    m = _smoke("vqf4-mini", ("train=decoder_sr", f"init_from={sin_bundle}")).build_model()
    assert isinstance(m, RR.DecoderSRTrainer) and m.sampler == "one_step" and m.color_fix == "wavelet"
    assert {n.split(".")[1] for n, p in m.named_parameters() if p.requires_grad} == {"decoder", "post_quant_conv"}
    # the loss sees what the method serves: sr_latent (its pipeline) + run_method's colour fix, same noise
    lr = torch.rand(2, 3, 16, 16)
    got = m.sr_output(lr, torch.Generator().manual_seed(7))
    assert got.requires_grad
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the batch: the method's steps by hand (ae.decode quantises), the same noise
        z_y = m.ae.encode(RR._bicubic_up(lr * 2 - 1, 4))
        z = rs.one_step(lambda x, t: m.unet(x, t, lq=lr * 2 - 1), z_y, m.schedule, generator=g)
        want = apply_color_fix((m.ae.decode(z).clamp(-1, 1) + 1) / 2, lr, 4, "wavelet")
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=0)
    with torch.no_grad():  # one image: the trainer's output is the served method's sr_latent + colour fix
        one = m.sr_output(lr[:1], torch.Generator().manual_seed(3))
        served = apply_color_fix(RR.sr_latent(m.unet, m.ae, m.config, lr[:1], "one_step", seed=3), lr[:1], 4, "wavelet")
    torch.testing.assert_close(one, served, atol=1e-5, rtol=0)

    dec = tmp_path / "dec"
    train(_smoke("vqf4-mini", ("train=decoder_sr", f"init_from={rs_bundle}")), max_steps=3, out=dec, **kw)
    ema = torch.load(dec / "ckpt" / "last.pt", weights_only=True)["ema"]
    old = load_state_dict(rs_bundle / "autoencoder.safetensors")
    for k, v in old.items():
        assert torch.equal(ema[f"ae.{k}"], v) == k.startswith(RR.LATENT_SIDE), k
    unet = load_state_dict(rs_bundle / "model.safetensors")
    assert all(torch.equal(ema[f"unet.{k}"], v.float()) for k, v in unet.items())
    out = RR.redecode_bundle(rs_bundle, dec, eval_sets=("Set5",), eval_root=tiny["eval"], device="cpu")
    d = out["decoder_finetune"]
    assert (d["train"], d["sr_sampler"], d["sr_color_fix"], d["sr_from"]) == \
        ("decoder_sr", "stochastic", "wavelet", str(rs_bundle))
    card = (rs_bundle / "MODEL_CARD.md").read_text()
    assert "on the latents the UNet of" in card and "stochastic sampler" in card
    # a bundle as the source (the student's decoder for its teacher): the card names the run that trained it
    out = RR.redecode_bundle(sin_bundle, rs_bundle, evaluate=False)
    d2 = out["decoder_finetune"]
    assert (d2["source"], d2["via"], d2["train"], d2["steps"]) == (str(rs_bundle), str(dec), "decoder_sr", d["steps"])
    assert load_state_dict(sin_bundle / "autoencoder.safetensors").keys() == old.keys()
    assert all(torch.equal(load_state_dict(sin_bundle / "autoencoder.safetensors")[k],
                           load_state_dict(rs_bundle / "autoencoder.safetensors")[k]) for k in old)
    assert f"the decoder of bundle `{rs_bundle}`, trained in run `{dec}`" in (sin_bundle / "MODEL_CARD.md").read_text()
    # a decoder run that continues the bundle's adapted decoder: the entry and card keep the first fine-tune
    assert d["pack"] == tiny["pack"].name and d["pack_crops"] == 8 and "prior" not in d
    dec2 = tmp_path / "dec2"
    train(_smoke("vqf4-mini", ("train=decoder_sr", f"init_from={rs_bundle}")), max_steps=2, out=dec2, **kw)
    for _ in range(2):  # redecode again with the same run: the same lineage, not itself as its own prior
        d3 = RR.redecode_bundle(rs_bundle, dec2, evaluate=False)["decoder_finetune"]
        assert d3["steps"] == 2 and d3["prior"] == {k: v for k, v in d.items() if not k.startswith("recon_")}
    card = (rs_bundle / "MODEL_CARD.md").read_text()
    assert f"it continued the fine-tune of `{dec}` ({d['steps']} steps, batch" in card

    other = tmp_path / "other"  # another latent space: its UNet cannot serve this autoencoder's decoder
    train(_smoke("vqf4-mini"), max_steps=2, out=other, **kw)
    train(_smoke("resshift-mini", (f"ae_from={other}",)), max_steps=1, out=tmp_path / "rs2", **kw)
    with pytest.raises(ValueError, match="another latent space"):
        _smoke("vqf4-mini", ("train=decoder_sr", f"init_from={rs_bundle}", f"sr_from={tmp_path / 'rs2'}")).build_model()
    with pytest.raises(ValueError, match="sr_sampler"):
        _smoke("vqf4-mini", ("train=decoder_sr", f"init_from={rs_bundle}", "sr_sampler=ddim")).build_model()
    with pytest.raises(ValueError, match="init_from"):
        _smoke("vqf4-mini", ("train=decoder_sr",)).build_model()


def test_a_continuation_exported_over_its_bundle_keeps_the_lineage(tiny, tmp_path):
    """A warm-started resshift-mini run exported over the bundle it continued: train_info / the card say what it
    continued (steps, batch, device, and all steps in all), and the adapted decoder that came with the bundle's
    autoencoder stays on the card (it is bit for bit the exported one); a SinSR student distilled from that
    teacher carries the decoder too, and says it started from an earlier student."""
    from sr_core.weights import load_state_dict

    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    *_, rs_bundle, sin_bundle = _three_stages(tmp_path, kw)
    first = json.loads((rs_bundle / "train_info.json").read_text())
    assert "warm_start" not in first and "decoder_finetune" not in first
    dec = tmp_path / "dec"
    train(_smoke("vqf4-mini", ("train=decoder", f"init_from={rs_bundle}")), max_steps=2, out=dec, **kw)
    RR.redecode_bundle(rs_bundle, dec, evaluate=False)
    entry = json.loads((rs_bundle / "train_info.json").read_text())["decoder_finetune"]

    cont = tmp_path / "rs-cont"
    train(_smoke("resshift-mini", (f"ae_from={rs_bundle}", f"init_from={rs_bundle}")), max_steps=2, out=cont, **kw)
    RR.export_resshift_run(cont, model_id="resshift-mini", assets_dir=rs_bundle.parent, evaluate=False)
    info = json.loads((rs_bundle / "train_info.json").read_text())
    ws = info["warm_start"]
    assert ws["from"] == str(rs_bundle) and ws["steps"] == 2 and ws["steps_total"] == 2 and ws["device"]
    assert ws["batch_size"] == first["recipe"]["batch_size"] and info["steps"] == 2
    assert info["decoder_finetune"] == dict(entry, came_with=str(rs_bundle))  # came with the autoencoder
    card = (rs_bundle / "MODEL_CARD.md").read_text()
    assert f"warm-started from `{rs_bundle}` (2 steps, batch" in card and "4 steps in all" in card
    assert "Decoder fine-tune" in card
    assert f"Carried over unchanged with the frozen autoencoder of `{rs_bundle}`" in card

    # a second continuation: the chain is kept and counted; the card's Notes and the sections after its
    # Reproduce line (written by hand: the targets) stay unless new notes are given
    (rs_bundle / "MODEL_CARD.md").write_text(card.replace("Reproduce:", "## Notes\nStage 2 ran on a CPU.\n\nReproduce:")
                                             + "\n## The issue's targets\nmeasured by hand\n")
    cont2 = tmp_path / "rs-cont2"
    train(_smoke("resshift-mini", (f"ae_from={rs_bundle}", f"init_from={rs_bundle}")), max_steps=1, out=cont2, **kw)
    RR.export_resshift_run(cont2, model_id="resshift-mini", assets_dir=rs_bundle.parent, evaluate=False)
    info2 = json.loads((rs_bundle / "train_info.json").read_text())
    assert info2["warm_start"]["steps_total"] == 4 and info2["warm_start"]["prior"]["steps"] == 2
    card2 = (rs_bundle / "MODEL_CARD.md").read_text()
    assert "5 steps in all" in card2 and "## Notes\nStage 2 ran on a CPU." in card2
    assert card2.rstrip().endswith("## The issue's targets\nmeasured by hand") and card2.count("## Notes") == 1
    RR.export_resshift_run(cont2, model_id="resshift-mini", assets_dir=rs_bundle.parent, evaluate=False,
                           notes="new notes")
    card3 = (rs_bundle / "MODEL_CARD.md").read_text()
    assert "new notes" in card3 and "Stage 2 ran on a CPU." not in card3 and "measured by hand" in card3

    sin2 = tmp_path / "sin2"
    train(_smoke("sinsr-mini", (f"teacher_from={rs_bundle}", f"init_from={sin_bundle}")), max_steps=1, out=sin2, **kw)
    RR.export_resshift_run(sin2, model_id="sinsr-mini", assets_dir=sin_bundle.parent, evaluate=False)
    sinfo = json.loads((sin_bundle / "train_info.json").read_text())
    assert sinfo["decoder_finetune"] == dict(entry, came_with=str(rs_bundle)) and sinfo["warm_start"]["steps"] == 1
    assert "student initialised from an earlier student" in (sin_bundle / "MODEL_CARD.md").read_text()
    # an autoencoder other than the source bundle's: no decoder entry is claimed
    other = {k: v + 1 for k, v in load_state_dict(rs_bundle / "autoencoder.safetensors").items()}
    assert RR.decoder_finetune_of(str(rs_bundle), other) is None
    assert RR.decoder_finetune_of(str(cont2), load_state_dict(rs_bundle / "autoencoder.safetensors")) == entry


def test_set_bundle_color_fix_rewrites_config_and_card(tiny, tmp_path, monkeypatch):
    """`set-color-fix`: a bundle's default colour fix changes in config.json (served by the method), the card
    is re-measured with it (notes and later sections kept), SHA256SUMS follow; a failed evaluation puts the
    old config back; an unknown name is refused; the weights are untouched."""
    from sr_core.methods.resshift import ResShift, bundle_color_fix
    from sr_core.weights import sha256_file

    kw = dict(pack_path=tiny["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vq, rs_run = tmp_path / "vq", tmp_path / "rs"
    train(_smoke("vqf4-mini"), max_steps=2, out=vq, **kw)
    train(_smoke("resshift-mini", (f"ae_from={vq}",)), max_steps=2, out=rs_run, **kw)
    bundle = Path(RR.export_resshift_run(rs_run, model_id="resshift-mini", assets_dir=tmp_path / "w",
                                         evaluate=False, notes="first notes")["dir"])
    assert json.loads((bundle / "config.json").read_text())["color_fix"] == "wavelet"
    (bundle / "MODEL_CARD.md").write_text((bundle / "MODEL_CARD.md").read_text() + "\n## Targets\nkept as is\n")
    weights = {f: sha256_file(bundle / f) for f in ("model.safetensors", "autoencoder.safetensors")}
    cfg_before = (bundle / "config.json").read_text()

    def broken(*a, **k):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(RR, "evaluate_bundle", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        RR.set_bundle_color_fix(bundle, "adain", eval_sets=("Set5",), eval_root=tiny["eval"], device="cpu")
    assert (bundle / "config.json").read_text() == cfg_before
    monkeypatch.undo()
    with pytest.raises(ValueError, match="color_fix must be one of"):
        RR.set_bundle_color_fix(bundle, "sepia", evaluate=False)

    monkeypatch.setattr(RR, "RECON_PROBE", ("Set5", 1))  # the card's round trip with / without the fix
    out = RR.set_bundle_color_fix(bundle, "adain", eval_sets=("Set5",), eval_root=tiny["eval"], device="cpu")
    probe = out["recon_color_fix"]
    assert probe["set"] == "Set5" and probe["n"] == 1 and probe["none"] != probe["adain"]
    assert f"round trip on the first 1 Set5 images is {probe['none']:.2f} dB, {probe['adain']:.2f} dB with the fix" \
        in (bundle / "MODEL_CARD.md").read_text()
    assert json.loads((bundle / "config.json").read_text())["color_fix"] == "adain"
    assert ResShift("mini", bundle_dir=bundle).info.default_color_fix == "adain"
    assert json.loads((bundle / "train_info.json").read_text())["color_fix"] == "adain"
    f = out["eval_x4"]["Set5"]
    card = (bundle / "MODEL_CARD.md").read_text()
    assert f["color_fix"] == "adain" and f"colour fix adain) | {f['psnr_y']:.2f}" in card
    assert f"without a colour fix | {f['variants']['none']['psnr_y']:.2f}" in card
    assert "## Notes\nfirst notes" in card and card.endswith("## Targets\nkept as is\n")
    assert sha256_file(bundle / "config.json") in (bundle / "SHA256SUMS").read_text()
    assert {f: sha256_file(bundle / f) for f in weights} == weights
    RR.set_bundle_color_fix(bundle, "none", evaluate=False)
    assert ResShift("mini", bundle_dir=bundle).info.default_color_fix == "none"
    assert "none, as the official code" in (bundle / "MODEL_CARD.md").read_text()
    assert bundle_color_fix({}) == "none"


def test_script_warm_starts_the_student_beside_init_from(tmp_path):
    """scripts/train_resshift_minis.sh with INIT_FROM: sinsr-mini's student continues from the sinsr-mini folder
    beside it (SIN_INIT_FROM), not from the teacher; without one there, the official start (no init_from)."""
    import os
    import subprocess

    fake = tmp_path / "py"
    fake.write_text('#!/bin/sh\necho "PYCALL $*"\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_resshift_minis.sh"

    def sin_call(**env):
        r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "STAGES": "sin", "PY": str(fake), "DEVICE": "cpu",
                                "PACK": str(tmp_path / "none.npz"), **env})
        assert r.returncode == 0, r.stderr
        # a missing pack is built first: every training image's worth of crops, as lossless WebP
        assert f"PYCALL -m sr_core.training pack --out {tmp_path / 'none.npz'} --n-crops 1000 --codec webp" in r.stdout
        return next(line for line in r.stdout.splitlines() if "sinsr-mini --pack" in line)

    bundles = tmp_path / "weights"
    (bundles / "resshift-mini").mkdir(parents=True)
    assert "init_from" not in sin_call(INIT_FROM=str(bundles / "resshift-mini"))  # no student beside it
    (bundles / "sinsr-mini").mkdir()
    (bundles / "sinsr-mini" / "model.safetensors").write_bytes(b"")
    call = sin_call(INIT_FROM=str(bundles / "resshift-mini"))
    assert f"--set init_from={bundles / 'sinsr-mini'} --lr-scale 0.5" in call
    assert "init_from" not in sin_call()  # no warm start asked for


def test_script_stage_pix_fine_tunes_both_minis_on_their_served_pixels_and_exports_over_them(tmp_path):
    """STAGES=pix: resshift-mini's sampler states cached by `chain-pack`, its last step fine-tuned on them
    (pixel term alone), sinsr-mini from its bundle on the pixel term alone (SinSR's weights 0), both PIX_STEPS
    steps, each exported over its bundle; PIX_RS=0 leaves resshift-mini alone."""
    import os
    import subprocess

    fake = tmp_path / "py"
    fake.write_text('#!/bin/sh\necho "PYCALL $*"\n')
    fake.chmod(0o755)
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_resshift_minis.sh"
    a, runs = tmp_path / "w", tmp_path / "runs"
    for m in ("resshift-mini-pix", "sinsr-mini-pix"):  # the fake trainer writes no run; the export's json goes there
        (runs / m).mkdir(parents=True)

    def calls(**env):
        r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "STAGES": "pix", "PY": str(fake), "DEVICE": "cpu", "ASSETS": str(a),
                                "RUNS": str(runs), "PACK": str(tmp_path / "p.npz"), **env})
        assert r.returncode == 0, r.stderr
        return [line for line in r.stdout.splitlines() if line.startswith("PYCALL") and " pack " not in line]

    chain, rs_call, sin_call, rs_exp, sin_exp = calls()
    chain_pack = runs / "chain_resshift-mini.npz"
    assert chain == (f"PYCALL -m sr_core.training.resshift_cli chain-pack {a / 'resshift-mini'} --pack "
                     f"{tmp_path / 'p.npz'} --out {chain_pack} --crops 400 --device cpu")
    assert f"resshift-mini --pack {chain_pack} --out {runs / 'resshift-mini-pix'}" in rs_call
    for k in (f"ae_from={a / 'resshift-mini'}", f"init_from={a / 'resshift-mini'}", "w_pixel=1",
              "pixel_on=last_step", "w_latent=0", "batch_size=8", "lr=2e-5", "ema_decay=0.99"):
        assert f"--set {k}" in rs_call, k
    assert "--max-steps 200" in rs_call
    assert f"sinsr-mini --pack {tmp_path / 'p.npz'} --out {runs / 'sinsr-mini-pix'}" in sin_call
    for k in (f"teacher_from={a / 'resshift-mini'}", f"init_from={a / 'sinsr-mini'}", "w_pixel=1", "w_distill=0",
              "w_inverse=0", "w_gt=0", "batch_size=8", "lr=2e-5", "ema_decay=0.99"):
        assert f"--set {k}" in sin_call, k
    assert "--max-steps 200" in sin_call and "--no-val" in sin_call
    assert rs_exp.startswith(f"PYCALL -m sr_core.training.resshift_cli export {runs / 'resshift-mini-pix'} --assets {a}")
    assert sin_exp.startswith(f"PYCALL -m sr_core.training.resshift_cli export {runs / 'sinsr-mini-pix'} --assets {a}")
    only_sin = calls(PIX_RS="0", PIX_STEPS="50", CHAIN_CROPS="9")
    assert len(only_sin) == 2 and "--max-steps 50" in only_sin[0] and only_sin[1] == sin_exp
    assert "--crops 9" in calls(CHAIN_CROPS="9")[0]
