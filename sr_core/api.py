"""The one facade: `upscale(image, method_id, settings, seed, progress) -> Result`.

Everything a caller (CLI, app, evaluation, benchmark) needs goes through here, so every method gets
the same treatment: input loading and validation, settings validation against the method's
declared capabilities, device choice, one seeded torch.Generator per request, pixel-space tiling
with Gaussian blending (for methods that declare `tiling_space="pixel"`), padding to the method's
size multiple, colour fix against the bicubic-upsampled input, alpha upscaled separately (MATLAB
bicubic) and restored, and timing.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Optional

import numpy as np
import torch
from PIL import Image

from . import color, imaging, tiling
from .registry import Registry, default_registry
from .types import (COLOR_FIXES, InputError, MethodInfo, ProgressFn, Result, RunContext, Settings, SRError,
                    SRMethod, WeightsUnavailable)

MAX_SEED = 2**31 - 1


def resolve_device(name: str = "auto") -> torch.device:
    if name in ("auto", "", None):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' was asked for, but no CUDA GPU is available here; use --device cpu or auto")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise InputError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def check_settings(info: MethodInfo, settings: Settings) -> Settings:
    """Validate `settings` against `info` and fill the method's defaults (steps, colour fix)."""
    if settings.scale not in info.scales:
        raise InputError(f"{info.id} supports scale {', '.join(map(str, info.scales))}, not {settings.scale}")
    steps = settings.steps
    if info.steps is None:
        steps = None
    else:
        steps = info.steps.default if steps is None else int(steps)
        if not info.steps.min <= steps <= info.steps.max:
            rng = f"{info.steps.min}" if info.steps.fixed else f"{info.steps.min}..{info.steps.max}"
            raise InputError(f"{info.id} takes {rng} steps, not {steps}")
    if not 0.0 <= float(settings.fidelity) <= 1.0:
        raise InputError(f"fidelity w must be in [0, 1], not {settings.fidelity}")
    cf = info.default_color_fix if settings.color_fix in (None, "", "default") else settings.color_fix
    if cf not in COLOR_FIXES:
        raise InputError(f"colour fix must be one of {', '.join(COLOR_FIXES)}, not {cf!r}")
    if settings.tile < 0 or settings.tile_overlap < 0:
        raise InputError("tile size and overlap must be >= 0")
    if settings.tile and settings.tile_overlap >= settings.tile:
        raise InputError(f"tile overlap ({settings.tile_overlap}) must be smaller than the tile ({settings.tile})")
    if not 0 <= int(settings.seed) <= MAX_SEED:
        raise InputError(f"seed must be in 0..{MAX_SEED}, not {settings.seed}")
    return dataclasses.replace(settings, steps=steps, color_fix=cf, seed=int(settings.seed),
                               fidelity=float(settings.fidelity))


def _effective_tile(info: MethodInfo, settings: Settings) -> int:
    return int(settings.tile or info.default_tile or 0)


