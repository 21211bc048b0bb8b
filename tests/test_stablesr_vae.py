"""StableSR CFW autoencoder: parity with the official code, LDM key conversion, plain-decoder identity, tiling.

`tests/fixtures/stablesr_vae_parity.{json,safetensors}` were made by the scratch oracle
/work/scratch/stablesr_vae_oracle/make_fixtures.py: the official IceClear/StableSR `Encoder(return_fea=True)` +
`Decoder_Mix` (+ AutoencoderKLResi's quant convs; basicsr RRDB) at the test-width config (ch 32, ch_mult
1,2,2,2, 2 res blocks, 2 fuse blocks, growth 32) filled with `deterministic_fill_` (scale in the json), run on
a 64x48 image: posterior mean, logvar, the two encoder features, decodes of a random latent with those
features for fusion_w in {0, 0.5, 1}, a reconstruction, and the plain LDM `Decoder`.  The json also holds the
official key/shape lists of the tiny and the released (sd21) configs.  Here the official state dict is
re-created from those names (`deterministic_tensor`), converted by our rules, loaded strictly, and compared.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from sr_core.nets.init import deterministic_tensor
from sr_core.nets.stablesr_vae import (FEATURE_LEVELS, CFWAutoencoder, build_cfw_autoencoder, convert_ldm_vae,
                                       infer_cfw_configs, load_cfw_autoencoder, stablesr_vae_configs)

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((FIX / "stablesr_vae_parity.json").read_text())


@pytest.fixture(scope="module")
def expected() -> dict:
    from safetensors.torch import load_file

    return load_file(str(FIX / "stablesr_vae_parity.safetensors"))


@pytest.fixture(scope="module")
def official_tiny(meta) -> dict:
    """The official tiny state dict, re-created from its names (what deterministic_fill_ gave the oracle)."""
    return {k: deterministic_tensor(k, tuple(s), scale=meta["scale"]) for k, s in meta["tiny"]["keys"].items()}


@pytest.fixture(scope="module")
def model(official_tiny) -> CFWAutoencoder:
    m = build_cfw_autoencoder("tiny")
    m.load_state_dict(convert_ldm_vae(official_tiny, target=m), strict=True)
    return m.eval()


def _maxdiff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def test_config_facts(meta):
    vae, fus = stablesr_vae_configs("sd21")
    assert vae["block_out_channels"] == [128, 256, 512, 512] and vae["layers_per_block"] == 2
    assert vae["latent_channels"] == 4 and vae["scaling_factor"] == 0.18215
    # autoencoder_kl_64x64x4_resi.yaml sets no num_fuse_block: Decoder_Mix's default 2; RRDB growth default 32
    assert fus["num_fuse_block"] == meta["num_fuse_block"] == 2 and fus["num_grow_ch"] == meta["num_grow_ch"] == 32
    dd = meta["sd21"]["ddconfig"]
    assert [dd["ch"] * m for m in dd["ch_mult"]] == vae["block_out_channels"]
    tiny, _ = stablesr_vae_configs("tiny")
    assert tiny["norm_num_groups"] == 32 and all(c % 32 == 0 for c in tiny["block_out_channels"])
    assert [meta["tiny"]["ddconfig"]["ch"] * m for m in meta["tiny"]["ddconfig"]["ch_mult"]] == \
        tiny["block_out_channels"]
    with pytest.raises(ValueError, match="variant"):
        stablesr_vae_configs("sd15x")


def test_parity_with_official(model, expected):
    """encode (posterior mean + enc features) and decode with fusion_w 0 / 0.5 / 1 match the official code."""
    diffs = {}
    with torch.no_grad():
        mean, feats = model.encode(expected["x"])
        diffs["mean"] = _maxdiff(mean, expected["mean"])
        assert len(feats) == len(FEATURE_LEVELS) == 2
        for i, f in enumerate(feats):
            assert f.shape == expected[f"enc_fea.{i}"].shape
            diffs[f"enc_fea.{i}"] = _maxdiff(f, expected[f"enc_fea.{i}"])
        for w in (0.0, 0.5, 1.0):
            diffs[f"dec_w{w}"] = _maxdiff(model.decode(expected["z"], feats, w), expected[f"dec_w{w}"])
        diffs["rec_w0.5"] = _maxdiff(model.decode(mean, feats, 0.5), expected["rec_w0.5"])
        diffs["dec_plain"] = _maxdiff(model.decode(expected["z"]), expected["dec_plain"])
        # posterior logvar (for sampling) through the same quant_conv
        moments = model.vae.quant_conv(model.vae.encoder(expected["x"]))
        diffs["logvar"] = _maxdiff(moments[:, 4:].clamp(-30, 20), expected["logvar"])
    print("stablesr_vae parity max abs diffs:", {k: f"{v:.1e}" for k, v in diffs.items()})
    assert max(diffs.values()) <= TOL, diffs
    # the fusion matters (otherwise the comparison above would not test it)
    assert _maxdiff(expected["dec_w0.5"], expected["dec_w0.0"]) > 0.1


def test_w0_is_plain_decoder(model, expected):
    z = expected["z"]
    with torch.no_grad():
        _, feats = model.encode(expected["x"])
        plain = model.decode(z)
        assert torch.equal(model.decode(z, feats, 0.0), plain)
        assert torch.equal(model.decode(z, None, 1.0), plain)
        assert torch.equal(model.vae.decode(z).sample, plain)  # diffusers' own decode: hooks inactive
        assert not torch.equal(model.decode(z, feats, 1.0), plain)
        # hooks follow a deep copy (they are bound to the copy, not to the original)
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin.fusion["fusion_layer_1"].encode_enc_3.conv2.bias.add_(1.0)
        assert not torch.equal(twin.decode(z, feats, 1.0), model.decode(z, feats, 1.0))
        # features of the wrong size are refused with a clear message
        with pytest.raises(ValueError, match="8x the latent size"):
            model.decode(z[:, :, :4], feats, 0.5)


def test_encode_sample(model, expected):
    x = expected["x"]
    with torch.no_grad():
        mean, _ = model.encode(x)
        s1, _ = model.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
        s2, _ = model.encode(x, sample=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s1, s2) and not torch.equal(s1, mean)
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert _maxdiff(s1, mean + torch.exp(0.5 * expected["logvar"]) * noise) < TOL


def test_sd21_names_and_shapes(meta):
    """The released config: converted official names/shapes == ours, on the meta device (nothing allocated)."""
    official = {k: torch.empty(tuple(s), device="meta") for k, s in meta["sd21"]["keys"].items()}
    ours = build_cfw_autoencoder("sd21", device="meta")
    conv = convert_ldm_vae(official, target=ours)
    assert {k: tuple(v.shape) for k, v in conv.items()} == {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert sorted(k for k in ours.state_dict() if k.startswith("fusion."))[0].startswith("fusion.fusion_layer_1.")
    vae_cfg, fus_cfg = infer_cfw_configs(official)
    want_vae, want_fus = stablesr_vae_configs("sd21")
    assert vae_cfg == want_vae and fus_cfg == want_fus
    n = sum(v.numel() for v in ours.state_dict().values())
    assert n == sum(torch.Size(s).numel() for s in meta["sd21"]["keys"].values())
    # plain SD VAE part = 83.65 M parameters of diffusers' SD VAE
    assert sum(v.numel() for k, v in ours.state_dict().items() if k.startswith("vae.")) == 83_653_863


def test_first_stage_model_prefix(official_tiny, expected):
    """A plain SD VAE inside a full checkpoint (first_stage_model.*): no fusion, other components skipped."""
    full = {"first_stage_model." + k: v for k, v in official_tiny.items() if ".fusion_layer_" not in k}
    full["model.diffusion_model.input_blocks.0.0.weight"] = torch.zeros(1)
    full["cond_stage_model.model.positional_embedding"] = torch.zeros(1)
    conv = convert_ldm_vae(full, prefix="first_stage_model.")
    assert not any(k.startswith("fusion.") for k in conv)
    plain = load_cfw_autoencoder(full, prefix="first_stage_model.")
    assert not plain.has_fusion
    with torch.no_grad():
        assert _maxdiff(plain.decode(expected["z"]), expected["dec_plain"]) <= TOL
        mean, feats = plain.encode(expected["x"])
        assert _maxdiff(mean, expected["mean"]) <= TOL
        with pytest.raises(ValueError, match="no CFW fusion"):
            plain.decode(expected["z"], feats, 0.5)
    # a plain dict loaded into a CFW model (fusion expected) names the missing fusion keys
    with pytest.raises(ValueError, match=r"missing: fusion\.fusion_layer_1\."):
        convert_ldm_vae(full, prefix="first_stage_model.", target=build_cfw_autoencoder("tiny", device="meta"))


def test_loss_keys_ignored_and_load(official_tiny, expected):
    ckpt = dict(official_tiny)
    ckpt["loss.logvar"] = torch.zeros(())
    ckpt["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
    ckpt["loss.perceptual_loss.net.slice1.0.weight"] = torch.zeros(8, 3, 3, 3)
    m = load_cfw_autoencoder(ckpt)
    assert m.has_fusion and m.vae.config.block_out_channels == [32, 64, 64, 64]
    with torch.no_grad():
        _, feats = m.encode(expected["x"])
        assert _maxdiff(m.decode(expected["z"], feats, 0.5), expected["dec_w0.5"]) <= TOL


def test_strict_errors_name_keys(official_tiny):
    target = build_cfw_autoencoder("tiny", device="meta")
    bad = dict(official_tiny)
    bad["decoder.up.1.attn.0.q.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"unknown key\(s\): decoder\.up\.1\.attn\.0\.q\.weight"):
        convert_ldm_vae(bad, target=target)
    bad = {("first_stage_model." + k): v for k, v in official_tiny.items()}
    bad["first_stage_model.model_ema.decay"] = torch.zeros(())
    with pytest.raises(ValueError, match=r"first_stage_model\.model_ema\.decay"):
        convert_ldm_vae(bad, prefix="first_stage_model.", target=target)
    missing = {k: v for k, v in official_tiny.items() if k != "decoder.fusion_layer_2.encode_enc_2.1.rdb3.conv5.bias"}
    with pytest.raises(ValueError, match=r"missing: fusion\.fusion_layer_2\.encode_enc_2\.1\.rdb3\.conv5\.bias"):
        convert_ldm_vae(missing, target=target)
    wrong = dict(official_tiny)
    wrong["decoder.up.3.upsample.conv.weight"] = torch.zeros(64, 64, 1, 1)
    with pytest.raises(ValueError, match=r"vae\.decoder\.up_blocks\.0\.upsamplers\.0\.conv\.weight: got"):
        convert_ldm_vae(wrong, target=target)
    wrong = dict(official_tiny)
    wrong["encoder.mid.attn_1.q.weight"] = torch.zeros(64, 64, 3, 3)
    with pytest.raises(ValueError, match=r"encoder\.mid\.attn_1\.q\.weight"):
        convert_ldm_vae(wrong, target=target)
    with pytest.raises(ValueError, match="no keys with prefix"):
        convert_ldm_vae(official_tiny, prefix="first_stage_model.")


def test_level_mapping_is_reversed(official_tiny):
    """LDM decoder.up.i is diffusers up_blocks[n-1-i]; encoder.down.i keeps its index."""
    conv = convert_ldm_vae(official_tiny)
    assert torch.equal(conv["vae.decoder.up_blocks.0.upsamplers.0.conv.weight"],
                       official_tiny["decoder.up.3.upsample.conv.weight"])
    assert torch.equal(conv["vae.decoder.up_blocks.3.resnets.2.conv2.bias"],
                       official_tiny["decoder.up.0.block.2.conv2.bias"])
    assert torch.equal(conv["vae.encoder.down_blocks.1.resnets.0.conv_shortcut.weight"],
                       official_tiny["encoder.down.1.block.0.nin_shortcut.weight"])
    assert torch.equal(conv["vae.decoder.mid_block.attentions.0.to_out.0.weight"],
                       official_tiny["decoder.mid.attn_1.proj_out.weight"][:, :, 0, 0])


def test_tiled_single_tile_is_exact(model, expected):
    x, z = expected["x"], expected["z"]
    with torch.no_grad():
        mean, feats = model.encode(x)
        tmean, tfeats = model.encode_tiled(x, tile_px=64, overlap_px=16)
        assert torch.equal(tmean, mean) and all(torch.equal(a, b) for a, b in zip(tfeats, feats))
        assert torch.equal(model.decode_tiled(z, feats, 0.5, tile_latent=8, overlap_latent=2),
                           model.decode(z, feats, 0.5))
    with pytest.raises(ValueError, match="multiple of 8"):
        model.encode_tiled(x, tile_px=36, overlap_px=8)


def _rel(a, b) -> float:
    return float((a - b).abs().mean() / b.abs().mean())


def _corr(a, b) -> float:
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


def test_tiled_close_on_smooth_input(model):
    """Tiles are independent passes (own GroupNorm statistics, own attention, zero-padded borders), so tiled
    output only approximates untiled; on a smooth image it correlates with it and gets closer as tiles grow.
    Where one tile alone covers a pixel the blend returns that tile's own output."""
    h, w = 64, 128
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    x = (0.2 + 0.1 * torch.stack([torch.sin(1.5 * xx + 0.2), torch.cos(1.2 * yy), xx * yy]))[None]
    with torch.no_grad():
        mean, feats = model.encode(x)
        small, _ = model.encode_tiled(x, tile_px=64, overlap_px=32)
        big, big_feats = model.encode_tiled(x, tile_px=96, overlap_px=48)
        ref = model.decode(mean, feats, 0.5)
        dec_small = model.decode_tiled(mean, feats, 0.5, tile_latent=8, overlap_latent=4)
        dec_big = model.decode_tiled(mean, feats, 0.5, tile_latent=12, overlap_latent=6)
        # latent width 16, tiles of 12 at x0 = 0 and 4: latent columns 0..3 belong to the first tile only
        first = model.decode(mean[:, :, :, :12], [feats[0][:, :, :, :48], feats[1][:, :, :, :24]], 0.5)
    print(f"tiled vs untiled (rel mean abs err / corr): encode 64px {_rel(small, mean):.2f}/{_corr(small, mean):.2f}, "
          f"96px {_rel(big, mean):.2f}/{_corr(big, mean):.2f}; decode 8 {_rel(dec_small, ref):.2f}/"
          f"{_corr(dec_small, ref):.2f}, 12 {_rel(dec_big, ref):.2f}/{_corr(dec_big, ref):.2f}")
    assert big.shape == mean.shape and all(a.shape == b.shape for a, b in zip(big_feats, feats))
    assert _rel(big, mean) < _rel(small, mean) and _corr(big, mean) > 0.85
    assert _rel(dec_big, ref) < _rel(dec_small, ref) and _corr(dec_big, ref) > 0.75
    assert _maxdiff(dec_big[..., :32], first[..., :32]) < 1e-5
