"""Latent interpolation, content fusion and diversity maps: the image manipulations of the SRDiff paper.

SRDiff (Li et al., Neurocomputing 2022, Sec. 4.6, "latent space interpolation" and "content fusion")
diffuses HR residuals to a step t with q(x_t | x_0), mixes two of them (linearly with a weight lambda,
or by a region), and runs the reverse chain from t conditioned on one LR image; the official code has
`GaussianDiffusion.interpolate` (LeiaLi/SRDiff, `models/diffusion.py`) for the first and nothing for the
second.  Here a source is either a seed (its sampling chain run from x_T down to step t) or an HR
reference image (its residual diffused to step t); `interpolate` gives one result per lambda,
`fuse` mixes by a mask (1 = source A), and the reverse chain from the mix uses the request's noise
(references) or the variance-preserving mix sqrt(1 - w) z_A + sqrt(w) z_B of the two seeds' noise
(seeds), so lambda = 0 / 1 and an all-ones / all-zeros mask reproduce the single-source runs exactly.
Conventions: `t` counts the reverse steps run from the mix (1..N, N = the request's steps), i.e. the
mix happens at schedule index t - 1; the official `interpolate` diffuses to index t and then runs
indices t-1..0, skipping one step.  Everything goes through the facade's `run_method`, so pixel
tiling with Gaussian blending, padding and the colour fix apply as in a normal run.  `diversity`
upscales one image with N seeds (any seeded method) and returns the per-pixel standard deviation.
No gradio here; the code is ours.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import api, imaging
from .registry import Registry, default_registry
from .types import (Availability, InputError, MethodInfo, ProgressFn, RunContext, Settings, SRMethod,
                    WeightsUnavailable)

__all__ = ["StudioResult", "interpolate", "fuse", "diversity", "seeded_upscaler", "region_mask", "REGIONS",
           "std_heatmap", "strip", "save_animation", "supports_studio"]

REGIONS = ("left", "right", "top", "bottom", "centre")
SourceArg = Union[int, Any]  # a seed (int) or an HR reference image (path, bytes, PIL, array)


@dataclass
class StudioResult:
    images: list  # PIL RGB images, one per lambda (interpolate) or one (fuse)
    lambdas: list = field(default_factory=list)
    t: int = 0  # reverse steps run from the mix
    steps: int = 0  # steps of the schedule
    sources: str = ""  # "seeds" or "references"
    seconds: float = 0.0
    settings: Optional[Settings] = None
    mask: Optional[Image.Image] = None  # fuse: the mask used (L, output size; white = source A)


def supports_studio(info: MethodInfo) -> bool:
    return bool(getattr(info, "supports_interpolation", False))


# --------------------------------------------------------------------------------------------
# inputs


def _method(method: Union[str, SRMethod], registry: Optional[Registry]) -> SRMethod:
    m = (registry or default_registry()).get(method) if isinstance(method, str) else method
    if not supports_studio(m.info) or not hasattr(m, "prepare"):
        raise InputError(f"{m.info.label} does not support latent interpolation / fusion "
                         f"(only residual diffusion methods such as SRDiff do)")
    avail: Availability = m.availability()
    if not avail.ok:
        raise WeightsUnavailable(f"{m.info.label} is not available: {avail.reason}")
    return m


def _lr(image) -> tuple[torch.Tensor, np.ndarray]:
    img = imaging.load_image(image)
    rgb, _ = imaging.split_alpha(img)
    u8 = imaging.pil_to_uint8(rgb)
    return imaging.pil_to_tensor(rgb), u8


def _sources(sources: Sequence[SourceArg], hr_hw: tuple[int, int]) -> tuple[str, list]:
    if len(sources) != 2:
        raise InputError(f"two sources are needed (two seeds or two HR references), got {len(sources)}")
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in sources):
        seeds = [int(s) for s in sources]
        for s in seeds:
            if not 0 <= s <= api.MAX_SEED:
                raise InputError(f"seed must be in 0..{api.MAX_SEED}, not {s}")
        return "seeds", seeds
    if any(s is None or isinstance(s, (int, np.integer)) for s in sources):
        raise InputError("give two seeds or two HR reference images, not a mix (or a missing one)")
    refs = []
    for s in sources:
        img = imaging.load_image(s)
        u8 = imaging.pil_to_uint8(imaging.split_alpha(img)[0])
        if u8.shape[:2] != hr_hw:  # any size is accepted: MATLAB bicubic to the output size
            u8 = imaging.imresize(u8, output_shape=hr_hw)
        refs.append(torch.from_numpy(np.ascontiguousarray(u8)).permute(2, 0, 1)[None].float() / 255.0)
    return "references", refs


def _mask(mask, hr_hw: tuple[int, int]) -> torch.Tensor:
    """(1, 1, H, W) float mask in [0, 1] at the output size (1 = source A) from an image/array/region name."""
    h, w = hr_hw
    if isinstance(mask, str):
        return torch.from_numpy(region_mask(mask, h, w))[None, None]
    if isinstance(mask, torch.Tensor):
        m = mask.detach().float().cpu()
        m = m.reshape(1, 1, *m.shape[-2:]) if m.dim() >= 2 else None
        if m is None:
            raise InputError("the mask must be a 2-D map")
    else:
        if isinstance(mask, Image.Image):
            a = np.asarray(mask.convert("L"), dtype=np.float32) / 255.0
        else:
            a = np.asarray(mask)
            if a.ndim == 3:
                a = a[..., -1] if a.shape[-1] in (2, 4) else a.mean(axis=-1)
            a = a.astype(np.float32)
            if a.max(initial=0.0) > 1.0:
                a = a / 255.0
        if a.ndim != 2:
            raise InputError("the mask must be a 2-D map")
        m = torch.from_numpy(np.ascontiguousarray(a))[None, None]
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    return m.clamp(0, 1)


def region_mask(region: str, h: int, w: int) -> np.ndarray:
    """A preset (h, w) float32 mask: 1 on the named half ("left", "right", "top", "bottom") or on the
    central rectangle covering half of each side ("centre")."""
    m = np.zeros((int(h), int(w)), dtype=np.float32)
    if region == "left":
        m[:, : w // 2] = 1
    elif region == "right":
        m[:, w // 2:] = 1
    elif region == "top":
        m[: h // 2] = 1
    elif region == "bottom":
        m[h // 2:] = 1
    elif region in ("centre", "center"):
        m[h // 4: h - h // 4, w // 4: w - w // 4] = 1
    else:
        raise InputError(f"unknown region {region!r}; valid: {', '.join(REGIONS)}")
    return m


def _pad_hr(x: torch.Tensor, margin_hr: int) -> torch.Tensor:
    """Extend a full-image HR map at the bottom/right by `margin_hr` px (as the LR is padded there)."""
    if margin_hr <= 0:
        return x
    mode = "reflect" if min(x.shape[-2:]) > margin_hr else "replicate"
    return F.pad(x, (0, margin_hr, 0, margin_hr), mode=mode)


def _mix(a: torch.Tensor, b: torch.Tensor, w) -> torch.Tensor:
    """(1 - w) a + w b, exactly a at w = 0 and b at w = 1 (w: a float or a map)."""
    if isinstance(w, (int, float)):
        if w == 0:
            return a
        if w == 1:
            return b
    return (1 - w) * a + w * b


def _mix_noise(a: torch.Tensor, b: torch.Tensor, w) -> torch.Tensor:
    """sqrt(1 - w) a + sqrt(w) b: unit variance for independent unit noises; exactly a / b at w = 0 / 1."""
    if isinstance(w, (int, float)):
        if w == 0:
            return a
        if w == 1:
            return b
        return math.sqrt(1 - w) * a + math.sqrt(w) * b
    return torch.sqrt(1 - w) * a + torch.sqrt(w) * b


# --------------------------------------------------------------------------------------------
# the studio run: an SRMethod adapter the facade tiles like any other method


class _StudioRun:
    """Wraps a method with `prepare(lr, ctx)` sessions; `run` mixes the two sources for one tile."""

    def __init__(self, method: SRMethod, kind: str, sources: list, t: int, weights: list, ops_total: int,
                 settings: Settings):
        self.method, self.kind, self.sources, self.t, self.weights = method, kind, sources, t, weights
        self.info = method.info
        self.settings = settings
        self.ops_total = max(ops_total, 1)
        self._ctx_ab: Optional[tuple[RunContext, RunContext]] = None
        self._padded: dict = {}

    def availability(self) -> Availability:
        return self.method.availability()

    def _seed_contexts(self, ctx: RunContext) -> tuple[RunContext, RunContext]:
        if self._ctx_ab is None:  # one context per seed for the whole request: tiles share its noise
            self._ctx_ab = tuple(  # type: ignore[assignment]
                RunContext(settings=dataclasses.replace(ctx.settings, seed=s), device=ctx.device,
                           generator=torch.Generator(device="cpu").manual_seed(s), full_size=ctx.full_size)
                for s in self.sources)
        for c in self._ctx_ab:
            c.tile_box, c.tile_index, c.tile_count = ctx.tile_box, ctx.tile_index, ctx.tile_count
        return self._ctx_ab

    def _crop(self, name: str, full: torch.Tensor, ctx: RunContext, s: int, hw: tuple[int, int]) -> torch.Tensor:
        if name not in self._padded:
            self._padded[name] = _pad_hr(full, max(int(self.info.size_multiple), 1) * s)  # LR padding, at HR
        y0, x0 = (ctx.tile_box or (0, 0, 0, 0))[:2]
        out = self._padded[name][:, :, y0 * s: y0 * s + hw[0], x0 * s: x0 * s + hw[1]]
        if tuple(out.shape[-2:]) != hw:
            raise ValueError(f"studio map {name}: region {hw} at ({y0 * s}, {x0 * s}) exceeds {tuple(full.shape)}")
        return out

    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        sess = self.method.prepare(lr, ctx)
        sess.progress = None
        N, k = sess.steps, self.t - 1
        _, c, H, W = sess.shape
        s = sess.scale
        done = [0]

        def report(msg: str) -> None:
            done[0] += 1
            ctx.report(done[0] / self.ops_total, msg)

        if self.kind == "seeds":
            ca, cb = self._seed_contexts(ctx)
            na, nb = sess.noise(ca), sess.noise(cb)
            xa, xb = na(N), nb(N)
            if k < N - 1:
                xa = sess.reverse(xa, N - 1, k + 1, na)
                report("source A")
                xb = sess.reverse(xb, N - 1, k + 1, nb)
                report("source B")
        else:
            ea = ctx.randn(("studio", "reference_a"), c, H, W, s).to(sess.img_lr_up)
            eb = ctx.randn(("studio", "reference_b"), c, H, W, s).to(sess.img_lr_up)
            ra = sess.residual(self._crop("a", self.sources[0], ctx, s, (H, W)))
            rb = sess.residual(self._crop("b", self.sources[1], ctx, s, (H, W)))
            xa, xb = sess.diffuse(ra, k, ea), sess.diffuse(rb, k, eb)
            na = nb = sess.noise(ctx)
        outs = []
        for j, w in enumerate(self.weights):
            if isinstance(w, torch.Tensor):
                w = self._crop(f"mask{j}", w, ctx, s, (H, W)).to(sess.img_lr_up)
            x = _mix(xa, xb, w)
            noise = na if na is nb else (lambda key, w=w: _mix_noise(na(key), nb(key), w))
            outs.append(sess.image(sess.reverse(x, k, 0, noise)))
            report(f"result {j + 1}/{len(self.weights)}")
        return torch.cat(outs, 0)


def _run_studio(method: SRMethod, lr_image, kind_sources, t: Optional[int], weights: list, settings: Optional[Settings],
                progress: Optional[ProgressFn]) -> tuple[list, Settings, int, int, str]:
    settings = api.check_settings(method.info, settings or Settings(scale=method.info.default_scale))
    lr, lr_u8 = _lr(lr_image)
    s = settings.scale
    hr_hw = (lr.shape[-2] * s, lr.shape[-1] * s)
    kind, sources = _sources(kind_sources, hr_hw)
    N = int(settings.steps or 1)
    t = N if t is None else int(t)
    if not 1 <= t <= N:
        raise InputError(f"t (reverse steps from the mix) must be in 1..{N} for {N} steps, not {t}")
    # each weight is that of source B: lambda, or 1 - mask for a fusion mask (1 = source A)
    weights = [1.0 - _mask(w, hr_hw) if not isinstance(w, (int, float)) else float(w) for w in weights]
    for w in weights:
        if isinstance(w, float) and not 0.0 <= w <= 1.0:
            raise InputError(f"lambda must be in [0, 1], not {w}")
    ops = len(weights) + (2 if kind == "seeds" and t < N else 0)
    runner = _StudioRun(method, kind, sources, t, weights, ops, settings)
    bic = imaging.imresize(lr_u8, float(s))
    ref = torch.from_numpy(np.ascontiguousarray(bic)).permute(2, 0, 1)[None].float() / 255.0
    out = api.run_method(runner, lr, settings, progress, ref=ref)
    return [imaging.tensor_to_pil(o) for o in out], settings, t, N, kind


def interpolate(method: Union[str, SRMethod], lr, sources: Sequence[SourceArg], lambdas: Sequence[float],
                t: Optional[int] = None, *, settings: Optional[Settings] = None, progress: Optional[ProgressFn] = None,
                registry: Optional[Registry] = None) -> StudioResult:
    """Latent interpolation: one SR image of `lr` per lambda, from (1 - lambda) x_t^A + lambda x_t^B.

    `sources`: two seeds, or two HR reference images (resized to the output size if needed).  `t`:
    reverse steps from the mix, 1..N (default N: mix at the start).  `settings` carries steps, the
    request seed (the step noise of the reference mode), tiles and colour fix.
    """
    m = _method(method, registry)
    t0 = time.perf_counter()
    lambdas = [float(x) for x in lambdas]
    if not lambdas:
        raise InputError("give at least one lambda")
    images, st, t, N, kind = _run_studio(m, lr, sources, t, lambdas, settings, progress)
    return StudioResult(images=images, lambdas=lambdas, t=t, steps=N, sources=kind,
                        seconds=time.perf_counter() - t0, settings=st)


def fuse(method: Union[str, SRMethod], lr, source_a: SourceArg, source_b: SourceArg, mask, t: Optional[int] = None, *,
         settings: Optional[Settings] = None, progress: Optional[ProgressFn] = None,
         registry: Optional[Registry] = None) -> StudioResult:
    """Content fusion: mask * x_t^A + (1 - mask) * x_t^B, then the reverse chain from t.

    `mask`: an image/array of any size (resized bilinearly to the output; white/1 = source A), a
    (h, w) tensor, or a region name from `REGIONS`.
    """
    m = _method(method, registry)
    t0 = time.perf_counter()
    if mask is None:
        raise InputError("draw a region or pick one (left, right, top, bottom, centre)")
    images, st, t, N, kind = _run_studio(m, lr, [source_a, source_b], t, [mask], settings, progress)
    h, w = images[0].height, images[0].width
    used = _mask(mask, (h, w))[0, 0].numpy()
    return StudioResult(images=images, t=t, steps=N, sources=kind, seconds=time.perf_counter() - t0, settings=st,
                        mask=Image.fromarray(np.round(used * 255).astype(np.uint8), "L"))


# --------------------------------------------------------------------------------------------
# diversity


def seeded_upscaler(method_id: str, settings: Optional[Settings] = None, registry: Optional[Registry] = None,
                    progress: Optional[ProgressFn] = None) -> Callable[[Any, int], Image.Image]:
    """upscale_fn(image, seed) -> PIL image through `sr_core.api.upscale` (for `diversity`)."""

    def fn(image, seed: int) -> Image.Image:
        st = (settings or Settings()).replace(seed=int(seed))
        return api.upscale(image, method_id, st, progress=progress, registry=registry).image

    return fn


def diversity(upscale_fn: Callable[[Any, int], Any], image, seeds: Sequence[int],
              progress: Optional[ProgressFn] = None) -> tuple[list, np.ndarray]:
    """Upscale `image` once per seed -> (images, std map).

    The std map (H, W, float32, in 0..255 grey levels) is the per-pixel standard deviation across the
    seeds (population std), averaged over the RGB channels: 0 everywhere for a deterministic method.
    `upscale_fn(image, seed)` returns a PIL image or an sr_core `Result`.
    """
    seeds = [int(s) for s in seeds]
    if len(seeds) < 2:
        raise InputError("diversity needs at least two seeds")
    images = []
    for i, s in enumerate(seeds):
        out = upscale_fn(image, s)
        out = getattr(out, "image", out)
        images.append(imaging.split_alpha(out)[0] if isinstance(out, Image.Image) else out)
        if progress:
            progress((i + 1) / len(seeds), f"seed {s} ({i + 1}/{len(seeds)})")
    arrs = np.stack([imaging.pil_to_uint8(im).astype(np.float32) for im in images])
    if len({a.shape for a in arrs}) > 1:
        raise InputError("the seeds gave images of different sizes")
    std = arrs.std(axis=0).mean(axis=-1).astype(np.float32)
    return images, std


def std_heatmap(std: np.ndarray, vmax: Optional[float] = None) -> Image.Image:
    """An RGB heat map of a std map: black (0) -> red -> yellow -> white (vmax; default the 99th
    percentile, at least 1 grey level)."""
    std = np.asarray(std, dtype=np.float32)
    top = float(vmax) if vmax else max(float(np.percentile(std, 99)) if std.size else 0.0, 1.0)
    v = np.clip(std / top, 0, 1)
    rgb = np.stack([np.clip(3 * v, 0, 1), np.clip(3 * v - 1, 0, 1), np.clip(3 * v - 2, 0, 1)], axis=-1)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")


# --------------------------------------------------------------------------------------------
# presentation helpers (PNG only)


def strip(images: Sequence[Image.Image], gap: int = 4, background=(255, 255, 255)) -> Image.Image:
    """The images side by side (same height expected), `gap` px apart."""
    if not images:
        raise InputError("no images")
    h = max(im.height for im in images)
    w = sum(im.width for im in images) + gap * (len(images) - 1)
    out = Image.new("RGB", (w, h), background)
    x = 0
    for im in images:
        out.paste(im.convert("RGB"), (x, 0))
        x += im.width + gap
    return out


def save_animation(images: Sequence[Image.Image], path, duration_ms: int = 400, pingpong: bool = True):
    """An animated PNG (APNG) of the frames, played forth and back when `pingpong`; returns the path."""
    frames = [im.convert("RGB") for im in images]
    if pingpong and len(frames) > 2:
        frames = frames + frames[-2:0:-1]
    frames[0].save(path, format="PNG", save_all=True, append_images=frames[1:], duration=int(duration_ms), loop=0)
    return path
