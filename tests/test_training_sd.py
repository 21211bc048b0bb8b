"""mini-sd / osediff-mini training kit: the perceptual network (seeded and, when the wheel is at hand,
the shipped shift-tolerant LPIPS weights), the recipes' configs, and the whole chain on tiny networks:
mini-sd-vae -> mini-sd -> osediff-mini, export to a temporary assets folder, OSEDiff("mini") loads it
and upscales a 16x16 image end to end, and the registry lists osediff-mini (not mini-sd)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch

from sr_core.training import perceptual as P
from sr_core.training.recipes import RECIPES, apply_overrides, get_recipe
from sr_core.training.trainer import train
from training_helpers import tiny_kit, write_images

pytestmark = pytest.mark.usefixtures("one_thread")

WHEEL = Path("/tmp/stl/stlpips_pytorch-0.0.2-py3-none-any.whl")
MEMBER = "stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth"


def _pair(seed=0, sigma=0.1, shape=(2, 3, 32, 40)):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(shape, generator=g)
    return a, (a + sigma * torch.randn(a.shape, generator=g)).clamp(0, 1)


def _check_metric(net):
    a, _ = _pair()
    assert torch.allclose(net(a, a, normalize=True), torch.zeros(2), atol=1e-7)  # identical images -> 0
    d = [float(net(a, _pair(sigma=s)[1], normalize=True).mean()) for s in (0.02, 0.1, 0.3)]
    assert 0 < d[0] < d[1] < d[2], d  # grows with the noise
    x = _pair(sigma=0.2)[1].clone().requires_grad_(True)
    net(x, a, normalize=True).sum().backward()  # gradients reach the input and are finite
    assert torch.isfinite(x.grad).all() and float(x.grad.abs().sum()) > 0


def test_perceptual_seeded_is_a_distance_with_gradients():
    net = P.ShiftTolerantLPIPS.seeded()
    assert not any(p.requires_grad for p in net.parameters())
    _check_metric(net)
    m = P.min_input_size()
    z = torch.zeros(1, 3, m, m)
    assert float(net(z, z)) == 0.0  # all-zero features: no NaN from the normalisation
    with pytest.raises(ValueError, match="at least"):
        net(torch.zeros(1, 3, m - 1, 40), torch.zeros(1, 3, m - 1, 40))


def test_perceptual_weights_lookup_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv(P.LPIPS_ENV, str(tmp_path / "missing.pth"))
    monkeypatch.setattr(P, "LOCAL_LPIPS", tmp_path / "packs" / "alex_shift_tolerant.pth")
    monkeypatch.setattr(P.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="SR_LPIPS_WEIGHTS.*--no-deps stlpips-pytorch"):
        P.load_perceptual("auto")
    # a package folder found by find_spec (never imported) holding the file
    pkg = tmp_path / "stlpips_pytorch"
    (pkg / P.LPIPS_FILE).parent.mkdir(parents=True)
    (pkg / P.LPIPS_FILE).write_bytes(b"x")
    monkeypatch.delenv(P.LPIPS_ENV)
    monkeypatch.setattr(P.importlib.util, "find_spec",
                        lambda name: type("S", (), {"submodule_search_locations": [str(pkg)]})())
    assert P.resolve_lpips_weights() == pkg / P.LPIPS_FILE
    # the repository's packs/ copy (where the README unzips it) comes before the package
    P.LOCAL_LPIPS.parent.mkdir()
    P.LOCAL_LPIPS.write_bytes(b"x")
    assert P.resolve_lpips_weights() == P.LOCAL_LPIPS
    bad = tmp_path / "bad.pth"
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, bad)
    with pytest.raises(ValueError, match="missing net.slice1.0.weight"):
        P.ShiftTolerantLPIPS.from_file(bad)


@pytest.mark.skipif(not WHEEL.is_file(), reason=f"the stlpips-pytorch wheel is not at {WHEEL}")
def test_perceptual_with_the_shipped_weights(tmp_path, monkeypatch):
    with zipfile.ZipFile(WHEEL) as z:
        (tmp_path / "alex.pth").write_bytes(z.read(MEMBER))
    monkeypatch.setenv(P.LPIPS_ENV, str(tmp_path / "alex.pth"))
    net = P.load_perceptual("auto")
    _check_metric(net)
    # values of the package's own network on this pair (checked once against a scratch rebuild of
    # stlpips' shift-tolerant AlexNet + LPIPS formula: max difference 1e-9)
    a, b = _pair()
    assert torch.allclose(net(a, b, normalize=True), torch.tensor([0.0031951286, 0.0041927663]), rtol=1e-4)


def test_configs_context_and_registration():
    from sr_core.nets.sd_configs import mini_sd_config
    from sr_core.training.recipes_sd import SD_RECIPES, fixed_context, sd_config

    cfg, ref = sd_config(), mini_sd_config()
    assert all(cfg[k] == ref[k] for k in ("unet", "vae", "scheduler"))
    assert cfg["scheduler"]["beta_schedule"] == "scaled_linear" and cfg["scheduler"]["num_train_timesteps"] == 1000
    c = fixed_context(77, 128)
    assert c.shape == (1, 77, 128) and torch.equal(c, fixed_context(77, 128))
    assert torch.allclose(c.std(-1), torch.ones(1, 77), atol=1e-5)
    for name, r in SD_RECIPES.items():
        assert RECIPES[name] is r and r.degradation.describe().startswith("bicubic")
    ose = get_recipe("osediff-mini")
    assert ose.lora_rank == 4 and apply_overrides(ose, ["degradation.realesrgan=1"]).degradation.p_realesrgan > 0


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdkit")
    k = tiny_kit(root, 4, 2)
    write_images(root / "eval" / "BSD100" / "HR", 2, size=(48, 40), seed=5)
    return k


def _smoke(name, *sets):
    r = get_recipe(name)
    return apply_overrides(r, list(r.smoke) + list(sets))


def test_three_stages_export_and_osediff_mini(kit, tmp_path, monkeypatch):
    from sr_core import api, registry, weights
    from sr_core.methods.osediff import EMPTY_EMBEDS_FILE, OSEDiff, load_osediff_weights
    from sr_core.training.export import export_run
    from sr_core.training.recipes_sd import load_prior
    from sr_core.types import Settings

    kw = dict(pack_path=kit["pack"], max_steps=2, device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vae_run, sd_run, ose_run = tmp_path / "vae", tmp_path / "sd", tmp_path / "ose"
    train(_smoke("mini-sd-vae"), out=vae_run, **kw)
    train(_smoke("mini-sd", f"vae_from={vae_run}"), out=sd_run, **kw)
    ck = torch.load(sd_run / "ckpt" / "last.pt", weights_only=True)
    vae0 = torch.load(vae_run / "ckpt" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, vae0[k]) for k, v in ck["model"].items() if k.startswith("vae."))  # frozen VAE
    sf = float(ck["ema"]["scaling_factor"])
    assert sf > 0 and sf == float(ck["model"]["scaling_factor"])  # measured from the first batch

    assets = tmp_path / "assets"
    with pytest.raises(ValueError, match="not exported on its own"):
        export_run(vae_run, assets_dir=assets)
    res = export_run(sd_run, assets_dir=assets, eval_root=kit["eval"], eval_sets=("Set5",))
    d = Path(res["dir"])
    assert d.name == "mini-sd" and res["figures"]["vae_recon_bsd100"]["n"] == 2
    vae_cfg = json.loads((d / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] == pytest.approx(sf) and not (d / "osediff.safetensors").exists()
    from safetensors import safe_open

    with safe_open(str(d / EMPTY_EMBEDS_FILE), "pt") as f:
        assert list(f.keys()) == ["prompt_embeds"] and tuple(f.get_tensor("prompt_embeds").shape) == (1, 8, 16)
    with safe_open(str(d / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).dtype == torch.float16
    card = (d / "MODEL_CARD.md").read_text()
    assert "VAE reconstruction" in card and "LDM loss" in card and "mini-sd-vae" in card and "SetA" in card
    prior = load_prior(str(d))  # the exported folder serves as a prior source as well as the run
    assert prior["scaling_factor"] == pytest.approx(sf) and torch.equal(prior["context"], ck["ema"]["context"])

    ose = _smoke("osediff-mini", f"prior_from={sd_run}")
    train(ose, out=ose_run, **kw)
    ck = torch.load(ose_run / "ckpt" / "last.pt", weights_only=True)
    prior_ema = torch.load(sd_run / "ckpt" / "last.pt", weights_only=True)["ema"]
    assert all(torch.equal(v, prior_ema["unet." + k[10:]])
               for k, v in ck["model"].items() if k.startswith("real_unet."))  # the real score is the frozen prior
    moved = [k for k, v in ck["model"].items() if "lora_B" in k and k.startswith(("gen_", "fake_")) and v.abs().sum() > 0]
    assert any(k.startswith("gen_unet.") for k in moved) and any(k.startswith("gen_vae.") for k in moved)
    assert any(k.startswith("fake_unet.") for k in moved)  # the fake score trained too

    # alone (no mini-sd beside it) the folder carries the prior; beside the identical exported mini-sd it
    # names it instead of copying it, and both serve the same images
    alone = Path(export_run(ose_run, assets_dir=tmp_path / "alone", evaluate=False)["dir"])
    for f in ("unet/config.json", "vae/config.json", "scheduler/scheduler_config.json", EMPTY_EMBEDS_FILE,
              "osediff.safetensors", "MODEL_CARD.md", "SHA256SUMS"):
        assert (alone / f).is_file(), f
    assert "prior_folder" not in json.loads((alone / "config.json").read_text())
    res = export_run(ose_run, assets_dir=assets, eval_root=kit["eval"], eval_sets=("Set5",))
    od = Path(res["dir"])
    assert od.name == "osediff-mini" and res["figures"]["Set5"]["n"] == 2
    assert json.loads((od / "config.json").read_text())["prior_folder"] == "../mini-sd"
    assert not (od / "unet").exists() and not (od / EMPTY_EMBEDS_FILE).exists()
    assert (od / "SHA256SUMS").read_text().split() [1:] == ["osediff.safetensors"]
    assert "not copied" in (od / "MODEL_CARD.md").read_text()
    assert load_prior(str(od))["scaling_factor"] == pytest.approx(sf)  # the folder resolves to its prior
    w = load_osediff_weights(od / "osediff.safetensors")
    assert w["rank_unet"] == 4 and any("conv_in" in k for k in w["state_dict_unet"])
    card = (od / "MODEL_CARD.md").read_text()
    assert "Set5" in card and "VSD" in card and "bicubic" in card

    method = OSEDiff("mini", bundle_dir=od)
    assert method.availability().ok
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = api.run_method(method, lr, api.check_settings(method.info, Settings(color_fix="none")))
    assert out.shape == (1, 3, 64, 64) and 0 <= float(out.min()) and float(out.max()) <= 1
    model = ose.build_model()  # the training-side generator from the EMA weights gives the same image
    model.load_state_dict(ck["ema"])
    with torch.no_grad():
        ref = ose.infer(model.eval(), lr)
    assert (out - ref).abs().max() < 2e-2  # UNet base stored in fp16
    out_alone = api.run_method(OSEDiff("mini", bundle_dir=alone), lr,
                               api.check_settings(method.info, Settings(color_fix="none")))
    assert torch.equal(out, out_alone)
    # a prior that differs from the exported mini-sd is copied, never referenced
    from sr_core.training.recipes_sd import prior_matches
    prior = load_prior(str(d))
    assert prior_matches(d, prior["unet"], prior["vae"], prior["context"], prior["scaling_factor"])
    with torch.no_grad():
        next(prior["unet"].parameters()).add_(1e-2)
    assert not prior_matches(d, prior["unet"], prior["vae"], prior["context"], prior["scaling_factor"])

    monkeypatch.setattr(weights, "ASSETS_WEIGHTS", assets)
    ids = registry._build_default().ids()
    assert "osediff-mini" in ids and "mini-sd" not in ids


def test_warm_start_from_runs_and_from_the_exported_folder(kit, tmp_path):
    """init_from: mini-sd-vae continues from a trained VAE and mini-sd from a trained UNet, read from runs or
    from an exported mini-sd folder (what a lent GPU's minutes build on: the bundled CPU-trained prior)."""
    from sr_core.training.export import export_run

    kw = dict(pack_path=kit["pack"], max_steps=2, device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vae_run, sd_run = tmp_path / "vae", tmp_path / "sd"
    train(_smoke("mini-sd-vae"), out=vae_run, **kw)
    train(_smoke("mini-sd", f"vae_from={vae_run}"), out=sd_run, **kw)
    vae_ema = torch.load(vae_run / "ckpt" / "last.pt", weights_only=True)["ema"]
    sd_ema = torch.load(sd_run / "ckpt" / "last.pt", weights_only=True)["ema"]
    folder = Path(export_run(sd_run, assets_dir=tmp_path / "assets", evaluate=False)["dir"])

    for src in (vae_run, sd_run, folder):
        m = _smoke("mini-sd-vae", f"init_from={src}").build_model()
        assert all(p.requires_grad for p in m.vae.parameters())
        for k, v in m.state_dict().items():
            if k.startswith("vae."):
                assert torch.equal(v, vae_ema[k]), (src, k)
    for src, tol in ((sd_run, 0.0), (folder, 1e-3)):  # the folder stores the UNet in fp16
        m = _smoke("mini-sd", f"vae_from={vae_run}", f"init_from={src}").build_model()
        assert all(p.requires_grad for p in m.unet.parameters())
        for k, v in m.state_dict().items():
            if k.startswith("unet."):
                torch.testing.assert_close(v, sd_ema[k].float(), atol=tol, rtol=tol, msg=f"{src} {k}")
        # the latent scale goes on as the source measured it (a re-measured one would shift its latent space)
        assert float(m.scaling_factor) == float(sd_ema["scaling_factor"]) > 0
    sd2 = tmp_path / "sd2"
    train(_smoke("mini-sd", f"vae_from={vae_run}", f"init_from={sd_run}"), out=sd2, **kw)
    assert float(torch.load(sd2 / "ckpt" / "last.pt", weights_only=True)["ema"]["scaling_factor"]) == \
        float(sd_ema["scaling_factor"])
    # a warm-started stage trains and records where it started
    info = train(_smoke("mini-sd-vae", f"init_from={folder}"), out=tmp_path / "vae2", **kw)
    assert info["steps"] == 2 and info["recipe"]["init_from"] == str(folder)

    # continuing the exported prior in place (VAE and UNet from the folder, exported over it): its card keeps the
    # VAE's training and the run the UNet was warm-started from, and the folder's train_info keeps both
    sd3 = tmp_path / "sd3"
    train(_smoke("mini-sd", f"vae_from={folder}", f"init_from={folder}"), out=sd3, **kw)
    for _ in range(2):  # a re-export over it does not take its own first export for its warm start
        export_run(sd3, assets_dir=tmp_path / "assets", evaluate=False)
    card = (folder / "MODEL_CARD.md").read_text()
    assert "VAE stage `mini-sd-vae` (2 steps" in card
    assert "- Built on (warm start): `mini-sd`, 2 steps" in card and "- In all: 4 steps" in card
    kept = json.loads((folder / "train_info.json").read_text())
    assert kept["vae_stage"]["recipe"]["name"] == "mini-sd-vae" and kept["init_stage"]["steps"] == 2
    assert kept["init_stage"]["recipe"]["init_from"] == ""
    # a chain of runs (sd4 <- sd2 <- sd_run) is followed through the runs' own records
    sd4 = tmp_path / "sd4"
    train(_smoke("mini-sd", f"vae_from={vae_run}", f"init_from={sd2}"), out=sd4, **kw)
    d4 = Path(export_run(sd4, assets_dir=tmp_path / "assets4", evaluate=False)["dir"])
    card = (d4 / "MODEL_CARD.md").read_text()
    assert card.count("- Built on (warm start): `mini-sd`, 2 steps") == 2 and "- In all: 6 steps" in card


def test_osediff_warm_start_from_a_bundle_or_a_run(kit, tmp_path):
    """osediff-mini init_from: the generator's LoRA + conv_in from an exported osediff-mini folder (the fake
    score starts afresh) or every trainable tensor from a run; another LoRA rank is refused with the fix."""
    from sr_core.training.export import export_run

    kw = dict(pack_path=kit["pack"], max_steps=2, device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    vae_run, sd_run, ose_run = tmp_path / "vae", tmp_path / "sd", tmp_path / "ose"
    train(_smoke("mini-sd-vae"), out=vae_run, **kw)
    train(_smoke("mini-sd", f"vae_from={vae_run}"), out=sd_run, **kw)
    train(_smoke("osediff-mini", f"prior_from={sd_run}", "lora_rank=2"), out=ose_run, **kw)
    ema = torch.load(ose_run / "ckpt" / "last.pt", weights_only=True)["ema"]
    folder = Path(export_run(ose_run, assets_dir=tmp_path / "assets", evaluate=False)["dir"])

    m = _smoke("osediff-mini", f"prior_from={sd_run}", "lora_rank=2", f"init_from={ose_run}").build_model()
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert any(n.startswith("fake_unet.") for n in trainable)
    for n in trainable:
        assert torch.equal(m.state_dict()[n], ema[n]), n
    m = _smoke("osediff-mini", f"prior_from={sd_run}", "lora_rank=2", f"init_from={folder}").build_model()
    sd = m.state_dict()
    gen = [n for n in trainable if n.startswith(("gen_unet.", "gen_vae."))]
    assert gen and any("conv_in" in n for n in gen)
    for n in gen:  # the bundle stores the generator in fp32
        assert torch.equal(sd[n], ema[n].float()), n
    fake_b = [n for n in trainable if n.startswith("fake_unet.") and "lora_B" in n]
    assert fake_b and all(float(ema[n].abs().sum()) > 0 for n in fake_b)  # trained in the run ...
    assert all(float(sd[n].abs().sum()) == 0 for n in fake_b)  # ... not in a bundle: a fresh fake score
    with pytest.raises(ValueError, match="set lora_rank=2"):
        _smoke("osediff-mini", f"prior_from={sd_run}", "lora_rank=3", f"init_from={folder}").build_model()
    with pytest.raises(ValueError, match="another lora_rank"):
        _smoke("osediff-mini", f"prior_from={sd_run}", "lora_rank=3", f"init_from={ose_run}").build_model()
    info = train(_smoke("osediff-mini", f"prior_from={sd_run}", "lora_rank=2", f"init_from={folder}"),
                 out=tmp_path / "ose2", **kw)
    assert info["steps"] == 2 and info["recipe"]["init_from"] == str(folder)


class _OffsetVAE(torch.nn.Module):
    """encode = identity (the latent is the image), decode = +offset: a round trip with a known error."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset, self.sizes = offset, []

    def encode(self, x):
        assert x.shape[-2] % 8 == 0 and x.shape[-1] % 8 == 0  # padded for an f8 VAE
        self.sizes.append(tuple(x.shape[-2:]))
        mode = x.clone()
        return type("Out", (), {"latent_dist": type("D", (), {"mode": lambda self_: mode})()})()

    def decode(self, z):
        return type("Out", (), {"sample": z + self.offset})()


def test_vae_recon_psnr_whole_images_eval_protocol(tmp_path):
    """The VAE round-trip figure of mini-sd's card is measured like `sr_core eval` (whole images, mod-crop 4,
    border 4), so it can be set beside the published bicubic figure; a known +4 grey-level error gives the
    PSNR computed by hand."""
    import numpy as np
    from PIL import Image

    from sr_core.training.recipes_sd import vae_recon_psnr

    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(37, 45), (64, 50)]):
        Image.fromarray(rng.integers(40, 200, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    vae = _OffsetVAE(4 / 127.5)
    r = vae_recon_psnr(vae, tmp_path)
    assert vae.sizes == [(40, 48), (64, 48)]  # mod-cropped to 36x44 (reflect-padded to 40x48) / 64x48
    dy = 4 * (65.481 + 128.553 + 24.966) / 255  # BT.601 luma of +4 on every channel
    assert r["n"] == 2 and r["border"] == 4 and r["crop"] == 0
    assert r["psnr_y"] == pytest.approx(20 * np.log10(255 / dy), abs=1e-3)
    assert r["psnr_rgb"] == pytest.approx(20 * np.log10(255 / 4), abs=1e-3)
    c = vae_recon_psnr(_OffsetVAE(4 / 127.5), tmp_path, crop=32, limit=1)
    assert c["n"] == 1 and c["crop"] == 32 and c["border"] == 0


def test_lineage_skips_runs_a_rewritten_folder_repeats():
    """A warm start named by an export folder that was exported over later reads that folder's newer chain;
    the card lists each run once (the 2026-12-01 osediff-mini card had two runs twice and a wrong total)."""
    from sr_core.training.recipes_sd import _dedupe_lineage, _lineage_lines

    def run(steps, finished, parent=None):
        d = {"steps": steps, "wall_seconds": 60.0 * steps, "finished": finished, "device": "cpu"}
        return {**d, "init_stage": parent} if parent else d

    old = run(3, "t0")
    b = run(5, "t2", run(4, "t1", old))  # the folder's chain after a later export: b <- a <- old
    chain = run(7, "t4", run(6, "t3", run(5, "t2", run(4, "t1", b))))  # ... a's warm start read the folder
    d = _dedupe_lineage(chain)
    seen, cur = [], d
    while cur:
        seen.append(cur["steps"])
        cur = cur.get("init_stage")
    assert seen == [7, 6, 5, 4, 3]
    assert "In all: 25 steps, 25.0 min" in _lineage_lines(d)
    assert _dedupe_lineage(run(2, "x")) == run(2, "x")
