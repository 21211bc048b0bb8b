"""Tests of sr_core.tiling: tile planning, padding, exact reconstruction and seam-free blending."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sr_core.tiling import (
    blend_tiles,
    crop_to,
    gaussian_weights,
    pad_to_multiple,
    plan_tiles,
    run_tiled,
)

SIZES = [(1, 1), (7, 13), (31, 64), (100, 37), (257, 129)]
TILE_OVERLAP = [(0, 0), (8, 2), (16, 4), (32, 8), (48, 16), (64, 32), (512, 32)]


def _nearest(scale):
    if scale == 1:
        return lambda t: t
    return lambda t: F.interpolate(t, scale_factor=scale, mode="nearest")


def _img(h, w, c=3, n=1, seed=0):
    g = torch.Generator().manual_seed(seed + 31 * h + w)
    return torch.rand(n, c, h, w, generator=g)


# ------------------------------------------------------------------------------------ plan


@pytest.mark.parametrize("h,w", SIZES + [(64, 64), (65, 63), (2, 300)])
@pytest.mark.parametrize("tile,overlap", TILE_OVERLAP + [(5, 4), (1, 0), (3, 1)])
def test_plan_covers_exactly_within_bounds(h, w, tile, overlap):
    boxes = plan_tiles(h, w, tile, overlap)
    cover = torch.zeros(h, w, dtype=torch.int32)
    th = min(tile, h) if tile > 0 else h
    tw = min(tile, w) if tile > 0 else w
    for y0, x0, y1, x1 in boxes:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (th, tw)  # all tiles full size: no slivers
        cover[y0:y1, x0:x1] += 1
    assert int(cover.min()) >= 1
    assert len(set(boxes)) == len(boxes)


@pytest.mark.parametrize("n,tile,overlap", [(100, 32, 8), (257, 64, 16), (1000, 96, 32), (65, 64, 0)])
def test_plan_overlap_at_least_requested_and_stride_bounded(n, tile, overlap):
    boxes = plan_tiles(8, n, tile, overlap)
    xs = sorted({b[1] for b in boxes})
    assert xs[0] == 0 and xs[-1] == n - tile
    for a, b in zip(xs, xs[1:]):
        assert 0 < b - a <= tile - overlap  # overlap >= requested, no duplicate tiles
    # no more tiles than "stride tile-overlap, last tile shifted back" would use
    assert len(xs) == -(-(n - tile) // (tile - overlap)) + 1


def test_plan_small_image_and_no_tiling_are_one_tile():
    assert plan_tiles(10, 20, 64, 16) == [(0, 0, 10, 20)]
    assert plan_tiles(300, 200, 0, 32) == [(0, 0, 300, 200)]
    assert plan_tiles(300, 200, -1, 32) == [(0, 0, 300, 200)]
    # one axis tiled, the other not
    boxes = plan_tiles(10, 100, 32, 8)
    assert all(b[0] == 0 and b[2] == 10 for b in boxes) and len(boxes) > 1


@pytest.mark.parametrize("tile,overlap", [(32, 32), (32, 40), (8, -1)])
def test_plan_bad_overlap(tile, overlap):
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(100, 100, tile, overlap)


def test_plan_empty_image():
    with pytest.raises(ValueError):
        plan_tiles(0, 10, 8, 2)


# ------------------------------------------------------------------------------------ padding / weights


@pytest.mark.parametrize("h,w,m", [(1, 1, 8), (7, 13, 8), (31, 64, 8), (5, 9, 4), (16, 16, 8), (1, 20, 8), (3, 3, 64)])
def test_pad_to_multiple_and_crop(h, w, m):
    x = _img(h, w)
    xp, (oh, ow) = pad_to_multiple(x, m)
    assert (oh, ow) == (h, w)
    assert xp.shape[-2] % m == 0 and xp.shape[-1] % m == 0
    assert xp.shape[-2] - h < m and xp.shape[-1] - w < m
    assert torch.equal(crop_to(xp, oh, ow), x)


def test_pad_reflect_values_and_replicate_fallback():
    x = torch.arange(5.0).view(1, 1, 1, 5)  # height 1: cannot reflect, width 5 can
    xp, _ = pad_to_multiple(x, 8)
    assert xp.shape[-2:] == (8, 8)
    assert xp[0, 0, 0].tolist() == [0, 1, 2, 3, 4, 3, 2, 1]  # reflect along width
    assert torch.equal(xp[0, 0, 7], xp[0, 0, 0])  # replicate along height
    one, _ = pad_to_multiple(torch.full((1, 3, 1, 1), 0.5), 8)
    assert one.shape[-2:] == (8, 8) and torch.all(one == 0.5)
    same, _ = pad_to_multiple(x, 1)
    assert same is x


@pytest.mark.parametrize("th,tw", [(1, 1), (2, 2), (7, 13), (64, 64), (256, 96)])
def test_gaussian_weights_positive_peak_at_centre(th, tw):
    wts = gaussian_weights(th, tw, dtype=torch.float32)
    assert wts.shape == (th, tw) and wts.dtype == torch.float32
    assert float(wts.min()) > 0
    assert float(wts.max()) == pytest.approx(1.0)
    cy, cx = (th - 1) // 2, (tw - 1) // 2
    assert float(wts[cy, cx]) == pytest.approx(float(wts.max()))
    assert torch.allclose(wts, wts.flip(0)) and torch.allclose(wts, wts.flip(1))
    if th > 2:
        assert float(wts[0, cx]) < float(wts[cy, cx])
    half = gaussian_weights(th, tw, dtype=torch.float16)
    assert half.dtype == torch.float16 and float(half.min()) > 0


# ------------------------------------------------------------------------------------ run_tiled


@pytest.mark.parametrize("scale", [1, 2, 4])
@pytest.mark.parametrize("h,w", SIZES)
def test_run_tiled_identity_is_exact(h, w, scale):
    x = _img(h, w)
    want = _nearest(scale)(x)
    for (tile, overlap), multiple, blend in itertools.product(TILE_OVERLAP, (1, 8), ("gaussian", "uniform")):
        if scale == 4 and h * w > 5000 and tile < 16:
            continue  # many tiles at 4x: covered by the smaller sizes, keeps the test fast
        y = run_tiled(_nearest(scale), x, scale=scale, tile=tile, overlap=overlap, multiple=multiple, blend=blend)
        assert y.shape == want.shape, (tile, overlap, multiple, blend)
        err = float((y - want).abs().max())
        assert err < 1e-6, (h, w, scale, tile, overlap, multiple, blend, err)


def test_run_tiled_batched_and_channel_changing_fn():
    x = _img(40, 50, c=3, n=2)

    def fn(t):  # 3 -> 1 channel, x2
        return F.interpolate(t.mean(dim=1, keepdim=True), scale_factor=2, mode="nearest")

    y = run_tiled(fn, x, scale=2, tile=16, overlap=4)
    assert y.shape == (2, 1, 80, 100)
    assert float((y - fn(x)).abs().max()) < 1e-6


def test_run_tiled_tiles_are_padded_to_multiple():
    seen = []

    def fn(t):
        seen.append(tuple(t.shape[-2:]))
        assert t.shape[-2] % 8 == 0 and t.shape[-1] % 8 == 0
        return F.interpolate(t, scale_factor=2, mode="nearest")

    x = _img(37, 29)
    y = run_tiled(fn, x, scale=2, tile=13, overlap=3, multiple=8)
    assert len(seen) == len(plan_tiles(37, 29, 13, 3)) and seen[0] == (16, 16)
    assert float((y - F.interpolate(x, scale_factor=2, mode="nearest")).abs().max()) < 1e-6


@pytest.mark.parametrize("h,w,tile", [(32, 32, 32), (20, 30, 64), (50, 50, 0)])
def test_run_tiled_single_call_when_image_fits(h, w, tile):
    calls = []

    def fn(t):
        calls.append(tuple(t.shape))
        return _nearest(2)(t)

    x = _img(h, w)
    y = run_tiled(fn, x, scale=2, tile=tile, overlap=8 if tile else 0, multiple=8)
    assert len(calls) == 1
    assert calls[0][-2] == -(-h // 8) * 8 and calls[0][-1] == -(-w // 8) * 8  # whole padded image
    assert torch.equal(y, _nearest(2)(x))


def test_run_tiled_progress_increasing_to_one():
    events = []
    run_tiled(lambda t: t, _img(50, 70), scale=1, tile=16, overlap=4,
              progress=lambda f, m: events.append((f, m)))
    fracs = [f for f, _ in events]
    assert len(fracs) == len(plan_tiles(50, 70, 16, 4))
    assert all(b > a for a, b in zip(fracs, fracs[1:]))
    assert 0 < fracs[0] and fracs[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in events)
    single = []
    run_tiled(lambda t: t, _img(5, 5), scale=1, tile=16, overlap=4, progress=lambda f, m: single.append(f))
    assert single == [1.0]


def test_run_tiled_output_dtype_follows_fn():
    x = _img(30, 40)
    y = run_tiled(lambda t: t.to(torch.float64) * 2, x, scale=1, tile=16, overlap=4)
    assert y.dtype == torch.float64 and torch.allclose(y, x.double() * 2)
    yh = run_tiled(lambda t: t.half(), x, scale=1, tile=16, overlap=4)
    assert yh.dtype == torch.float16
    assert float((yh.float() - x).abs().max()) < 1e-3


def test_run_tiled_rejects_wrong_output_size_and_bad_args():
    x = _img(30, 40)
    with pytest.raises(ValueError, match="scale"):
        run_tiled(lambda t: t, x, scale=2, tile=16, overlap=4)
    with pytest.raises(ValueError, match="blend"):
        run_tiled(lambda t: t, x, scale=1, tile=16, overlap=4, blend="median")
    with pytest.raises(ValueError, match="overlap"):
        run_tiled(lambda t: t, x, scale=1, tile=16, overlap=16)


def _step_profile(blend, scale=2):
    """Row profile of a run where tile k adds the constant k (tiles only along the width)."""
    counter = [0]

    def fn(t):
        counter[0] += 1
        return _nearest(scale)(t) + float(counter[0])

    x = torch.zeros(1, 1, 8, 160)
    y = run_tiled(fn, x, scale=scale, tile=64, overlap=16, blend=blend)
    assert counter[0] == len(plan_tiles(8, 160, 64, 16)) == 3
    return y[0, 0, 4]


def test_gaussian_blend_is_smooth_uniform_has_steps():
    g = _step_profile("gaussian")
    u = _step_profile("uniform")
    # constants differ by 1 between neighbouring tiles; uniform averaging jumps by 0.5 at each
    # overlap edge, the Gaussian window cross-fades over several pixels
    u_jump = float((u[1:] - u[:-1]).abs().max())
    g_jump = float((g[1:] - g[:-1]).abs().max())
    assert u_jump == pytest.approx(0.5, abs=1e-5)
    assert g_jump < 0.15
    # both go from the first tile's value to the last one's monotonically
    assert float(g[0]) == pytest.approx(1.0, abs=1e-3) and float(g[-1]) == pytest.approx(3.0, abs=1e-3)
    assert bool(torch.all(g[1:] - g[:-1] >= -1e-6))


# ------------------------------------------------------------------------------------ blend_tiles


@pytest.mark.parametrize("h,w", [(1, 1), (7, 13), (31, 64), (100, 37), (64, 64)])
@pytest.mark.parametrize("tile,overlap", [(0, 0), (8, 2), (16, 8), (32, 16), (64, 32)])
def test_blend_tiles_identity(h, w, tile, overlap):
    z = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(h * w))
    y = blend_tiles(lambda t: t, z, tile=tile, overlap=overlap)
    assert y.shape == z.shape
    assert float((y - z).abs().max()) < 1e-5 * max(1.0, float(z.abs().max()))


def test_blend_tiles_single_call_and_box_argument():
    z = torch.randn(1, 4, 40, 50)
    calls = []
    out = blend_tiles(lambda t: calls.append(t.shape) or t * 2, z, tile=64, overlap=16)
    assert len(calls) == 1 and torch.equal(out, z * 2)

    cond = torch.randn(1, 4, 40, 50)
    boxes = []

    def fn(t, box):  # e.g. a denoiser that needs the matching crop of a condition latent
        y0, x0, y1, x1 = box
        boxes.append(box)
        return t + cond[:, :, y0:y1, x0:x1]

    out = blend_tiles(fn, z, tile=16, overlap=8, with_box=True)
    assert boxes == plan_tiles(40, 50, 16, 8)
    assert float((out - (z + cond)).abs().max()) < 1e-5


def test_blend_tiles_rejects_resizing_fn():
    z = torch.randn(1, 4, 40, 50)
    with pytest.raises(ValueError, match="blend_tiles"):
        blend_tiles(lambda t: F.interpolate(t, scale_factor=2), z, tile=16, overlap=4)


def test_blend_tiles_as_sampler_step_is_seam_free():
    # a per-tile offset (like tile-dependent denoiser error) is cross-faded, not stepped
    z = torch.zeros(1, 1, 8, 160)
    counter = [0]

    def fn(t):
        counter[0] += 1
        return t + float(counter[0])

    y = blend_tiles(fn, z, tile=64, overlap=32)[0, 0, 4]
    assert float((y[1:] - y[:-1]).abs().max()) < 0.15