def apply_color_fix(out: torch.Tensor, lr: torch.Tensor, scale: int, mode: Optional[str],
                    ref: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The colour fix as `run_method` applies it: `out` clamped to [0, 1], then `mode` against `ref` (the
    LR upsampled by MATLAB bicubic; computed when not given).  `sr_core eval --compare-color-fix` uses it to
    measure every colour fix from one run."""
    out = out.float().clamp(0, 1)
    if mode and mode != "none":
        if ref is None:
            ref = imaging.imresize(lr.float(), float(scale))
        out = color.color_fix(out, ref.to(out.device, out.dtype).clamp(0, 1), mode)
    return out


def run_method(method: SRMethod, lr: torch.Tensor, settings: Settings,
               progress: Optional[ProgressFn] = None, ref: Optional[torch.Tensor] = None,
               run_info: Optional[dict] = None) -> torch.Tensor:
    """Run `method` on an LR tensor (1,3,h,w) in [0,1] with validated settings; returns SR on CPU.

    `ref` is the bicubic-upsampled LR used by the colour fix (computed here when not given).  `run_info`, when
    given, receives what the method reports in `RunContext.info` (e.g. OSEDiff's DAPE tags and prompt).
    """
    info = method.info
    device = resolve_device(settings.device)
    gen = torch.Generator(device="cpu").manual_seed(int(settings.seed))
    h, w = int(lr.shape[-2]), int(lr.shape[-1])
    ctx = RunContext(settings=settings, device=device, generator=gen, progress=progress, full_size=(h, w),
                     info=run_info if run_info is not None else {})
    x = lr.to(device)
    s = settings.scale

    def call(t: torch.Tensor, box, index: int, count: int) -> torch.Tensor:
        ctx.tile_box, ctx.tile_index, ctx.tile_count = box, index, count
        y = method.run(t, ctx)
        ctx.report(1.0, f"tile {index + 1}/{count}" if count > 1 else "")
        return y

    try:
        with torch.inference_mode():
            if info.tiling_space == "pixel":
                tile = _effective_tile(info, settings) or max(h, w)
                out = tiling.run_tiled(call, x, scale=s, tile=tile,
                                       overlap=tiling.request_overlap(tile, settings.tile_overlap),
                                       multiple=info.size_multiple, with_box=True)
            else:
                padded, _ = tiling.pad_to_multiple(x, info.size_multiple)
                out = tiling.crop_to(call(padded, (0, 0, h, w), 0, 1), h * s, w * s)
            out = apply_color_fix(out, lr, s, settings.color_fix, ref)
    except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - needs a GPU
        raise SRError(f"{info.id} ran out of GPU memory on a {lr.shape[-1]}x{lr.shape[-2]} input; "
                      f"set a smaller tile size (for example 128) and try again") from e
    except MemoryError as e:
        raise SRError(f"{info.id} ran out of memory on a {lr.shape[-1]}x{lr.shape[-2]} input; "
                      f"set a smaller tile size and try again") from e
    expect = (lr.shape[-2] * s, lr.shape[-1] * s)
    if tuple(out.shape[-2:]) != expect:
        raise SRError(f"{info.id} returned {tuple(out.shape[-2:])}, expected {expect}")
    return out.cpu()


def upscale(image, method_id: str, settings: Optional[Settings] = None, *, seed: Optional[int] = None,
            progress: Optional[ProgressFn] = None, registry: Optional[Registry] = None,
            max_pixels: Optional[int] = None) -> Result:
    """Upscale one image (path, bytes, PIL image or array) with a registered method."""
    reg = registry or default_registry()
    method = reg.get(method_id)
    avail = method.availability()
    if not avail.ok:
        raise WeightsUnavailable(f"{method.info.label} is not available: {avail.reason}")
    settings = settings or Settings(scale=method.info.default_scale)
    if seed is not None:
        settings = dataclasses.replace(settings, seed=int(seed))
    settings = check_settings(method.info, settings)
    limit = max_pixels or method.info.max_input_pixels or imaging.max_input_pixels()
    img = imaging.load_image(image, max_pixels=limit)
    if img.width * img.height > limit:
        raise InputError(f"the image is {img.width}x{img.height} = {img.width * img.height} pixels; "
                         f"the limit is {limit} (set SR_MAX_INPUT_PIXELS to raise it)")
    rgb, alpha = imaging.split_alpha(img)
    t0 = time.perf_counter()
    s = settings.scale
    if progress:
        progress(0.0, f"{method.info.label}: starting")
    bic_u8 = imaging.imresize(imaging.pil_to_uint8(rgb), float(s))
    ref = torch.from_numpy(np.ascontiguousarray(bic_u8)).permute(2, 0, 1)[None].float() / 255.0
    run_info: dict = {}
    out = run_method(method, imaging.pil_to_tensor(rgb), settings, progress, ref=ref, run_info=run_info)
    result_img = imaging.tensor_to_pil(out)
    if alpha is not None:
        result_img = imaging.merge_alpha(result_img, imaging.bicubic_upscale(alpha, s))
    seconds = time.perf_counter() - t0
    if progress:
        progress(1.0, "done")
    info = {"device": str(resolve_device(settings.device)), "input_size": [img.width, img.height],
            "output_size": [result_img.width, result_img.height], "alpha": alpha is not None}
    info.update({k: v for k, v in run_info.items() if k not in info})  # the method's own facts
    return Result(image=result_img, bicubic=Image.fromarray(bic_u8), method_id=method.info.id,
                  settings=settings, seconds=seconds, info=info)
