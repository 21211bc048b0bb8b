"""The facade: settings validation, tiling, seed, colour fix, alpha, errors."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core import api, imaging
from sr_core.registry import Registry, default_registry
from sr_core.types import (Availability, InputError, MethodInfo, RunContext, Settings, StepsSpec, WeightsUnavailable)


class Fake:
    """Nearest-neighbour x2/x4 plus seeded noise; records the tiles it saw."""

    def __init__(self, tiling="pixel", ok=True, multiple=1, default_tile=0):
        self.info = MethodInfo(id="fake", label="Fake", description="test", scales=(2, 4), uses_seed=True,
                               steps=StepsSpec(1, 10, 5), supports_fidelity=True, tiling_space=tiling,
                               size_multiple=multiple, default_tile=default_tile, default_color_fix="none")
        self.ok, self.calls = ok, []

    def availability(self):
        return Availability(self.ok, "" if self.ok else "weights missing: put x.pth in SR_WEIGHTS_DIR")

    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        self.calls.append((tuple(lr.shape), ctx.settings.steps))
        assert lr.shape[-1] % self.info.size_multiple == 0 and lr.shape[-2] % self.info.size_multiple == 0
        out = torch.nn.functional.interpolate(lr, scale_factor=ctx.settings.scale, mode="nearest")
        noise = torch.rand(1, generator=ctx.generator).item() * 0  # consumes randomness, deterministic output
        return out + noise


def _reg(m):
    r = Registry()
    r.add(m)
    return r


def _img(w=37, h=23, mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 4 if mode == "RGBA" else 3), dtype=np.uint8)
    return Image.fromarray(a, mode)


def test_bicubic_upscale_matches_imresize():
    img = _img()
    res = api.upscale(img, "bicubic", Settings(scale=4))
    expect = imaging.imresize(np.asarray(img), 4.0)
    assert res.image.size == (148, 92) and np.array_equal(np.asarray(res.image), expect)
    assert np.array_equal(np.asarray(res.bicubic), expect)
    assert res.seconds >= 0 and res.settings.scale == 4 and res.method_id == "bicubic"


def test_lanczos_scale_2_and_bad_scale():
    assert api.upscale(_img(), "lanczos", Settings(scale=2)).image.size == (74, 46)
    with pytest.raises(InputError, match="supports scale"):
        api.upscale(_img(), "lanczos", Settings(scale=5))


def test_alpha_is_kept_and_upscaled():
    res = api.upscale(_img(mode="RGBA"), "bicubic", Settings(scale=2))
    assert res.image.mode == "RGBA" and res.image.size == (74, 46) and res.info["alpha"]


@pytest.mark.parametrize("size", [(5, 3), (64, 64), (97, 41)])
def test_pixel_tiling_is_exact_for_nearest(size):
    m = Fake(multiple=8)
    img = _img(*size)
    whole = api.upscale(img, "fake", Settings(scale=4, tile=0), registry=_reg(m))
    tiled = api.upscale(img, "fake", Settings(scale=4, tile=32, tile_overlap=8), registry=_reg(m))
    assert np.array_equal(np.asarray(whole.image), np.asarray(tiled.image))
    ref = np.asarray(img).repeat(4, 0).repeat(4, 1)
    assert np.array_equal(np.asarray(tiled.image), ref)


def test_pixel_tiles_overlap_at_most_half_the_tile():
    """A user tile just above the default overlap (40 px vs 32) would step 8 px; the request's overlap is
    capped at half the tile, so a photo costs the calls of a 20-px overlap, with the same (exact) result."""
    from sr_core import tiling

    m = Fake()
    img = _img(100, 100)
    res = api.upscale(img, "fake", Settings(scale=2, tile=40, tile_overlap=32), registry=_reg(m))
    assert len(m.calls) == len(tiling.plan_tiles(100, 100, 40, 20)) == 16  # at overlap 32 (stride 8): 81
    assert np.array_equal(np.asarray(res.image), np.asarray(img).repeat(2, 0).repeat(2, 1))
    assert [tiling.request_overlap(t, o) for t, o in [(40, 32), (40, 8), (16, 15), (1, 5), (0, 4), (64, 32)]] == \
        [20, 8, 8, 0, 0, 32]


def test_settings_validation_and_defaults():
    m = Fake()
    info = m.info
    s = api.check_settings(info, Settings(scale=2))
    assert s.steps == 5 and s.color_fix == "none"
    for bad, msg in [(Settings(steps=11), "steps"), (Settings(fidelity=1.5), "fidelity"),
                     (Settings(color_fix="sepia"), "colour fix"), (Settings(tile=16, tile_overlap=16), "overlap"),
                     (Settings(seed=-1), "seed"), (Settings(tile=-1), "tile")]:
        with pytest.raises(InputError, match=msg):
            api.check_settings(info, bad)
    # steps are dropped for methods without a sampler
    assert api.check_settings(default_registry().get("bicubic").info, Settings(steps=7)).steps is None


def test_unavailable_method_and_bad_inputs(tmp_path):
    with pytest.raises(WeightsUnavailable, match="SR_WEIGHTS_DIR"):
        api.upscale(_img(), "fake", Settings(scale=2), registry=_reg(Fake(ok=False)))
    with pytest.raises(InputError):
        api.upscale(b"not an image at all", "bicubic")
    with pytest.raises(InputError, match="limit"):
        api.upscale(_img(64, 64), "bicubic", max_pixels=1000)
    with pytest.raises(InputError, match="unknown method"):
        api.upscale(_img(), "does-not-exist")
    with pytest.raises(InputError, match="device"):
        api.upscale(_img(), "bicubic", Settings(device="tpu"))


def test_seed_and_colour_fix_paths():
    m = Fake(tiling="none")
    r1 = api.upscale(_img(), "fake", Settings(scale=2, color_fix="adain"), seed=7, registry=_reg(m))
    assert r1.settings.seed == 7 and r1.settings.color_fix == "adain"
    r2 = api.upscale(_img(), "fake", Settings(scale=2, color_fix="wavelet"), seed=7, registry=_reg(m))
    assert r2.image.size == r1.image.size


def test_progress_reaches_one():
    seen = []
    api.upscale(_img(70, 70), "fake", Settings(scale=2, tile=32, tile_overlap=8), registry=_reg(Fake()),
                progress=lambda f, msg: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)


def test_png_bytes_input_roundtrip():
    buf = io.BytesIO()
    _img().save(buf, format="PNG")
    assert api.upscale(buf.getvalue(), "bicubic", Settings(scale=2)).image.size == (74, 46)


class NoisyFake(Fake):
    """Nearest upscaling plus position-dependent noise from ctx.randn (per LR pixel)."""

    def run(self, lr, ctx):
        n = ctx.randn(("x_T",), 3, lr.shape[-2], lr.shape[-1])
        out = torch.nn.functional.interpolate(lr * 0.5 + 0.25 + 0.01 * n, scale_factor=ctx.settings.scale,
                                              mode="nearest")
        ctx.report(0.5, "half")
        return out


def test_tiles_share_one_noise_field():
    """Noise is cut from one field per request: tiled == untiled, and the seed matters."""
    img = _img(70, 45)
    m = NoisyFake(multiple=8)
    whole = np.asarray(api.upscale(img, "fake", Settings(scale=2, tile=0), seed=3, registry=_reg(m)).image)
    tiled = np.asarray(api.upscale(img, "fake", Settings(scale=2, tile=32, tile_overlap=8), seed=3,
                                   registry=_reg(m)).image)
    other = np.asarray(api.upscale(img, "fake", Settings(scale=2, tile=0), seed=4, registry=_reg(m)).image)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1
    assert (whole != other).any()


def test_progress_is_mapped_per_tile():
    seen = []
    api.upscale(_img(70, 70), "fake", Settings(scale=2, tile=32, tile_overlap=8), registry=_reg(NoisyFake()),
                progress=lambda f, msg: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) > 6
