"""OSEDiff: parity with the official code, strict osediff.pkl loading, prompt path, tiling, merge, messages.

The fixture (tests/fixtures/osediff_parity.*) was made by the scratch script make_osediff_fixtures.py:
the official `OSEDiff_gen.save_model` wrote `osediff_parity.pkl` (name-seeded LoRA + conv_in on the
tiny SD-layout config) and `OSEDiff_test` (diffusers 0.25, peft 0.9, transformers 4.36, fp32, VAE
posterior mean) produced the stage outputs in `osediff_parity.safetensors` on an input of 64x80 px.
Here the same deterministic SD folder is rebuilt by `write_sd_folder` and run through our code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sr_core import api
from sr_core.methods.osediff import (OSEDiff, OSEDiffModel, attach_lora, load_osediff_weights, lora_state_dicts,
                                     official_lora_targets, save_osediff_weights)
from sr_core.nets.sd_configs import SD21_BASE, tiny_sd_config, write_sd_folder
from sr_core.types import InputError, Settings, WeightsUnavailable

FIX = Path(__file__).parent / "fixtures"
PKL = FIX / "osediff_parity.pkl"
TOL = 1e-4


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    return write_sd_folder(tmp_path_factory.mktemp("osediff") / "tiny_sd", tiny_sd_config())


@pytest.fixture(scope="module")
def expected() -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIX / "osediff_parity.safetensors"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIX / "osediff_parity.json").read_text())


@pytest.fixture(scope="module")
def model(sd_folder, tmp_path_factory) -> OSEDiffModel:
    return OSEDiffModel(sd_folder, load_osediff_weights(PKL), device=torch.device("cpu"), dtype=torch.float32)


def _maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def test_sd21_config_facts():
    u, v, s, t = (SD21_BASE[k] for k in ("unet", "vae", "scheduler", "text_encoder"))
    assert u["block_out_channels"] == [320, 640, 1280, 1280] and u["cross_attention_dim"] == 1024
    assert u["use_linear_projection"] is True and u["attention_head_dim"] == [5, 10, 20, 20]
    assert v["scaling_factor"] == 0.18215 and v["block_out_channels"] == [128, 256, 512, 512]
    assert (s["beta_start"], s["beta_end"], s["beta_schedule"]) == (0.00085, 0.012, "scaled_linear")
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_attention_heads"]) == (1024, 23, 16)


def test_official_pkl_reads_safely_and_lists_match_ours(sd_folder, meta):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    ck = load_osediff_weights(PKL)  # torch.load(weights_only=True): no pickled code runs
    assert ck["rank_unet"] == ck["rank_vae"] == 4
    unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(sd_folder), subfolder="vae")
    lists = official_lora_targets(unet, vae)
    assert lists == meta["lists"]  # our re-statement of the training's selection == upstream's lists
    attach_lora(unet, vae, ck)
    su, sv = lora_state_dicts(unet, vae)
    assert {k: list(v.shape) for k, v in su.items()} == meta["state_dict_unet"]
    assert {k: list(v.shape) for k, v in sv.items()} == meta["state_dict_vae"]
    assert "conv_in.base_layer.weight" in su and any(".lora_B.default_others." in k for k in su)


def test_parity_with_official(model, expected):
    x = expected["x"]
    for tag, prompt in (("", ""), ("_prompt", "a photo of a cat")):
        c = model.prompt_embeds(prompt)
        assert _maxdiff(c, expected["prompt_embeds" + tag]) <= TOL
        z = model.encode(x)
        assert _maxdiff(z, expected["z" + tag]) <= TOL  # LoRA-adapted VAE encode
        e = model.eps(z, c)
        assert _maxdiff(e, expected["eps" + tag]) <= TOL  # the UNet step
        # x0 = (z - sqrt(1-abar) eps) / sqrt(abar) amplifies eps by 1/sqrt(abar_999) ~ 14.6
        assert _maxdiff(model.x0(z, e) * model.sqrt_abar, expected["x0" + tag] * model.sqrt_abar) <= TOL
        out = model(x, prompt)
        assert out.shape == x.shape and _maxdiff(out, expected["out" + tag]) <= TOL  # full one-step output


def test_merge_matches_unmerged(sd_folder, model, expected):
    merged = OSEDiffModel(sd_folder, load_osediff_weights(PKL), device=torch.device("cpu"), dtype=torch.float32,
                          merge=True)
    assert not any("lora" in k for k in merged.unet.state_dict())
    x = expected["x"]
    assert _maxdiff(merged(x), model(x)) <= TOL


def _edited_ckpt(edit) -> dict:
    ck = load_osediff_weights(PKL)
    ck["state_dict_unet"] = dict(ck["state_dict_unet"])
    edit(ck)
    return ck


@pytest.mark.parametrize("edit, word", [
    (lambda ck: ck["state_dict_unet"].pop("mid_block.resnets.0.conv1.lora_A.default_others.weight"), "missing"),
    (lambda ck: ck["state_dict_unet"].__setitem__("mid_block.extra.lora_A.default_others.weight", torch.zeros(1)),
     "unexpected"),
    (lambda ck: ck["state_dict_unet"].__setitem__("conv_in.base_layer.weight", torch.zeros(32, 4, 1, 1)), "shape"),
    (lambda ck: ck.__setitem__("unet_lora_others_modules", ck["unet_lora_others_modules"] + ["mid_block.nope"]),
     "not Linear/Conv2d"),
])
def test_strict_loading_rejects(sd_folder, edit, word):
    with pytest.raises(WeightsUnavailable, match=word):
        OSEDiffModel(sd_folder, _edited_ckpt(edit), device=torch.device("cpu"), dtype=torch.float32)


def test_safetensors_roundtrip_and_mini_through_facade(sd_folder, model, expected, tmp_path):
    # a mini bundle: the SD folder layout + osediff.safetensors, no text encoder, a fixed empty context
    bundle = tmp_path / "osediff-mini"
    for sub in ("unet", "vae", "scheduler"):
        shutil.copytree(sd_folder / sub, bundle / sub)
    save_osediff_weights(bundle / "osediff.safetensors", model.unet, model.vae,
                         {**load_osediff_weights(PKL), "rank_unet": 4, "rank_vae": 4})
    ck = load_osediff_weights(bundle / "osediff.safetensors")
    ref = load_osediff_weights(PKL)
    assert ck["unet_lora_others_modules"] == ref["unet_lora_others_modules"]
    assert all(torch.equal(ck["state_dict_unet"][k], v) for k, v in ref["state_dict_unet"].items())
    from safetensors.torch import save_file

    save_file({"prompt_embeds": model.prompt_embeds("").contiguous()}, str(bundle / "empty_prompt_embeds.safetensors"))
    mini = OSEDiff("mini", bundle_dir=bundle)
    assert mini.availability().ok and not mini.info.supports_prompt and not mini.info.uses_seed  # no text encoder
    m = mini.model("cpu")
    assert _maxdiff(m(expected["x"]), expected["out"]) <= TOL
    lr = torch.rand(1, 3, 12, 20, generator=torch.Generator().manual_seed(0))
    out = api.run_method(mini, lr, api.check_settings(mini.info, Settings()))
    assert out.shape == (1, 3, 48, 80) and 0 <= float(out.min()) and float(out.max()) <= 1
    with pytest.raises(InputError, match="no text encoder"):
        api.run_method(mini, lr, api.check_settings(mini.info, Settings(prompt="a cat")))
    from PIL import Image

    from sr_core.registry import Registry

    reg = Registry()
    reg.add(mini)
    img = Image.fromarray((lr[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
    res = api.upscale(img, "osediff-mini", registry=reg)
    assert res.image.size == (80, 48) and res.settings.color_fix == "adain" and res.settings.steps == 1


def test_empty_prompt_cached_on_disk(sd_folder, model, monkeypatch, tmp_path):
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path))
    fresh = OSEDiffModel(sd_folder, load_osediff_weights(PKL), device=torch.device("cpu"), dtype=torch.float32)
    a = fresh.prompt_embeds("")
    assert list((tmp_path / "osediff").glob("empty_prompt_*.safetensors"))
    again = OSEDiffModel(sd_folder, load_osediff_weights(PKL), device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(again.prompt_embeds(""), a) and again.text_encoder is None  # no text encoder loaded


def test_tiling_plumbing_is_exact_for_local_maps(model):
    """With local stand-ins (pointwise UNet, 8x8 mean-pool encoder, x8 nearest decoder) tiled == untiled,
    which checks the tile boxes and the pixel<->latent mapping; the real nets then stay close."""
    import torch.nn.functional as F

    x = torch.rand(1, 3, 64, 128, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(1, 4, 8, 16, generator=torch.Generator().manual_seed(2))
    c = model.prompt_embeds("")
    saved = (model.unet, model._encode_tile, model.vae)

    class PointUNet(torch.nn.Module):
        def forward(self, t, ts, encoder_hidden_states):
            return type("O", (), {"sample": torch.tanh(t) * 0.5})()

    class NearestVAE(torch.nn.Module):
        def decode(self, t):
            return type("O", (), {"sample": F.interpolate(t[:, :3], scale_factor=8, mode="nearest")})()

    try:
        model.unet = PointUNet()
        assert _maxdiff(model.eps(z, c, tile=8, overlap=4), model.eps(z, c)) <= 1e-6
        model._encode_tile = lambda t: F.avg_pool2d(t, 8).repeat(1, 2, 1, 1)[:, :4]
        model.vae_encoder_tile, model.vae_decoder_tile, model.vae_overlap = 64, 8, 4
        tiled = model.encode(x)
        model.vae_encoder_tile = 10**6
        assert _maxdiff(tiled, model.encode(x)) <= 1e-6
        model.vae = NearestVAE()
        tiled = model.decode(z)
        model.vae_decoder_tile = 10**6
        assert _maxdiff(tiled, model.decode(z)) <= 1e-6
    finally:
        model.unet, model._encode_tile, model.vae = saved
        model.__dict__.pop("_encode_tile", None)
        model.vae_encoder_tile, model.vae_decoder_tile, model.vae_overlap = 1024, 128, 16
    # real (random-weight) networks: GroupNorm statistics and self-attention see only the tile, so the
    # results differ, but stay close and finite (trained weights are far more local than random ones)
    full = model(x)
    tiled = model(x, tile=8, overlap=4)
    assert torch.isfinite(tiled).all() and float((tiled - full).abs().mean()) < 0.3


def test_missing_sd_and_weights_offline_say_what_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("SR_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("OSEDIFF_SD_PATH", "OSEDIFF_WEIGHTS", "OSEDIFF_SD_REPO", "SR_WEIGHTS_DIR"):
        monkeypatch.delenv(var, raising=False)
    m = OSEDiff("official")
    a = m.availability()
    assert not a.ok and "osediff.pkl" in a.reason and "raw.githubusercontent.com/cswry/OSEDiff" in a.reason
    (tmp_path / "w.pkl").write_bytes(PKL.read_bytes())
    m = OSEDiff("official", weights=tmp_path / "w.pkl")
    a = m.availability()
    assert not a.ok and "OSEDIFF_SD_PATH" in a.reason and "OSEDIFF_SD_REPO" in a.reason and "offline" in a.reason
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    m = OSEDiff("official", weights=tmp_path / "w.pkl", sd_path=tmp_path / "sd")
    with pytest.raises(WeightsUnavailable, match=r"lacks vae/, scheduler/"):
        m.model("cpu")
    info = m.info
    assert (info.scales, info.steps.fixed, info.tiling_space, info.size_multiple, info.default_color_fix) == \
        ((4,), True, "latent", 8, "adain")


def test_pil_bicubic_is_the_official_resize():
    import numpy as np
    from PIL import Image

    from sr_core.methods.osediff import pil_bicubic

    a = np.random.default_rng(0).integers(0, 256, (6, 10, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(a).resize((40, 24), Image.BICUBIC))
    got = pil_bicubic(torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0, 4)
    assert got.shape == (1, 3, 24, 40)
    assert np.array_equal((got[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), want)
