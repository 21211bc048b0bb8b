"""ResShift / SinSR methods end to end on tiny, deterministically filled bundles.

`fixtures/resshift_pipeline_parity.pt` holds the official pipelines' outputs (official UNetModelSwin,
VQModelTorch and GaussianDiffusion.p_sample_loop / ddim_sample_loop / one_step, filled by
`deterministic_fill_` at the tiny config below, noise drawn from a seeded CPU generator in our
order); the script that made it lives outside the project.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core import api
from sr_core.methods.resshift import ResShift, unet_size_multiple, write_bundle
from sr_core.methods.sinsr import SinSR
from sr_core.nets.init import deterministic_fill_
from sr_core.nets.resshift_configs import get_config, mini_config
from sr_core.nets.resshift_unet import ResShiftUNet
from sr_core.nets.vqgan import VQModel
from sr_core.registry import Registry
from sr_core.types import RunContext, Settings, SRMethod, WeightsUnavailable

FIXTURE = Path(__file__).parent / "fixtures" / "resshift_pipeline_parity.pt"
TINY = dict(model_channels=32, channel_mult=(1, 2), num_res_blocks=(1, 1), swin_embed_dim=32, window_size=4,
            ae_ch=32, ae_ch_mult=(1, 2, 2), n_embed=64)


def _bundle(folder: Path, base: str) -> tuple[Path, dict, ResShiftUNet, VQModel]:
    cfg = mini_config(base, **TINY)
    unet = deterministic_fill_(ResShiftUNet(**cfg["unet"]))
    ae = deterministic_fill_(VQModel(**cfg["autoencoder"]))
    write_bundle(folder, cfg, unet, ae)
    return folder, cfg, unet, ae


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    return {"resshift": _bundle(root / "resshift-mini", "resshift_realsrx4_s4_v3"),
            "sinsr": _bundle(root / "sinsr-mini", "SinSR_v1")}


@pytest.fixture(scope="module")
def resshift_mini(bundles):
    return ResShift("mini", bundle_dir=bundles["resshift"][0])


@pytest.fixture(scope="module")
def sinsr_mini(bundles):
    return SinSR("mini", bundle_dir=bundles["sinsr"][0])


def _ctx(seed: int, progress=None) -> RunContext:
    return RunContext(Settings(seed=seed), torch.device("cpu"), torch.Generator().manual_seed(seed), progress)


def test_info_of_official_and_mini(resshift_mini, sinsr_mini):
    for version, mid, T, fname in [("v1", "resshift-v1", 15, "resshift_realsrx4_s15_v1.pth"),
                                   ("v2", "resshift-v2", 15, "resshift_realsrx4_s15_v2.pth"),
                                   ("v3", "resshift", 4, "resshift_realsrx4_s4_v3.pth"),
                                   ("bicsr", "resshift-bicsr", 4, "resshift_bicsrx4_s4.pth")]:
        m = ResShift(version)
        assert isinstance(m, SRMethod)
        i = m.info
        assert (i.id, i.steps.min, i.steps.max, i.scales, i.size_multiple) == (mid, T, T, (4,), 64)
        assert i.uses_seed and i.tiling_space == "pixel" and i.default_color_fix == "none" and i.family == "diffusion"
        assert "S-Lab" in i.licence
        assert [w.filename for w in i.weights] == [fname, "autoencoder_vq_f4.pth"]
        assert i.weights[0].url.endswith(fname) and i.weights[0].env == "RESSHIFT_WEIGHTS"
    s = SinSR("v2").info
    assert (s.id, s.steps.default, s.steps.fixed) == ("sinsr-v2", 1, True)
    assert "CC BY-NC-SA" in s.licence and s.weights[0].filename == "SinSR_v2.pth"
    assert SinSR().info.id == "sinsr" and ResShift().info.id == "resshift"
    assert ResShift("v1", sampler="deterministic").info.id == "resshift-v1-det"
    assert (resshift_mini.info.id, resshift_mini.info.steps.default, resshift_mini.info.size_multiple) == ("resshift-mini", 4, 8)
    assert (sinsr_mini.info.id, sinsr_mini.info.steps.default) == ("sinsr-mini", 1)
    with pytest.raises(ValueError, match="valid"):
        ResShift("v9")
    with pytest.raises(ValueError, match="valid"):
        SinSR("v3")


def test_size_multiple_matches_the_network(bundles):
    assert unet_size_multiple(get_config("resshift_realsrx4_s15_v1")["unet"]) == 64
    assert unet_size_multiple(get_config("SinSR_v1")["unet"]) == 64
    for _, cfg, unet, _ in bundles.values():
        assert unet_size_multiple(cfg["unet"]) == unet.size_multiple == 8
    default_mini = mini_config("resshift_realsrx4_s15_v1")["unet"]
    with torch.device("meta"):
        assert unet_size_multiple(default_mini) == ResShiftUNet(**default_mini).size_multiple


def test_pipeline_matches_official_code(resshift_mini, sinsr_mini, bundles):
    fix = torch.load(FIXTURE, weights_only=True)
    out = resshift_mini.run(fix["resshift_lr"], _ctx(5))
    assert (out - fix["resshift_sr_seed5"]).abs().max().item() <= 1e-4
    out = sinsr_mini.run(fix["sinsr_lr"], _ctx(5))
    assert (out - fix["sinsr_sr_seed5"]).abs().max().item() <= 1e-4
    # SinSR's deterministic sampler (official SinSR ddim_sample_loop on ResShift's schedule)
    det = ResShift("mini", bundle_dir=bundles["resshift"][0], sampler="deterministic")
    assert det.info.id == "resshift-mini-det" and det.info.steps.default == 4
    out = det.run(fix["resshift_lr"], _ctx(5))
    assert (out - fix["resshift_ddim_sr_seed5"]).abs().max().item() <= 1e-4


def test_end_to_end_seeds_and_progress(resshift_mini):
    lr = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = []
    a = resshift_mini.run(lr, _ctx(0, lambda f, m: seen.append((f, m))))
    assert a.shape == (1, 3, 64, 64) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, resshift_mini.run(lr, _ctx(0)))
    assert not torch.allclose(a, resshift_mini.run(lr, _ctx(1)))
    fr = [f for f, _ in seen]
    assert fr == sorted(fr) and fr[-1] == 1.0 and any("step 4/4" in m for _, m in seen)
    # a side that is not a multiple of size_multiple is padded and cropped back (facade-free call)
    assert resshift_mini.run(lr[..., :13, :11], _ctx(0)).shape == (1, 3, 52, 44)


def test_network_call_counts(resshift_mini, sinsr_mini):
    lr = torch.rand(1, 3, 8, 8)
    for method, want in [(resshift_mini, 4), (sinsr_mini, 1)]:
        unet = method.nets(torch.device("cpu"))[0]
        calls = []
        h = unet.register_forward_hook(lambda mod, args, out: calls.append(int(args[1][0])))
        try:
            method.run(lr, _ctx(0))
        finally:
            h.remove()
        assert calls == list(range(want - 1, -1, -1)) if want > 1 else calls == [14]  # SinSR: t = T-1


def test_missing_weights_are_reported(tmp_path, monkeypatch):
    for var in ("SR_WEIGHTS_DIR", "RESSHIFT_WEIGHTS", "RESSHIFT_AUTOENCODER", "SINSR_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SR_OFFLINE", "1")
    m = ResShift("mini", bundle_dir=tmp_path / "empty")
    av = m.availability()
    assert not av.ok and "config.json" in av.reason and "empty" in av.reason
    av = ResShift("v3").availability()
    assert not av.ok and "resshift_realsrx4_s4_v3.pth" in av.reason and "offline" in av.reason
    assert "github.com/zsyOAOA/ResShift/releases" in av.reason
    # model found through $RESSHIFT_WEIGHTS (a folder), the autoencoder still missing
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "resshift_realsrx4_s4_v3.pth").write_bytes(b"x")
    monkeypatch.setenv("RESSHIFT_WEIGHTS", str(tmp_path / "w"))
    av = ResShift("v3").availability()
    assert not av.ok and "autoencoder_vq_f4.pth" in av.reason and "RESSHIFT_AUTOENCODER" in av.reason
    (tmp_path / "w" / "autoencoder_vq_f4.pth").write_bytes(b"x")
    monkeypatch.setenv("RESSHIFT_AUTOENCODER", str(tmp_path / "w"))
    assert ResShift("v3").availability().ok
    av = SinSR("v1").availability()
    assert not av.ok and "SinSR_v1.pth" in av.reason and "wyf0912/SinSR" in av.reason
    reg = Registry()
    reg.add(SinSR("v1"))
    with pytest.raises(WeightsUnavailable, match="SinSR_v1.pth"):
        api.upscale(Image.new("RGB", (8, 8)), "sinsr", registry=reg)


def test_official_named_checkpoint_with_module_prefix_loads(tmp_path, bundles, resshift_mini):
    folder, _, unet, ae = bundles["resshift"]
    # the official release layout: torch pickles, {'state_dict': ...} wrapper, DDP `module.` prefixes
    torch.save({"state_dict": {"module." + k: v for k, v in unet.state_dict().items()}, "iters_start": 7},
               tmp_path / "resshift_realsrx4_s4_v3.pth")
    torch.save({"module." + k: v for k, v in ae.state_dict().items()}, tmp_path / "autoencoder_vq_f4.pth")
    m = ResShift("mini", paths={"config": folder / "config.json", "model": tmp_path / "resshift_realsrx4_s4_v3.pth",
                                "autoencoder": tmp_path / "autoencoder_vq_f4.pth"})
    assert m.availability().ok
    lr = torch.rand(1, 3, 8, 8)
    assert torch.equal(m.run(lr, _ctx(2)), resshift_mini.run(lr, _ctx(2)))
    # a checkpoint of another shape is refused with the offending names
    bad = {k: v for k, v in unet.state_dict().items() if not k.startswith("out.")}
    torch.save(bad, tmp_path / "bad.pth")
    m = ResShift("mini", paths={"config": folder / "config.json", "model": tmp_path / "bad.pth",
                                "autoencoder": tmp_path / "autoencoder_vq_f4.pth"})
    with pytest.raises(WeightsUnavailable, match="missing"):
        m.run(lr, _ctx(0))


def test_through_the_facade_with_tiling(sinsr_mini):
    reg = Registry()
    reg.add(sinsr_mini)
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))  # 24 x 20 px
    tiled = Settings(tile=16, tile_overlap=8, seed=3)
    r1 = api.upscale(img, "sinsr-mini", tiled, registry=reg)
    assert r1.image.size == (96, 80) and r1.settings.steps == 1 and r1.settings.color_fix == "none"
    r2 = api.upscale(img, "sinsr-mini", tiled, registry=reg)
    assert np.array_equal(np.asarray(r1.image), np.asarray(r2.image))
    r3 = api.upscale(img, "sinsr-mini", Settings(tile=16, tile_overlap=8, seed=4), registry=reg)
    assert not np.array_equal(np.asarray(r1.image), np.asarray(r3.image))
    whole = api.upscale(img, "sinsr-mini", Settings(tile=32, tile_overlap=0, seed=3), registry=reg)  # one (padded) tile
    assert whole.image.size == (96, 80)


def test_bundled_resshift_and_sinsr_minis_serve():
    """The committed resshift-mini / sinsr-mini bundles: every file matches its SHA256SUMS line, both load
    through the default registry, upscale a small image (seeded: same seed, same image) and sinsr-mini's
    autoencoder encodes as its teacher's."""
    import numpy as np
    from PIL import Image

    from sr_core import api
    from sr_core.registry import default_registry
    from sr_core.types import Settings
    from sr_core.weights import ASSETS_WEIGHTS, sha256_file

    reg = default_registry()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8))
    for mid in ("resshift-mini", "sinsr-mini"):
        folder = ASSETS_WEIGHTS / mid
        for line in (folder / "SHA256SUMS").read_text().splitlines():
            h, name = line.split()
            assert sha256_file(folder / name) == h, (mid, name)
        assert mid in reg.ids() and reg.get(mid).availability().ok
        # the minis' default colour fix (their small autoencoder shifts low frequencies; see the cards)
        assert reg.get(mid).info.default_color_fix == "wavelet"
        assert "colour fix wavelet) |" in (folder / "MODEL_CARD.md").read_text()
        a = api.upscale(img, mid, Settings(seed=1), registry=reg).image
        b = api.upscale(img, mid, Settings(seed=1), registry=reg).image
        assert a.size == (40, 48) and np.array_equal(np.asarray(a), np.asarray(b))
    # the student lives in its teacher's latent space: encoder, quant_conv and codebook bit for bit the teacher's
    # (the decoder side may differ: each bundle's is adapted to the latents its own UNet samples)
    from sr_core.training.recipes_resshift import LATENT_SIDE, _differing
    from sr_core.weights import load_state_dict

    teacher, student = (load_state_dict(ASSETS_WEIGHTS / m / "autoencoder.safetensors")
                        for m in ("resshift-mini", "sinsr-mini"))
    assert set(teacher) == set(student) and any(k.startswith(LATENT_SIDE) for k in teacher)
    assert not _differing(teacher, student, LATENT_SIDE)
    # sinsr-mini's teacher map is served beside it: the bundled teacher with SinSR's deterministic sampler
    det = reg.get("resshift-mini-det")
    assert det.info.steps.default == 15 and det.sampler_name == "deterministic"
    assert det.info.default_color_fix == "wavelet"
    a = np.asarray(api.upscale(img, "resshift-mini-det", Settings(seed=1), registry=reg).image, dtype=np.int16)
    b = np.asarray(api.upscale(img, "resshift-mini-det", Settings(seed=2), registry=reg).image, dtype=np.int16)
    c = np.asarray(api.upscale(img, "resshift-mini", Settings(seed=1), registry=reg).image, dtype=np.int16)
    assert a.shape == (48, 40, 3) and np.abs(a - c).max() > 0  # another sampler of the same weights
    assert np.abs(a - b).max() > 0  # its start is random: the seed matters


@pytest.mark.parametrize("dtype,min_db", [(torch.bfloat16, 40.0), (torch.float16, 50.0)])
def test_half_precision_path_of_the_bundled_sinsr_mini(monkeypatch, dtype, min_db):
    """What CUDA runs by default (`dtype="auto"`: fp16 autocast; "bf16"), exercised on the CPU: the pipeline under
    torch.autocast of that dtype (the CPU's autocast stands in for CUDA's, which cannot run here) returns fp32 in
    [0, 1] within `min_db` of the fp32 run -- measured 45.6 dB (bf16) and 72 dB (fp16) at LR 16 px.  The bundled
    weights, not deterministic test weights: those are not numerically tame enough for half precision."""
    from sr_core.api import run_method
    from sr_core.bench import synthetic_image
    from precision_helpers import assert_half_close

    m = SinSR("mini")
    x = synthetic_image(16, seed=3)
    ref = run_method(m, x, Settings(seed=1))
    monkeypatch.setattr(m, "_autocast", lambda device: torch.autocast("cpu", dtype=dtype))
    out = run_method(m, x, Settings(seed=1))
    assert_half_close(out, ref, min_db)
