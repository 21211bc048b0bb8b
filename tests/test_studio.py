"""sr_core.studio: latent interpolation, content fusion and diversity on a tiny deterministic SRDiff bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core import api, studio
from sr_core.methods.baselines import Bicubic
from sr_core.methods.srdiff import SRDiff, write_bundle
from sr_core.nets.init import deterministic_fill_
from sr_core.nets.srdiff_unet import SRDiffModel
from sr_core.registry import Registry
from sr_core.types import InputError, Settings

TINY = {"unet": {"dim": 8, "out_dim": 3, "dim_mults": [1, 2], "cond_dim": 8, "rrdb_num_block": 2, "sr_scale": 4},
        "rrdb": {"in_nc": 3, "out_nc": 3, "nf": 8, "nb": 2, "gc": 4, "scale": 4},
        "diffusion": {"timesteps": 100, "res_rescale": 2.0, "clip_input": True, "default_steps": 4}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    folder = write_bundle(tmp_path_factory.mktemp("srdiff-mini"), deterministic_fill_(SRDiffModel.from_config(TINY),
                                                                                         scale=0.5))
    r = Registry()
    r.add(SRDiff("mini", bundle_dir=folder))
    r.register("bicubic", Bicubic)
    return r


def _img(w=12, h=10, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


def _a(img) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def _single(reg, img, seed, **kw):
    return _a(api.upscale(img, "srdiff-mini", Settings(seed=seed, **kw), registry=reg).image)


@pytest.mark.parametrize("t", [2, 4])
def test_seed_interpolation_ends_reproduce_the_single_seed_runs(reg, t):
    img = _img()
    res = studio.interpolate("srdiff-mini", img, (3, 8), [0.0, 0.5, 1.0], t, registry=reg)
    assert res.sources == "seeds" and res.t == t and res.steps == 4 and len(res.images) == 3
    a, b = _single(reg, img, 3), _single(reg, img, 8)
    assert np.array_equal(_a(res.images[0]), a)
    assert np.array_equal(_a(res.images[2]), b)
    mid = _a(res.images[1])
    assert not np.array_equal(mid, a) and not np.array_equal(mid, b)


def test_seed_interpolation_with_tiles_and_colour_fix_matches_the_facade(reg):
    img = _img(16, 12, seed=1)
    kw = dict(tile=8, tile_overlap=4, color_fix="adain", steps=3)
    res = studio.interpolate("srdiff-mini", img, (5, 6), [0.0, 1.0], 2, settings=Settings(**kw), registry=reg)
    assert np.array_equal(_a(res.images[0]), _single(reg, img, 5, **kw))
    assert np.array_equal(_a(res.images[1]), _single(reg, img, 6, **kw))


def test_reference_interpolation_and_fusion(reg):
    img = _img()
    ref_a = _img(48, 40, seed=11)
    ref_b = _img(24, 20, seed=12)  # another size: resized to the output size
    st = Settings(seed=2)
    res = studio.interpolate("srdiff-mini", img, (ref_a, ref_b), [0.0, 0.25, 1.0], 3, settings=st, registry=reg)
    assert res.sources == "references" and [im.size for im in res.images] == [(48, 40)] * 3
    # the mix is linear in the latent; the ends are the single-reference runs, which fusion with an
    # all-ones / all-zeros mask reproduces
    ones = studio.fuse("srdiff-mini", img, ref_a, ref_b, np.ones((10, 12)), 3, settings=st, registry=reg)
    zeros = studio.fuse("srdiff-mini", img, ref_a, ref_b, torch.zeros(40, 48), 3, settings=st, registry=reg)
    assert np.array_equal(_a(ones.images[0]), _a(res.images[0]))
    assert np.array_equal(_a(zeros.images[0]), _a(res.images[2]))
    assert ones.mask.size == (48, 40) and np.asarray(ones.mask).min() == 255
    # with t = 1 the result stays close to the reference (one denoising step from a lightly noised residual)
    near = studio.interpolate("srdiff-mini", img, (ref_a, ref_b), [0.0], 1, settings=st, registry=reg)
    base = _a(api.upscale(img, "bicubic", registry=reg).image)
    assert np.abs(_a(near.images[0]) - _a(ref_a)).mean() < np.abs(base - _a(ref_a)).mean()


def test_seed_fusion_by_region(reg):
    img = _img()
    a, b = _single(reg, img, 3), _single(reg, img, 8)
    full = studio.fuse("srdiff-mini", img, 3, 8, "left", 4, registry=reg)
    out = _a(full.images[0])
    assert not np.array_equal(out, a) and not np.array_equal(out, b)
    ones = studio.fuse("srdiff-mini", img, 3, 8, Image.new("L", (5, 5), 255), 4, registry=reg)
    assert np.array_equal(_a(ones.images[0]), a)
    # far from the seam, the left half follows source A more than source B
    left = slice(0, 16)
    assert np.abs(out[:, left] - a[:, left]).mean() < np.abs(out[:, left] - b[:, left]).mean()


def test_studio_rejects_bad_input(reg):
    img = _img()
    with pytest.raises(InputError, match="does not support"):
        studio.interpolate("bicubic", img, (1, 2), [0.5], registry=reg)
    with pytest.raises(InputError, match="t "):
        studio.interpolate("srdiff-mini", img, (1, 2), [0.5], 9, registry=reg)
    with pytest.raises(InputError, match="lambda"):
        studio.interpolate("srdiff-mini", img, (1, 2), [1.5], 2, registry=reg)
    with pytest.raises(InputError, match="two seeds or two HR"):
        studio.interpolate("srdiff-mini", img, (1, _img(48, 40)), [0.5], 2, registry=reg)
    with pytest.raises(InputError, match="region"):
        studio.fuse("srdiff-mini", img, 1, 2, "middle", 2, registry=reg)


def test_diversity(reg):
    img = _img()
    imgs, std = studio.diversity(studio.seeded_upscaler("bicubic", registry=reg), img, [1, 2, 3])
    assert len(imgs) == 3 and std.shape == (40, 48) and float(std.max()) == 0.0
    imgs, std = studio.diversity(studio.seeded_upscaler("srdiff-mini", Settings(steps=2), registry=reg), img, [1, 2])
    assert std.shape == (40, 48) and float(std.mean()) > 0
    a, b = (np.asarray(i, dtype=np.float32) for i in imgs)
    assert np.allclose(std, (np.abs(a - b) / 2).mean(axis=-1), atol=1e-4)
    heat = studio.std_heatmap(std)
    assert heat.size == (48, 40) and heat.mode == "RGB"
    with pytest.raises(InputError):
        studio.diversity(studio.seeded_upscaler("bicubic", registry=reg), img, [1])


def test_helpers(tmp_path):
    m = studio.region_mask("centre", 8, 12)
    assert m.shape == (8, 12) and m.sum() == 4 * 6 and m[4, 6] == 1 and m[0, 0] == 0
    assert studio.region_mask("right", 4, 4)[:, 2:].all() and not studio.region_mask("right", 4, 4)[:, :2].any()
    frames = [Image.new("RGB", (6, 4), (i * 60, 0, 0)) for i in range(3)]
    s = studio.strip(frames, gap=2)
    assert s.size == (6 * 3 + 4, 4)
    p = studio.save_animation(frames, tmp_path / "a.png")
    with Image.open(p) as im:
        assert im.format == "PNG" and getattr(im, "n_frames", 1) == 4  # ping-pong: 0 1 2 1
