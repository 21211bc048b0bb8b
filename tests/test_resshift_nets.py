"""Parity of our ResShift/SinSR networks with the official code, via a committed fixture.

`tests/fixtures/resshift_parity.{safetensors,json}` were produced by running the official
zsyOAOA/ResShift and wyf0912/SinSR modules (commits in the json's `meta`) filled with
`sr_core.nets.init.deterministic_fill_`; here our modules are built from the same configs, filled the
same way, and must reproduce the outputs (max abs diff <= 1e-4) and the state-dict names/shapes of
every released checkpoint config.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sr_core.nets.init import deterministic_fill_, deterministic_tensor
from sr_core.nets.resshift_configs import CONFIGS, get_config, mini_config
from sr_core.nets.resshift_unet import ResShiftUNet, shifted_window_mask
from sr_core.nets.vqgan import VQModel
from sr_core.types import WeightsUnavailable
from sr_core.weights import canonicalize, load_into, load_state_dict

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def fixture():
    from safetensors.torch import load_file

    meta = json.loads((FIX / "resshift_parity.json").read_text())
    return meta, load_file(str(FIX / "resshift_parity.safetensors"))


def _keyshapes(module: torch.nn.Module) -> list:
    return sorted([k, list(v.shape)] for k, v in module.state_dict().items())


def _tiny(**kw) -> dict:
    """The released UNet's code path at a toy size (fast): 2 levels, window 4, built for 16x16."""
    args = dict(channel_mult=[1, 2], num_res_blocks=[1, 1], swin_embed_dim=32, window_size=4, image_size=16,
                lq_size=16, attention_resolutions=[16, 8])
    args.update(kw)
    return mini_config(**args)


def _unet(cfg: dict, direct_lq: bool = False) -> ResShiftUNet:
    cfg = dict(cfg)
    if direct_lq:
        cfg["direct_lq"] = True
    return ResShiftUNet(**cfg)


# ------------------------------------------------------------------ names and shapes


@pytest.mark.parametrize("name", list(CONFIGS))
def test_state_dict_names_and_shapes_match_official(fixture, name):
    meta, _ = fixture
    expected = meta["keys"][name]
    cfg = CONFIGS[name]
    with torch.device("meta"):
        if "unet" in cfg:
            assert _keyshapes(ResShiftUNet(**cfg["unet"])) == expected["unet"]
        assert _keyshapes(VQModel(**cfg["autoencoder"])) == expected["autoencoder"]


def test_configs_match_official_yaml(fixture):
    meta, _ = fixture
    for name, off in meta["official_configs"].items():
        ours = CONFIGS[name]
        assert {k: v for k, v in ours["unet"].items() if k != "direct_lq"} == off["unet"], name
        if "autoencoder" in off:
            assert ours["autoencoder"] == off["autoencoder"], name
        if "diffusion" in off:
            d = dict(off["diffusion"])
            d["power"] = d.pop("schedule_kwargs")["power"]
            assert ours["diffusion"] == d, name


def test_config_table():
    assert set(CONFIGS) == {"resshift_realsrx4_s15_v1", "resshift_realsrx4_s15_v2", "resshift_realsrx4_s4_v3",
                            "resshift_bicsrx4_s4", "SinSR_v1", "SinSR_v2", "autoencoder_vq_f4"}
    for name, cfg in CONFIGS.items():
        assert cfg["url"].startswith("https://github.com/") and cfg["url"].endswith(cfg["filename"])
    assert [CONFIGS[n]["diffusion"]["steps"] for n in ("resshift_realsrx4_s15_v1", "resshift_realsrx4_s4_v3",
                                                         "resshift_bicsrx4_s4", "SinSR_v1")] == [15, 4, 4, 15]
    with pytest.raises(KeyError, match="valid: "):
        get_config("nope")
    get_config("SinSR_v1")["unet"]["model_channels"] = 1  # a copy
    assert CONFIGS["SinSR_v1"]["unet"]["model_channels"] == 160


def test_mini_config_is_small_and_builds():
    cfg = mini_config()
    with torch.device("meta"):
        unet = ResShiftUNet(**cfg["unet"])
        ae = VQModel(**cfg["autoencoder"])
    n_unet = sum(p.numel() for p in unet.parameters())
    n_ae = sum(p.numel() for p in ae.parameters())
    assert n_unet < 4e6 and n_ae < 1.5e6
    assert cfg["diffusion"] == CONFIGS["resshift_realsrx4_s15_v1"]["diffusion"]
    with pytest.raises(ValueError, match="multiple of 32"):
        mini_config(model_channels=48)


