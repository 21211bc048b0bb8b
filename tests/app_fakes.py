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
                     family="diffusion", supports_interpolation=True)
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
        self.studio_calls: list[tuple] = []
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

    # ---- Studio (same interface as app.Core; results are nearest-neighbour upscales tinted by the mix)

    def _studio_check(self, method_id, settings, need_studio=True):
        info, avail = self.method(method_id)
        if not avail.ok:
            raise WeightsUnavailable(f"{info.label} is not available: {avail.reason}")
        if need_studio and not info.supports_interpolation:
            raise InputError(f"{info.label} does not support latent interpolation / fusion")
        if self.fail_with is not None:
            raise self.fail_with
        return info

    @staticmethod
    def _tinted(image, scale, w):
        img = (image if isinstance(image, Image.Image) else Image.open(image)).convert("RGB")
        out = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
        return Image.blend(out, Image.new("RGB", out.size, (0, 0, 255)), 0.5 * float(w))

    def interpolate(self, image, method_id, sources, lambdas, t, settings, progress=None):
        from sr_core.studio import StudioResult

        self._studio_check(method_id, settings)
        self.studio_calls.append(("interpolate", method_id, list(sources), list(lambdas), t, settings))
        if progress:
            progress(0.5, "half")
        kind = "seeds" if all(isinstance(x, int) for x in sources) else "references"
        return StudioResult(images=[self._tinted(image, settings.scale, lam) for lam in lambdas], lambdas=list(lambdas),
                            t=t, steps=settings.steps or 20, sources=kind, seconds=0.01, settings=settings)

    def fuse(self, image, method_id, source_a, source_b, mask, t, settings, progress=None):
        from sr_core.studio import StudioResult, region_mask

        self._studio_check(method_id, settings)
        self.studio_calls.append(("fuse", method_id, [source_a, source_b], mask, t, settings))
        out = self._tinted(image, settings.scale, 0.0)
        m = region_mask(mask, out.height, out.width) if isinstance(mask, str) else None
        mask_img = Image.fromarray((m * 255).astype("uint8"), "L") if m is not None else Image.new("L", out.size, 255)
        kind = "seeds" if isinstance(source_a, int) else "references"
        return StudioResult(images=[out], t=t, steps=settings.steps or 20, sources=kind, seconds=0.01,
                            settings=settings, mask=mask_img)

    def diversity(self, image, method_id, seeds, settings, progress=None):
        import numpy as np

        info = self._studio_check(method_id, settings, need_studio=False)
        self.studio_calls.append(("diversity", method_id, list(seeds), settings))
        images = [self._tinted(image, info.default_scale, (s % 3) / 3) for s in seeds]
        arr = np.stack([np.asarray(i, dtype=np.float32) for i in images])
        std = arr.std(axis=0).mean(axis=-1)
        return images, std, Image.fromarray(np.clip(std, 0, 255).astype("uint8")).convert("RGB")


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


