"""The app's Studio tab: interpolation, fusion and diversity handlers with a fake core, and one real run
through `app.Core` with a tiny deterministic SRDiff mini bundle (random weights, few steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import app
import gradio as gr
from app_fakes import FakeCore

from sr_core import api
from sr_core.methods.baselines import Bicubic
from sr_core.methods.srdiff import SRDiff, write_bundle
from sr_core.nets.init import deterministic_fill_
from sr_core.nets.srdiff_unet import SRDiffModel
from sr_core.registry import Registry
from sr_core.types import Settings


def small_image(w=12, h=10, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.fixture
def h():
    return app.Handlers(FakeCore())


@pytest.fixture(scope="module")
def demo():
    return app.build_demo(FakeCore())


def interp(h, image=None, method="sampler", steps=10, t=4, kind=app.STUDIO_SOURCES[0], seed_a=1, seed_b=2,
           ref_a=None, ref_b=None, frames=5, lam=0.5):
    return h.run_interpolate(small_image() if image is None else image, method, steps, t, kind, seed_a, seed_b,
                             ref_a, ref_b, frames, lam)


# ---- Blocks config ---------------------------------------------------------------------------


def test_studio_tab_components_and_events(demo):
    cfg = demo.config
    comps = {c.get("props", {}).get("elem_id"): c for c in cfg["components"] if c.get("props", {}).get("elem_id")}
    for eid in ("studio-method", "studio-steps", "studio-t", "studio-sources", "studio-gallery", "studio-single",
                "studio-editor", "studio-region", "studio-fused", "studio-mask", "div-method", "div-gallery",
                "div-std"):
        assert eid in comps, eid
    # only methods that declare supports_interpolation are offered; diversity lists the seeded ones
    assert [c[1] for c in comps["studio-method"]["props"]["choices"]] == ["sampler"]
    assert [c[1] for c in comps["div-method"]["props"]["choices"]] == ["sampler", "onestep"]
    for eid in ("studio-gallery", "studio-single", "studio-editor", "studio-fused", "studio-mask", "div-gallery",
                "div-std"):
        assert comps[eid]["props"]["format"] == "png", eid
    assert comps["studio-steps"]["props"]["maximum"] == 50 and comps["studio-steps"]["props"]["value"] == 20
    assert comps["studio-t"]["props"]["maximum"] == 20 and comps["studio-t"]["props"]["value"] == 10
    heavy = [f for f in demo.fns.values() if f.name in ("run_interpolate", "run_fuse", "run_diversity")]
    assert len(heavy) == 3 and {f.concurrency_id for f in heavy} == {"sr"}
    public = [d["api_name"] for d in cfg["dependencies"] if d.get("api_visibility") == "public"]
    assert public == ["upscale"]


def test_slider_and_source_updates(h):
    steps, t = h.on_studio_method("sampler")
    assert (steps["minimum"], steps["maximum"], steps["value"]) == (1, 50, 20)
    assert (t["maximum"], t["value"]) == (20, 10)
    assert h.on_studio_steps(6, 10) == gr.update(maximum=6, value=6)
    assert h.on_studio_steps(30, 4) == gr.update(maximum=30, value=4)
    seeds, refs = h.on_studio_sources(app.STUDIO_SOURCES[1])
    assert seeds["visible"] is False and refs["visible"] is True


# ---- handlers with the fake core --------------------------------------------------------------


def test_interpolation_strip_animation_and_single(h):
    gallery, strip_path, anim_path, single, summary = interp(h, frames=5, lam=0.3)
    assert [cap for _, cap in gallery] == ["λ = 0", "λ = 0.25", "λ = 0.5", "λ = 0.75", "λ = 1"]
    name, method_id, sources, lambdas, t, settings = h.core.studio_calls[-1]
    assert (name, method_id, sources, t) == ("interpolate", "sampler", [1, 2], 4)
    assert lambdas == [0.0, 0.25, 0.5, 0.75, 1.0, 0.3]  # the single lambda is run once more
    assert (settings.steps, settings.seed) == (10, 1)
    with Image.open(strip_path) as s:
        assert s.format == "PNG" and s.size == (5 * 48 + 4 * 4, 40)
    with Image.open(anim_path) as a:
        assert a.format == "PNG" and a.n_frames == 8  # ping-pong 0 1 2 3 4 3 2 1
    assert single.size == (48, 40) and "seeds 1 → 2" in summary and "t = 4" in summary
    # a lambda on the strip is not run twice
    interp(h, frames=3, lam=0.5)
    assert h.core.studio_calls[-1][3] == [0.0, 0.5, 1.0]


def test_interpolation_with_references_and_errors(h):
    ref = small_image(48, 40, seed=4)
    interp(h, kind=app.STUDIO_SOURCES[1], ref_a=ref, ref_b=ref)
    assert h.core.studio_calls[-1][2] == [ref, ref]
    with pytest.raises(gr.Error, match="two HR reference"):
        interp(h, kind=app.STUDIO_SOURCES[1], ref_a=ref)
    with pytest.raises(gr.Error, match="does not support the Studio"):
        interp(h, method="nearest")
    with pytest.raises(gr.Error, match="not available"):
        interp(h, method="locked")
    with pytest.raises(gr.Error, match="Upload an image"):
        h.run_interpolate(None, "sampler", 10, 4, app.STUDIO_SOURCES[0], 1, 2, None, None, 5, 0.5)
    with pytest.raises(gr.Error, match="choose a method"):
        interp(h, method=None)


def test_fusion_with_region_and_drawn_mask(h):
    fused, mask, summary = h.run_fuse(small_image(), "sampler", 10, 4, app.STUDIO_SOURCES[0], 3, 4, None, None, None,
                                      "left")
    assert fused.size == (48, 40) and mask.size == (48, 40) and "left region" in summary
    assert h.core.studio_calls[-1][:4] == ("fuse", "sampler", [3, 4], "left")
    layer = Image.new("RGBA", (12, 10), (0, 0, 0, 0))
    layer.paste((255, 48, 48, 255), (0, 0, 6, 10))
    editor = {"background": small_image(), "layers": [layer], "composite": small_image()}
    h.run_fuse(small_image(), "sampler", 10, 4, app.STUDIO_SOURCES[0], 3, 4, None, None, editor, app.DRAWN_REGION)
    drawn = h.core.studio_calls[-1][3]
    assert isinstance(drawn, np.ndarray) and drawn.shape == (10, 12)
    assert drawn[:, :6].min() == 1.0 and drawn[:, 6:].max() == 0.0
    empty = {"background": small_image(), "layers": [Image.new("RGBA", (12, 10))], "composite": None}
    with pytest.raises(gr.Error, match="draw the region"):
        h.run_fuse(small_image(), "sampler", 10, 4, app.STUDIO_SOURCES[0], 3, 4, None, None, empty, app.DRAWN_REGION)
    assert app.Handlers.mask_from_editor(None) is None


def test_diversity_gallery_and_std_map(h):
    gallery, heat, summary = h.run_diversity(small_image(), "sampler", 0, 7, 3)
    assert [cap for _, cap in gallery] == ["seed 7", "seed 8", "seed 9"]
    assert heat.size == (48, 40) and "3 seeds" in summary
    name, method_id, seeds, settings = h.core.studio_calls[-1]
    assert (name, method_id, seeds, settings.steps) == ("diversity", "sampler", [7, 8, 9], None)
    with pytest.raises(gr.Error, match="does not use a seed"):
        h.run_diversity(small_image(), "nearest", 0, 7, 3)


# ---- one real run: app.Core over a tiny SRDiff mini bundle -------------------------------------

TINY = {"unet": {"dim": 8, "out_dim": 3, "dim_mults": [1, 2], "cond_dim": 8, "rrdb_num_block": 2, "sr_scale": 4},
        "rrdb": {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 2, "gc": 4, "scale": 4},
        "diffusion": {"timesteps": 100, "res_rescale": 2.0, "clip_input": True, "default_steps": 3}}


def test_real_mini_run(tmp_path):
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = write_bundle(tmp_path / "srdiff-mini", deterministic_fill_(SRDiffModel.from_config(TINY), scale=0.5))
        reg = Registry()
        reg.register("bicubic", Bicubic)
        reg.add(SRDiff("mini", bundle_dir=folder))
        d = app.build_demo(app.Core(reg))
        h = d.handlers
        assert [c[1] for c in h.studio_method_choices()] == ["srdiff-mini"]
        img = small_image()
        gallery, strip_path, anim_path, single, summary = h.run_interpolate(
            img, "srdiff-mini", 3, 2, app.STUDIO_SOURCES[0], 5, 6, None, None, 3, 1.0)
        a = api.upscale(img, "srdiff-mini", Settings(seed=5, steps=3), registry=reg).image
        b = api.upscale(img, "srdiff-mini", Settings(seed=6, steps=3), registry=reg).image
        assert np.array_equal(np.asarray(gallery[0][0]), np.asarray(a))
        assert np.array_equal(np.asarray(gallery[-1][0]), np.asarray(b))
        assert np.array_equal(np.asarray(single), np.asarray(b))
        assert Path(strip_path).is_file() and Path(anim_path).is_file()
        fused, mask, _ = h.run_fuse(img, "srdiff-mini", 3, 2, app.STUDIO_SOURCES[0], 5, 6, None, None, None, "top")
        assert fused.size == (48, 40) and np.asarray(mask)[:20].min() == 255 and np.asarray(mask)[20:].max() == 0
        gal, heat, summary = h.run_diversity(img, "srdiff-mini", 2, 1, 2)
        assert len(gal) == 2 and heat.size == (48, 40) and "mean" in summary
        with pytest.raises(gr.Error, match="does not use a seed"):
            h.run_diversity(img, "bicubic", 0, 1, 2)
    finally:
        torch.set_num_threads(old)