# ------------------------------------------------------------------ outputs


UNET_CASES = ["unet_full", "unet_small", "unet_small_64x32", "unet_variant", "unet_sinsr_small",
              "unet_sinsr_small_smalllq"]
AE_CASES = ["ae_full", "ae_mini", "ae_variant"]


@pytest.mark.parametrize("case", UNET_CASES)
@torch.no_grad()
def test_unet_matches_official(fixture, case):
    meta, t = fixture
    c = meta["cases"][case]
    model = deterministic_fill_(_unet(c["config"], c["direct_lq"]).eval())
    out = model(t[f"{case}.x"], t[f"{case}.t"], lq=t[f"{case}.lq"])
    ref = t[f"{case}.out"]
    assert out.shape == ref.shape
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("case", AE_CASES)
@torch.no_grad()
def test_autoencoder_matches_official(fixture, case):
    meta, t = fixture
    c = meta["cases"][case]
    ae = deterministic_fill_(VQModel(**c["config"]).eval())
    z = ae.encode(t[f"{case}.x"])
    assert (z - t[f"{case}.z"]).abs().max().item() <= TOL
    # decode the official latents so an encoder rounding difference cannot move a code choice
    assert (ae.decode(t[f"{case}.z"]) - t[f"{case}.dec_q"]).abs().max().item() <= TOL
    assert (ae.decode(t[f"{case}.zr"]) - t[f"{case}.dec_zr_q"]).abs().max().item() <= TOL
    noq = ae.decode(t[f"{case}.zr"], force_not_quantize=True)
    assert (noq - t[f"{case}.dec_zr_noq"]).abs().max().item() <= TOL


def test_fixture_covers_every_case(fixture):
    meta, _ = fixture
    assert set(meta["cases"]) == set(UNET_CASES + AE_CASES)


# ------------------------------------------------------------------ behaviour


def test_resshift_and_sinsr_variants_agree_for_same_size_lq():
    cfg = _tiny()
    a = deterministic_fill_(ResShiftUNet(**cfg["unet"]).eval())
    sinsr = {k: v for k, v in cfg["unet"].items() if k != "lq_size"}
    sinsr.update(in_channels=6, direct_lq=True)
    b = ResShiftUNet(**sinsr).eval()
    load_into(b, a.state_dict())  # same names and shapes
    g = torch.Generator().manual_seed(0)
    x, lq = torch.randn(1, 3, 16, 32, generator=g), torch.rand(1, 3, 16, 32, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.equal(a(x, torch.tensor([3.0]), lq), b(x, torch.tensor([3.0]), lq))


def test_size_multiple_and_bad_size():
    assert ResShiftUNet(**_tiny()["unet"]).size_multiple == 8
    with torch.device("meta"):
        assert ResShiftUNet(**CONFIGS["resshift_realsrx4_s4_v3"]["unet"]).size_multiple == 64
    m = ResShiftUNet(**_tiny()["unet"])
    with pytest.raises(ValueError, match="multiple of the window size"):
        m(torch.zeros(1, 3, 12, 12), torch.zeros(1), torch.zeros(1, 3, 12, 12))


def test_shift_mask_has_upstream_layout():
    # upstream's mask: only the last row of windows is masked, split by in-window *column*
    m = shifted_window_mask(16, 24, 4, 2)
    assert m.shape == (24, 16, 16)
    masked = [n for n in range(24) if (m[n] != 0).any()]
    assert masked == list(range(18, 24))
    first_row = (m[23, 0] != 0).view(4, 4).int().tolist()
    assert first_row == [[0, 0, 1, 1]] * 4


def test_quantiser_snaps_and_passes_gradients():
    cfg = mini_config()["autoencoder"]
    ae = deterministic_fill_(VQModel(**cfg))
    z = torch.randn(1, 3, 4, 4, requires_grad=True)
    zq, _, idx = ae.quantize(z)
    codes = ae.quantize.embedding.weight[idx].view(1, 4, 4, 3).permute(0, 3, 1, 2)
    assert torch.allclose(zq, codes, atol=1e-6)
    zq.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))


