"""stablesr-mini recipes: stage 1 trains only the time-aware encoder + SFT, stage 2 only the CFW fusion (on
top of stage 1), and the export writes a bundle that `StableSR("mini")` loads and runs through the facade,
with a w-sweep table in its model card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core import api
from sr_core.methods.stablesr import StableSR
from sr_core.registry import Registry
from sr_core.training.recipes import apply_overrides, get_recipe
from sr_core.training.trainer import train
from sr_core.types import Settings

from training_helpers import tiny_kit

TINY_ENCODER = json.dumps({"model_channels": 64, "out_channels": 64, "num_res_blocks": 1,
                           "attention_resolutions": [], "channel_mult": [1, 1, 2, 2], "num_heads": 2})


def _sets(prior: Path) -> list[str]:
    return [f"prior_from={prior}", "log_every=1", "ckpt_every=0", "val_every=0", "warmup_steps=0", "batch_size=2",
            "patch_lr=16", "lr=1e-3", "lr_min=1e-4", "ema_decay=0.5", f"model.encoder={TINY_ENCODER}",
            "model.semb_channels=64", 'model.fusion={"num_fuse_block": 1, "num_grow_ch": 8, "norm_num_groups": 8}',
            "model.default_steps=2", "lambda_lpips=0"]


def test_two_stages_train_their_parts_and_export_a_working_bundle(tmp_path, one_thread):
    from sr_core.nets.sd_configs import tiny_sd_config, write_sd_folder
    from sr_core.training.export import export_run

    from sr_core.training import data as D

    kit = tiny_kit(tmp_path / "kit", 3, 2)
    # 64-px crops: latents of 8 px, a multiple of the 4-level UNet's 2^3 (odd sizes are not served either)
    kit["pack"] = tmp_path / "pack64.npz"
    D.build_pack(kit["pack"], D.default_folders(tmp_path / "kit" / "train"), n_crops=4, hr_size=64, scale=4, seed=0)
    prior = write_sd_folder(tmp_path / "weights" / "mini-sd", tiny_sd_config(), text=False,
                            empty_prompt_embeds=True, scale=0.5)
    s1 = apply_overrides(get_recipe("stablesr-mini"), _sets(prior))
    run1 = tmp_path / "run1"
    torch.manual_seed(s1.seed)
    before = s1.build_model().state_dict()
    train(s1, pack_path=kit["pack"], out=run1, max_steps=3, device="cpu", mixed_precision="no",
          val_dir=kit["eval"] / "Set5" / "HR", log=lambda s: None)
    after = torch.load(run1 / "ckpt" / "last.pt", weights_only=True)["model"]
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("net.denoiser.structcond.", "net.denoiser.sft.")) for k in changed)

    s2 = apply_overrides(get_recipe("stablesr-cfw-mini"), _sets(prior) + [f"stage1_from={run1}"])
    run2 = tmp_path / "run2"
    m2 = s2.build_model()  # stage 2 starts from stage 1's (EMA) encoder + SFT
    ema1 = torch.load(run1 / "ckpt" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(m2.state_dict()[k], v) for k, v in ema1.items() if k.startswith("net.denoiser.sft."))
    before2 = m2.state_dict()
    train(s2, pack_path=kit["pack"], out=run2, max_steps=3, device="cpu", mixed_precision="no",
          val_dir=kit["eval"] / "Set5" / "HR", log=lambda s: None)
    after2 = torch.load(run2 / "ckpt" / "last.pt", weights_only=True)["model"]
    changed2 = {k for k in before2 if not torch.equal(before2[k], after2[k])}
    assert changed2 and all(k.startswith("net.cfw.fusion.") for k in changed2)

    # stage 1 goes on after stage 2 started: the export takes the encoder + SFT from the stage-1 run as it
    # is then (stage 2 never trains them), so the bundle and its card's stage-1 line agree
    train(s1, pack_path=kit["pack"], out=run1, max_steps=5, resume=True, device="cpu", mixed_precision="no",
          val_dir=None, log=lambda s: None)
    ema1 = torch.load(run1 / "ckpt" / "last.pt", weights_only=True)["ema"]
    from training_helpers import write_images

    write_images(kit["eval"] / "BSD100" / "HR", 2, size=(192, 200), seed=4)  # for the card's eps-MSE table
    res = export_run(run2, model_id="stablesr-mini", assets_dir=tmp_path / "weights", dtype="fp32",
                     eval_sets=("Set5",), eval_root=kit["eval"])
    d = Path(res["dir"])
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["prior"] == "../mini-sd" and set(cfg["eval_x4_w_sweep"]["Set5"]) == {"0", "0.25", "0.5", "0.75", "1", "bicubic", "settings"}
    card = (d / "MODEL_CARD.md").read_text()
    assert "w=0.25" in card and "monotonic" in card and res["sha256"] in card and "bicubic" in card
    eps = cfg["eps_mse_heldout"]  # the stage-1 denoiser against its prior, from the written files
    assert eps["n"] == 2 and list(eps["model"]) == list(eps["prior"]) == ["999", "900", "700", "300", "20"]
    assert all(np.isfinite(v) and v > 0 for d_ in (eps["model"], eps["prior"]) for v in d_.values())
    assert "held-out eps-MSE" in card and "the prior alone" in card
    # the sweep is the `sr_core eval` path on the written bundle: w changes only the decode, so the figures
    # differ across w; bicubic is measured on the same images
    sw = cfg["eval_x4_w_sweep"]["Set5"]
    assert sw["bicubic"]["n"] == sw["1"]["n"] == 2 and sw["settings"]["color_fix"] == "adain"  # eval's default
    assert len({round(sw[k]["psnr_y"], 6) for k in ("0", "0.5", "1")}) == 3
    assert set(res["checks"]["Set5"]) == {"gain_db", "gain_ok", "monotonic", "above_bicubic"}
    assert cfg["runs"]["sft"]["steps"] == 5 and cfg["runs"]["cfw"]["steps"] == 3

    method = StableSR("mini", bundle_dir=d)
    assert method.availability().ok and method.info.steps.default == 2
    reg = Registry()
    reg.add(method)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    out = api.upscale(img, "stablesr-mini", Settings(scale=4, fidelity=1.0, color_fix="none"), registry=reg)
    assert out.image.size == (128, 128)
    # the served trainable parts are the exported EMA ones
    ema2 = torch.load(run2 / "ckpt" / "last.pt", weights_only=True)["ema"]
    served = method.model("cpu")
    k = next(k for k in ema2 if k.startswith("net.cfw.fusion.") and k.endswith("weight"))
    assert torch.allclose(served.cfw.state_dict()[k[len("net.cfw."):]], ema2[k].float())
    sft = [k for k in ema1 if k.startswith(("net.denoiser.sft.", "net.denoiser.structcond."))]
    assert sft and any(not torch.equal(ema1[k], ema2[k]) for k in sft)  # stage 1 moved on after stage 2's start
    assert all(torch.equal(served.denoiser.state_dict()[k[len("net.denoiser."):]], ema1[k].float()) for k in sft)

    # warm starts (init_from) from the bundle or a run: the trained parts as they were; stage1_from still wins
    import pytest

    fusion = [k for k in ema2 if k.startswith("net.cfw.fusion.")]
    for stage, src in (("stablesr-mini", d), ("stablesr-cfw-mini", d), ("stablesr-cfw-mini", run2)):
        m = apply_overrides(get_recipe(stage), _sets(prior) + [f"init_from={src}", "stage1_from="]).build_model()
        m = m.state_dict()
        ref = ema2 if src == run2 else ema1  # the run holds the encoder + SFT stage 2 started from
        assert all(torch.allclose(m[k], ref[k].float()) for k in sft), (stage, src)
        if stage == "stablesr-cfw-mini":
            assert all(torch.allclose(m[k], ema2[k].float()) for k in fusion), src
    m = apply_overrides(get_recipe("stablesr-cfw-mini"), _sets(prior) + [f"init_from={d}", f"stage1_from={run2}"])
    sd2 = m.build_model().state_dict()
    assert all(torch.equal(sd2[k], ema2[k]) for k in sft)  # run2's own (stage-1 at its start) encoder + SFT
    other = _sets(prior) + [f"init_from={d}", "stage1_from=", 'model.fusion={"num_fuse_block": 1, "num_grow_ch": 16, "norm_num_groups": 8}']
    with pytest.raises(ValueError, match="does not fit"):
        apply_overrides(get_recipe("stablesr-cfw-mini"), other).build_model()


def test_zero_init_sft_normalises_instead_of_passing_through(tmp_path, one_thread):
    """sft_init='zero': gamma = beta = 0, so every SFT layer outputs the GroupNorm of the resnet branch (the
    official SPADE), not the branch itself: the untrained denoiser is not the frozen prior."""
    from sr_core.nets.sd_configs import tiny_sd_config, write_sd_folder
    from sr_core.nets.stablesr_unet import SFTLayer

    prior = write_sd_folder(tmp_path / "mini-sd", tiny_sd_config(), text=False, empty_prompt_embeds=True)
    trainer = apply_overrides(get_recipe("stablesr-mini"), _sets(prior)).build_model()
    den = trainer.net.denoiser
    layers = [m for m in den.sft.modules() if isinstance(m, SFTLayer)]
    assert len(layers) == len(den.sft_paths()) > 0
    assert all(not m.mlp_gamma.weight.any() and not m.mlp_beta.bias.any() for m in layers)
    torch.manual_seed(0)
    h, cond = torch.randn(2, layers[0].mlp_gamma.out_channels, 8, 8) * 3 + 1, torch.randn(2, 64, 8, 8)
    out = layers[0](h, {"8": cond})
    assert torch.allclose(out, layers[0].param_free_norm(h), atol=1e-6) and not torch.allclose(out, h, atol=0.1)
    x, z_lr = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    ctx = trainer.net.context[:1]
    with torch.no_grad():
        steered = den(x, 500, ctx, den.encode_struct(z_lr, 500))
        plain = den.unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample
    assert (steered - plain).abs().max() > 1e-3
    # the official init (PyTorch's default conv init) keeps random gamma/beta
    default = apply_overrides(get_recipe("stablesr-mini"), _sets(prior) + ["sft_init=default"]).build_model()
    assert any(m.mlp_gamma.weight.any() for m in default.net.denoiser.sft.modules() if isinstance(m, SFTLayer))


def test_calibrated_sft_init_starts_near_the_prior(tmp_path, one_thread):
    """sft_init='calibrated' (the default): the trainer fits each SFT GroupNorm's affine on the prior's own
    activations for the run's first crops, so the untrained steered model is far closer to the frozen prior
    than with 'zero' (whose layers output GroupNorm(h)); a warm start or --resume skips it.  Measured on the
    bundled mini-sd prior; the tiny random prior checks the fit itself (each layer's least squares)."""
    from sr_core.nets.sd_configs import tiny_sd_config, write_sd_folder
    from sr_core.nets.stablesr_unet import SFTLayer
    from sr_core.training import data as D
    from sr_core.training.recipes_stablesr import calibrate_sft
    from sr_core.weights import ASSETS_WEIGHTS

    kit = tiny_kit(tmp_path / "kit", 3, 2)
    pack64 = tmp_path / "pack64.npz"
    D.build_pack(pack64, D.default_folders(tmp_path / "kit" / "train"), n_crops=4, hr_size=64, scale=4, seed=0)
    src = D.PackSource(D.load_pack(pack64), 16, 4, 0)
    batch, held = src.batch(0, 16), src.batch(1, 4)

    def gap(trainer) -> float:  # steered vs plain prior on held-out crops at four noise levels
        den, ctx = trainer.net.denoiser, trainer.net.context[:1].expand(4, -1, -1)
        z0, z_lr, _ = trainer._latents(held["hr"], held["lr"])
        t = torch.tensor([999, 700, 300, 20])
        a = trainer.abar[t].view(-1, 1, 1, 1)
        x = a.sqrt() * z0 + (1 - a).sqrt() * torch.randn(z0.shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            return float((den(x, t, ctx, den.encode_struct(z_lr, t)) -
                          den.unet(x, t, encoder_hidden_states=ctx).sample).pow(2).mean())

    real = ASSETS_WEIGHTS / "mini-sd"
    sets = ["ckpt_every=0", "val_every=0", "batch_size=2", "patch_lr=16"]
    if (real / "config.json").is_file():
        rec = apply_overrides(get_recipe("stablesr-mini"), [f"prior_from={real}", *sets])
        zero = apply_overrides(rec, ["sft_init=zero"]).build_model()
        cal = rec.build_model()
        assert "GroupNorm affine" in rec.init_from_data(cal, {"hr": batch["hr"], "lr": batch["lr"]})
        assert gap(cal) < 0.1 * gap(zero), (gap(cal), gap(zero))

    prior = write_sd_folder(tmp_path / "mini-sd", tiny_sd_config(), text=False, empty_prompt_embeds=True)
    rec = apply_overrides(get_recipe("stablesr-mini"), _sets(prior))
    assert get_recipe("stablesr-mini").sft_init == "calibrated"
    cal = rec.build_model()
    layers = [m for m in cal.net.denoiser.sft.modules() if isinstance(m, SFTLayer)]
    seen: dict = {}
    def keep(m, args) -> None:
        seen.setdefault(id(m), args[0].detach().clone())

    hooks = [m.register_forward_pre_hook(keep) for m in layers]
    calibrate_sft(cal, batch["hr"], batch["lr"], seed=0)
    for hk in hooks:
        hk.remove()
    assert len(seen) == len(layers) > 0
    for m in layers:  # the fitted (w, b) beat (1, 0) and small moves of themselves on the branch it saw
        h = seen[id(m)]
        gn = m.param_free_norm
        n = torch.nn.functional.group_norm(h, gn.num_groups, None, None, gn.eps)
        err = lambda w, b: float((h - n * w.view(1, -1, 1, 1) - b.view(1, -1, 1, 1)).pow(2).mean())
        best = err(gn.weight, gn.bias)
        assert best <= err(torch.ones_like(gn.weight), torch.zeros_like(gn.bias)) + 1e-9
        assert best <= err(gn.weight * 1.05, gn.bias) + 1e-9 and best <= err(gn.weight, gn.bias + 0.02) + 1e-9
        assert not m.mlp_gamma.weight.any() and not m.mlp_beta.weight.any()
    with pytest.raises(ValueError, match="gamma = beta = 0"):
        calibrate_sft(apply_overrides(rec, ["sft_init=default"]).build_model(), batch["hr"], batch["lr"])
    # the trainer calls it on a fresh run (logged), not when resuming or warm-starting
    lines = []
    train(rec, pack_path=pack64, out=tmp_path / "run", max_steps=1, device="cpu", mixed_precision="no",
          val_dir=None, log=lines.append)
    assert any("sft_init calibrated" in ln for ln in lines)
    lines.clear()
    train(apply_overrides(rec, ["ckpt_every=1"]), pack_path=pack64, out=tmp_path / "run", max_steps=2, resume=True,
          device="cpu", mixed_precision="no", val_dir=None, log=lines.append)
    assert not any("sft_init calibrated" in ln for ln in lines) and any("resumed" in ln for ln in lines)
    warm = apply_overrides(rec, [f"init_from={tmp_path / 'run'}"])
    assert warm.init_from_data(warm.build_model(), {"hr": batch["hr"], "lr": batch["lr"]}) == ""
