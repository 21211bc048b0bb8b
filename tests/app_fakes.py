"""Fakes for the app tests: a fake core with the `app.Core` interface, and a toy sampler method.

`FakeCore` never touches sr_core's facade: it upscales with nearest neighbour, records every call
and declares three methods (a baseline, a sampler with every capability, an unavailable one), so
the UI's capability-driven controls can be checked without any network or weights.  `ToySampler`
is an `SRMethod` for the real `app.Core` / facade (nearest neighbour plus nothing random), with
steps, seed, fidelity and pixel tiling declared, recording the settings it was run with.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from sr_core.types import (Availability, InputError, MethodInfo, Result, RunContext, Settings, StepsSpec,
                           WeightsUnavailable)

BASELINE = MethodInfo(id="nearest", label="Nearest (fake)", description="Nearest-neighbour test method.",
                      scales=(2, 4), default_scale=4)
SAMPLER = MethodInfo(id="sampler", label="Sampler (fake)", description="Fake diffusion sampler.",
                     scales=(4,), default_scale=4, steps=StepsSpec(1, 50, 20), supports_fidelity=True,
                     uses_seed=True, tiling_space="pixel", default_tile=64, default_color_fix="adain",
                     family="diffusion")
FIXED = MethodInfo(id="onestep", label="One-step (fake)", description="Fixed one step.", scales=(2, 4),
                   steps=StepsSpec(1, 1, 1), uses_seed=True)
LOCKED = MethodInfo(id="locked", label="Locked (fake)", description="Needs weights.", scales=(4,),
                    steps=StepsSpec(10, 200, 50), family="diffusion")
LOCKED_REASON = "weights missing: put locked.safetensors into assets/weights/"

PRESETS = {
    "sampler": {"fast": {"steps": 4, "color_fix": "wavelet"},
                "fidelity": {"fidelity": 1.0, "tile": 128, "seed": 7}},
}


class FakeCore:
    """Same interface as `app.Core`; nearest-neighbour upscaling; records calls."""

    def __init__(self, fail_with: Exception | None = None) -> None:
        self._methods = [(BASELINE, Availability(True)), (SAMPLER, Availability(True)), (FIXED, Availability(True)),
                         (LOCKED, Availability(False, LOCKED_REASON))]
        self.calls: list[tuple[str, Settings]] = []
        self.progress_seen: list[float] = []
        self.fail_with = fail_with

    def methods(self):
        return list(self._methods)

    def method(self, method_id):
        for info, avail in self._methods:
            if info.id == method_id:
                return info, avail
        raise InputError(f"unknown method {method_id!r}; valid ids: {', '.join(i.id for i, _ in self._methods)}")

    def presets(self, method_id):
        self.method(method_id)
        return {k: dict(v) for k, v in PRESETS.get(method_id, {}).items()}

    def upscale(self, image, method_id, settings, progress=None):
        info, avail = self.method(method_id)
        if not avail.ok:
            raise WeightsUnavailable(f"{info.label} is not available: {avail.reason}")
        if settings.scale not in info.scales:
            raise InputError(f"{method_id} supports scale {info.scales}, not {settings.scale}")
        self.calls.append((method_id, settings))
        if self.fail_with is not None:
            raise self.fail_with
        if progress:
            progress(0.5, "half")
            self.progress_seen.append(0.5)
        img = image if isinstance(image, Image.Image) else Image.open(image)
        t0 = time.perf_counter()
        size = (img.width * settings.scale, img.height * settings.scale)
        out = img.resize(size, Image.NEAREST)
        bic = img.convert("RGB").resize(size, Image.BICUBIC)
        return Result(image=out, bicubic=bic, method_id=method_id, settings=settings,
                      seconds=time.perf_counter() - t0, info={"output_size": list(size)})

    def metrics(self, sr, hr, lr, scale):
        if hr.size != (lr.width * scale, lr.height * scale):
            raise InputError(f"the HR reference is {hr.width}x{hr.height}, expected {lr.width * scale}x{lr.height * scale}")
        return {"psnr_y": 30.0, "ssim_y": 0.9, "lr_psnr": 45.0}

    def save_png(self, image, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG")
        return Path(path)


class ToySampler:
    """An SRMethod with every UI capability, for the real facade: nearest-neighbour upscaling."""

    info = MethodInfo(id="toy", label="Toy sampler", description="Nearest neighbour dressed up as a sampler.",
                      scales=(2, 4), default_scale=4, steps=StepsSpec(1, 50, 20), supports_fidelity=True,
                      uses_seed=True, tiling_space="pixel", default_tile=0, default_color_fix="none",
                      family="diffusion")

    def __init__(self) -> None:
        self.calls: list[Settings] = []

    def availability(self) -> Availability:
        return Availability(True)

    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        self.calls.append(ctx.settings)
        return F.interpolate(lr, scale_factor=ctx.settings.scale, mode="nearest")


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