def test_fill_is_name_deterministic():
    a, b = deterministic_tensor("x.weight", (4, 3)), deterministic_tensor("x.weight", (4, 3))
    assert torch.equal(a, b) and not torch.equal(a, deterministic_tensor("y.weight", (4, 3)))
    assert torch.allclose(deterministic_tensor("n.weight", (1000,)).mean(), torch.tensor(1.0), atol=0.02)
    m = ResShiftUNet(**_tiny()["unet"])
    idx = [b.clone() for n, b in m.named_buffers() if n.endswith("relative_position_index")]
    deterministic_fill_(m)
    assert all(torch.equal(x, y) for x, y in zip(idx, [b for n, b in m.named_buffers()
                                                       if n.endswith("relative_position_index")]))


@pytest.mark.parametrize("wrap", ["plain", "module", "orig_mod", "state_dict"])
def test_strict_load_through_weights_module(tmp_path, wrap):
    cfg = _tiny()
    src = deterministic_fill_(ResShiftUNet(**cfg["unet"]))
    sd = src.state_dict()
    if wrap == "module":
        sd = {"module." + k: v for k, v in sd.items()}
    elif wrap == "orig_mod":
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    elif wrap == "state_dict":
        sd = {"state_dict": {"module._orig_mod." + k: v for k, v in sd.items()}}
    path = tmp_path / "ckpt.pth"
    torch.save(sd, path)
    dst = ResShiftUNet(**cfg["unet"])
    load_into(dst, load_state_dict(path))
    for (k, a), (_, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert torch.equal(a, b), k

    ae_src = deterministic_fill_(VQModel(**cfg["autoencoder"]))
    ae_dst = VQModel(**cfg["autoencoder"])
    load_into(ae_dst, canonicalize({"state_dict": {"module." + k: v for k, v in ae_src.state_dict().items()}}))
    assert torch.equal(ae_dst.quantize.embedding.weight, ae_src.quantize.embedding.weight)


def test_strict_load_rejects_a_wrong_architecture():
    small = ResShiftUNet(**_tiny()["unet"])
    other = ResShiftUNet(**_tiny(swin_embed_dim=64)["unet"])
    with pytest.raises(WeightsUnavailable, match="shape mismatch"):
        load_into(other, small.state_dict())
    sd = small.state_dict()
    sd.pop("out.2.bias")
    with pytest.raises(WeightsUnavailable, match="missing 1: out.2.bias"):
        load_into(small, sd)


def test_autoencoder_norm_groups_knob_keeps_the_parameters():
    """`norm_groups` (our knob for narrow minis; upstream 32) changes only GroupNorm's grouping: the same
    parameter names and shapes load either way, 32 stays the default, and the outputs differ."""
    from sr_core.training.recipes_resshift import mini_bundle_config

    cfg = mini_bundle_config({})
    dd = cfg["autoencoder"]["ddconfig"]
    assert dd["norm_groups"] == 8 and dd["ch"] == 32  # the mini: 4-8 channels per group, not an instance norm
    plain = {k: v for k, v in dd.items() if k != "norm_groups"}
    a = VQModel(ddconfig=dd, n_embed=64, embed_dim=3)
    b = VQModel(ddconfig=plain, n_embed=64, embed_dim=3)
    norms = lambda m: {mod.num_groups for mod in m.modules() if isinstance(mod, torch.nn.GroupNorm)}  # noqa: E731
    assert norms(a) == {8} and norms(b) == {32}
    sa, sb = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sa.items()} == {k: v.shape for k, v in sb.items()}
    b.load_state_dict(sa, strict=True)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert not torch.allclose(a.decode(a.encode(x)), b.decode(b.encode(x)))


def test_codebook_search_is_fp32_under_bf16_autocast():
    """Training runs under bf16 autocast; the nearest-code search expands ||z - e||^2 into terms that cancel,
    and in bf16 it picks other codes than the fp32 inference does.  It now runs in fp32 whatever the
    autocast state."""
    from sr_core.nets.vqgan import VectorQuantizer

    torch.manual_seed(0)
    vq = VectorQuantizer(1024, 3)
    with torch.no_grad():
        vq.embedding.weight.copy_(torch.randn(1024, 3) * 0.05 + 2.0)
    z = torch.randn(2, 3, 8, 8) * 0.05 + 2.0
    ref = vq.indices(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        e = vq.embedding.weight  # what the search did before: its matmul in bf16
        old = (flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * (flat @ e.t())).argmin(dim=1)
        new = vq.indices(z)
        zq, _, idx = vq(z)
    assert (old != ref).float().mean() > 0.5  # the bf16 search was mostly wrong on such codes
    assert torch.equal(new, ref) and torch.equal(idx, ref)
    assert torch.equal(zq, vq.embedding(ref).view(2, 8, 8, 3).permute(0, 3, 1, 2))
