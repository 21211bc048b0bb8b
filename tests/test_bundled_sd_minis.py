"""The committed mini-sd / osediff-mini / stablesr-mini bundles: files match their SHA256SUMS, the two
methods load through the default registry on the shared mini-sd prior and upscale an image."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sr_core import api
from sr_core.registry import default_registry
from sr_core.types import Settings
from sr_core.weights import ASSETS_WEIGHTS, sha256_file

pytestmark = pytest.mark.usefixtures("one_thread")


def _check_sums(folder):
    lines = (folder / "SHA256SUMS").read_text().splitlines()
    assert lines
    for line in lines:
        h, name = line.split()
        assert sha256_file(folder / name) == h, (folder.name, name)


def test_bundles_are_intact_and_share_the_prior():
    for mid in ("mini-sd", "osediff-mini", "stablesr-mini"):
        _check_sums(ASSETS_WEIGHTS / mid)
        assert (ASSETS_WEIGHTS / mid / "MODEL_CARD.md").is_file()
    unet = json.loads((ASSETS_WEIGHTS / "mini-sd" / "unet" / "config.json").read_text())
    vae = json.loads((ASSETS_WEIGHTS / "mini-sd" / "vae" / "config.json").read_text())
    assert unet["in_channels"] == unet["out_channels"] == vae["latent_channels"] == 16
    assert vae["scaling_factor"] > 0
    # both methods name the prior folder instead of copying it
    assert json.loads((ASSETS_WEIGHTS / "osediff-mini" / "config.json").read_text())["prior_folder"] == "../mini-sd"
    assert not (ASSETS_WEIGHTS / "osediff-mini" / "unet").exists()
    assert json.loads((ASSETS_WEIGHTS / "stablesr-mini" / "config.json").read_text())["prior"] == "../mini-sd"
    assert not (ASSETS_WEIGHTS / "stablesr-mini" / "unet").exists()


def test_osediff_and_stablesr_minis_serve():
    reg = default_registry()
    assert "mini-sd" not in reg.ids()  # a prior, not a method
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 18, 3), dtype=np.uint8))
    assert reg.get("osediff-mini").availability().ok
    a = api.upscale(img, "osediff-mini", Settings(), registry=reg).image
    b = api.upscale(img, "osediff-mini", Settings(), registry=reg).image
    assert a.size == (72, 80) and np.array_equal(np.asarray(a), np.asarray(b))  # one step, deterministic
    assert reg.get("stablesr-mini").availability().ok
    outs = {w: np.asarray(api.upscale(img, "stablesr-mini", Settings(seed=3, steps=4, fidelity=w),
                                      registry=reg).image).astype(np.float32) for w in (0.0, 1.0)}
    assert outs[0.0].shape == (80, 72, 3)
    assert np.abs(outs[0.0] - outs[1.0]).mean() > 0.5  # w changes the image
    again = np.asarray(api.upscale(img, "stablesr-mini", Settings(seed=3, steps=4, fidelity=1.0), registry=reg).image)
    assert np.array_equal(again.astype(np.float32), outs[1.0])  # seeded
