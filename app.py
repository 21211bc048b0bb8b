"""Gradio web app of the super-resolution toolkit: a thin `gr.Blocks` UI over `sr_core.api.upscale`.

`build_demo(core)` builds the page from a *core* object (`Core` below wraps sr_core: the method
registry with each method's availability, presets, the upscale facade, benchmark metrics, PNG
writing); tests pass a fake core with the same methods.  The controls a method gets (steps, seed,
fidelity w, tiles, colour fix, prompt) follow its declared `MethodInfo` capabilities.  The event
handlers live on `Handlers`, are plain typed methods that call one core function each and turn
every failure into a `gr.Error`, so tests call them directly.  Results go to the native
`gr.ImageSlider` as (MATLAB-bicubic input, result), always as PNG.  On Hugging Face ZeroGPU
(`import spaces` works) the GPU work is wrapped with `spaces.GPU`; elsewhere nothing changes.
A named endpoint `/upscale` serves gradio_client callers and returns the result PNG.  The Studio tab
(`sr_core.studio`) offers SRDiff's latent interpolation and content fusion for the methods that declare
`supports_interpolation`, and a diversity view (N seeds -> gallery + per-pixel std map) for any seeded one.
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

try:  # ZeroGPU: `spaces` must be imported before anything initialises CUDA.
    import spaces  # type: ignore[import-not-found]
except ImportError:
    spaces = None

import argparse
import dataclasses
import functools
import logging
import re
import secrets
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import gradio as gr
import numpy as np
from PIL import Image

from sr_core.api import MAX_SEED
from sr_core.registry import Registry, default_registry
from sr_core.types import COLOR_FIXES, Availability, InputError, MethodInfo, Result, Settings, SRError

log = logging.getLogger("sr_app")

ROOT = Path(__file__).resolve().parent
EXAMPLES_DIR = ROOT / "assets" / "examples"
OUT_DIR = Path(tempfile.gettempdir()) / "sr_app_results"
OUT_MAX_AGE_S = 3600  # result PNGs older than this are removed when new ones are written
GPU_DURATION_S = int(os.environ.get("SR_GPU_DURATION", "120"))
NO_PRESET = "(none)"
TILE_MAX, OVERLAP_MAX = 1024, 256
DEFAULTS = Settings()
API_NAME = "upscale"
STUDIO_SOURCES = ("Two seeds", "Two HR references")
DRAWN_REGION = "drawn"
STUDIO_MAX_FRAMES, STUDIO_MAX_SEEDS = 9, 8


# --------------------------------------------------------------------------------------------
# The core: everything the UI needs from sr_core, behind one small object (tests fake it)
# --------------------------------------------------------------------------------------------


class Core:
    """sr_core behind the interface the UI uses.

    methods()                         -> [(MethodInfo, Availability)] in registry order
    method(method_id)                 -> (MethodInfo, Availability); InputError for an unknown id
    presets(method_id)                -> {name: {Settings field: value}} from presets/<id>.json
    upscale(image, method_id, settings, progress) -> sr_core Result
    metrics(sr, hr, lr, scale)        -> {"psnr_y", "ssim_y", "lr_psnr"}; InputError when the HR
                                         is not exactly `scale` x the LR size
    save_png(image, path)             -> Path (lossless PNG, alpha kept)
    interpolate(image, method_id, sources, lambdas, t, settings, progress) -> sr_core.studio.StudioResult
    fuse(image, method_id, source_a, source_b, mask, t, settings, progress) -> sr_core.studio.StudioResult
    diversity(image, method_id, seeds, settings, progress) -> (images, std map (H, W), heat-map image)
    """

    def __init__(self, registry: Optional[Registry] = None, presets_dir: Optional[Path] = None) -> None:
        self.registry = registry or default_registry()
        self.presets_dir = presets_dir

    def methods(self) -> list[tuple[MethodInfo, Availability]]:
        return [self.method(i) for i in self.registry.ids()]

    def method(self, method_id: str) -> tuple[MethodInfo, Availability]:
        m = self.registry.get(method_id)
        try:
            avail = m.availability()
        except Exception as e:  # a broken availability check must not take the whole menu down
            log.exception("availability check of %s failed", method_id)
            avail = Availability(False, f"availability check failed ({type(e).__name__}: {e})")
        return m.info, avail

    def presets(self, method_id: str) -> dict[str, dict]:
        from sr_core.presets import load_presets

        info, _ = self.method(method_id)
        return load_presets(method_id, self.presets_dir, info=info)

    def upscale(self, image, method_id: str, settings: Settings,
                progress: Optional[Callable[[float, str], None]] = None) -> Result:
        from sr_core.api import upscale

        return upscale(image, method_id, settings, progress=progress, registry=self.registry)

    def metrics(self, sr, hr, lr, scale: int) -> dict[str, float]:
        from sr_core import imaging, metrics

        sr_u8 = imaging.pil_to_uint8(imaging.load_image(sr))
        hr_u8 = imaging.pil_to_uint8(imaging.load_image(hr))
        lr_u8 = imaging.pil_to_uint8(imaging.load_image(lr))
        lh, lw = lr_u8.shape[:2]
        hh, hw = hr_u8.shape[:2]
        if (hh, hw) != (lh * scale, lw * scale):
            raise InputError(f"the HR reference is {hw}x{hh}, but it must be exactly {scale} x the input "
                             f"({lw}x{lh} -> {lw * scale}x{lh * scale}); metrics skipped")
        if sr_u8.shape != hr_u8.shape:
            raise InputError(f"the result is {sr_u8.shape[1]}x{sr_u8.shape[0]}, the HR reference "
                             f"{hw}x{hh}; metrics skipped")
        return {"psnr_y": float(metrics.psnr_y(sr_u8, hr_u8, scale)),
                "ssim_y": float(metrics.ssim_y(sr_u8, hr_u8, scale)),
                "lr_psnr": float(metrics.lr_psnr(sr_u8, lr_u8, scale))}

    def save_png(self, image, path) -> Path:
        from sr_core import imaging

        return imaging.save_png(image, path)

    def interpolate(self, image, method_id: str, sources, lambdas, t: int, settings: Settings,
                    progress: Optional[Callable[[float, str], None]] = None):
        from sr_core import studio

        return studio.interpolate(method_id, image, sources, lambdas, t, settings=settings, progress=progress,
                                  registry=self.registry)

    def fuse(self, image, method_id: str, source_a, source_b, mask, t: int, settings: Settings,
             progress: Optional[Callable[[float, str], None]] = None):
        from sr_core import studio

        return studio.fuse(method_id, image, source_a, source_b, mask, t, settings=settings, progress=progress,
                           registry=self.registry)

    def diversity(self, image, method_id: str, seeds, settings: Settings,
                  progress: Optional[Callable[[float, str], None]] = None):
        from sr_core import studio

        images, std = studio.diversity(studio.seeded_upscaler(method_id, settings, self.registry), image, seeds,
                                       progress=progress)
        return images, std, studio.std_heatmap(std)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def gpu(fn: Callable, duration: int = GPU_DURATION_S) -> Callable:
    """`spaces.GPU(duration)(fn)` on a ZeroGPU Space, `fn` unchanged elsewhere."""
    if spaces is None:
        return fn
    return spaces.GPU(duration=duration)(fn)


def _env_int(name: str, default: int, minimum: int = 1) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, not {value}")
    return value


def user_errors(what: str) -> Callable:
    """Decorator: SRError -> gr.Error(its text); anything unexpected -> logged + a short gr.Error."""

    def deco(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except SRError as e:
                raise gr.Error(str(e), title=f"{what} failed", print_exception=False) from None
            except Exception as e:
                log.exception("%s failed", what)
                text = str(e).splitlines()[0][:200] if str(e) else ""
                raise gr.Error(f"{what} failed unexpectedly ({type(e).__name__}{': ' + text if text else ''}). "
                               f"The details are in the server log.", title="Unexpected error") from None

        return wrapper

    return deco


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def method_label(info: MethodInfo, avail: Availability) -> str:
    return info.label if avail.ok else f"{info.label} (unavailable: {_short(avail.reason) or 'see details'})"


def describe(info: MethodInfo, avail: Availability) -> str:
    """Markdown card of a method's capabilities (shown under the method menu)."""
    caps = ["scale " + " ".join(f"×{s}" for s in info.scales)]
    if info.steps is not None:
        st = info.steps
        caps.append(f"{st.min} step{'' if st.min == 1 else 's'} (fixed)" if st.fixed
                    else f"steps {st.min}–{st.max} (default {st.default})")
    if info.supports_fidelity:
        caps.append("fidelity w")
    if info.uses_seed:
        caps.append("seeded")
    if info.tiling_space != "none":
        caps.append(f"tiles ({info.tiling_space} space)")
    if getattr(info, "supports_interpolation", False):
        caps.append("Studio: interpolation and fusion")
    caps.append(f"colour fix: {info.default_color_fix}")
    lines = [f"**{info.label}** — {info.description}", "", " · ".join(caps)]
    if info.licence:
        lines.append(f"\nLicence: {info.licence}")
    if not avail.ok:
        lines.append(f"\n⚠️ **Not available here:** {avail.reason}")
    return "\n".join(lines)


def _supports_prompt(info: MethodInfo) -> bool:
    return bool(info.supports_prompt)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "image"


def _prune_old(folder: Path, max_age_s: float) -> None:
    now = time.time()
    for p in folder.glob("*/*.png"):
        try:
            if now - p.stat().st_mtime > max_age_s:
                p.unlink()
                p.parent.rmdir()
        except OSError:
            pass


def _as_int(value, name: str, default: Optional[int] = None) -> int:
    if value is None or value == "":
        if default is None:
            raise InputError(f"{name} is empty")
        return default
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, not {value!r}") from None
    if f != f or f in (float("inf"), float("-inf")):
        raise InputError(f"{name} must be a finite number, not {value!r}")
    return int(round(f))


def _as_float(value, name: str, default: float) -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, not {value!r}") from None


# --------------------------------------------------------------------------------------------
# Handlers: typed, one core call each, gr.Error for the user
# --------------------------------------------------------------------------------------------

# Names of the per-method controls, in the order `on_method_change` / `on_preset` fill them.
METHOD_FIELDS = ("scale", "preset", "description", "steps", "fidelity", "seed_row", "tile_row", "tile",
                 "overlap", "color_fix", "prompt")
PRESET_FIELDS = ("scale", "steps", "fidelity", "seed", "tile", "overlap", "color_fix", "prompt")


class Handlers:
    """The app's event handlers, bound to one core.  Each returns plain values / gr.update dicts."""

    def __init__(self, core: Any) -> None:
        self.core = core
        # The GPU work (one facade call) is the function ZeroGPU must see.
        self._work = gpu(self._upscale_work)
        self._studio_call = gpu(self._studio_work)

    # ---- menus -------------------------------------------------------------------------------

    def method_choices(self) -> list[tuple[str, str]]:
        return [(method_label(info, avail), info.id) for info, avail in self.core.methods()]

    def default_method(self) -> Optional[str]:
        """What a fresh page opens on: a diffusion method whose weights ship with the app (works offline,
        no download on the first click) with the fewest default steps (a one-step model answers in
        seconds on a CPU host such as a free Space), registry order breaking ties; else the first such
        learned method of any family; else the first available method."""
        methods = self.core.methods()
        bundled = [(i, info) for i, (info, avail) in enumerate(methods)
                   if avail.ok and info.family != "baseline" and info.weights and all(w.bundled for w in info.weights)]
        diffusion = [(info.steps.default if info.steps else 1, i, info) for i, info in bundled
                     if info.family == "diffusion"]
        if diffusion:
            return min(diffusion, key=lambda t: t[:2])[2].id
        if bundled:
            return bundled[0][1].id
        for info, avail in methods:
            if avail.ok:
                return info.id
        return methods[0][0].id if methods else None

    def _method(self, method_id: Optional[str]) -> tuple[MethodInfo, Availability]:
        if not method_id:
            raise InputError("choose a method first")
        return self.core.method(method_id)

    @user_errors("Loading the method")
    def on_method_change(self, method_id: str, scale: Optional[int] = None) -> dict[str, dict]:
        """Controls for a method: which are visible, their ranges and the method's defaults."""
        info, avail = self._method(method_id)
        try:
            presets = list(self.core.presets(method_id))
        except SRError as e:  # a bad preset file must not hide the method
            gr.Warning(str(e))
            presets = []
        try:
            scale = int(scale) if scale is not None else None
        except (TypeError, ValueError):
            scale = None
        steps = info.steps
        tiles = info.tiling_space != "none"
        return {
            "scale": gr.update(choices=[(f"×{s}", s) for s in info.scales],
                               value=scale if scale in info.scales else info.default_scale),
            "preset": gr.update(choices=[NO_PRESET, *presets], value=NO_PRESET, visible=bool(presets)),
            "description": gr.update(value=describe(info, avail)),
            "steps": (gr.update(visible=True, minimum=steps.min, maximum=steps.max, value=steps.default)
                      if steps is not None and not steps.fixed else gr.update(visible=False)),
            "fidelity": gr.update(visible=info.supports_fidelity, value=info.default_fidelity),
            "seed_row": gr.update(visible=info.uses_seed),
            "tile_row": gr.update(visible=tiles),
            "tile": gr.update(value=info.default_tile),
            "overlap": gr.update(value=DEFAULTS.tile_overlap),
            "color_fix": gr.update(value=info.default_color_fix),
            "prompt": gr.update(visible=_supports_prompt(info)),
        }

    @user_errors("Applying the preset")
    def on_preset(self, method_id: str, preset: Optional[str]) -> dict[str, dict]:
        """Fill the controls from a preset: fields it names are set, the others go back to the method's
        defaults (seed and prompt are kept unless the preset names them)."""
        if not preset or preset == NO_PRESET:
            return {k: gr.update() for k in PRESET_FIELDS}
        info, _ = self._method(method_id)
        presets = self.core.presets(method_id)
        if preset not in presets:
            raise InputError(f"{info.label} has no preset {preset!r}; valid presets: {', '.join(presets) or 'none'}")
        p = presets[preset]
        steps = p.get("steps")
        if steps is None and info.steps is not None:
            steps = info.steps.default
        return {
            "scale": gr.update(value=p.get("scale", info.default_scale)),
            "steps": gr.update(value=steps) if steps is not None else gr.update(),
            "fidelity": gr.update(value=p.get("fidelity", info.default_fidelity)),
            "seed": gr.update(value=p["seed"]) if "seed" in p else gr.update(),
            "tile": gr.update(value=p.get("tile") or info.default_tile),
            "overlap": gr.update(value=p.get("tile_overlap", DEFAULTS.tile_overlap)),
            "color_fix": gr.update(value=p.get("color_fix") or info.default_color_fix),
            "prompt": gr.update(value=p["prompt"]) if "prompt" in p else gr.update(),
        }

    def randomize_seed(self, seed: Optional[float] = None) -> int:
        """A fresh random seed in 0..MAX_SEED, different from the current one."""
        while True:
            new = secrets.randbelow(MAX_SEED + 1)
            if seed is None or new != int(seed):
                return new

    @user_errors("Loading the methods")
    def compare_scales(self, method_a: str, method_b: str, scale: Optional[int] = None) -> dict:
        """Scales both compared methods support (the slider needs equal sizes)."""
        a, _ = self._method(method_a)
        b, _ = self._method(method_b)
        common = [s for s in a.scales if s in b.scales]
        if not common:
            gr.Warning(f"{a.label} and {b.label} have no scale in common")
            return gr.update(choices=[], value=None)
        value = int(scale) if scale in common else (a.default_scale if a.default_scale in common else common[-1])
        return gr.update(choices=[(f"×{s}", s) for s in common], value=value)

    # ---- running -----------------------------------------------------------------------------

    def _upscale_work(self, image, method_id: str, settings: Settings,
                      progress: Optional[Callable[[float, str], None]] = None) -> Result:
        return self.core.upscale(image, method_id, settings, progress)

    def settings_for(self, method_id: str, scale, steps=None, seed=None, fidelity=None, tile=None, overlap=None,
                     color_fix=None, prompt=None) -> tuple[MethodInfo, Settings]:
        """Validate the method (known, available) and turn raw control values into `Settings`.

        Controls the method does not declare are neutralised; range checks are the core's."""
        info, avail = self._method(method_id)
        if not avail.ok:
            raise InputError(f"{info.label} is not available: {avail.reason}")
        if not info.uses_seed:
            seed_v = 0
        elif seed is None or seed == "":
            seed_v = self.randomize_seed()
        else:
            seed_v = _as_int(seed, "seed")
        tiles = info.tiling_space != "none"
        fixed = info.steps is None or info.steps.fixed
        settings = Settings(
            scale=_as_int(scale, "scale", info.default_scale),
            steps=(None if fixed or steps is None or steps == "" or _as_int(steps, "steps") <= 0
                   else _as_int(steps, "steps")),
            fidelity=(_as_float(fidelity, "fidelity", info.default_fidelity) if info.supports_fidelity
                      else DEFAULTS.fidelity),
            seed=seed_v,
            tile=_as_int(tile, "tile size", 0) if tiles else 0,
            tile_overlap=_as_int(overlap, "tile overlap", DEFAULTS.tile_overlap) if tiles else DEFAULTS.tile_overlap,
            color_fix=(color_fix or None) if color_fix not in ("", "default") else None,
            prompt=str(prompt or "") if info.supports_prompt else "",  # a hidden box may keep old text
        )
        return info, settings

    def _run(self, image, info: MethodInfo, settings: Settings, progress, lo: float = 0.0, hi: float = 1.0) -> Result:
        def report(fraction: float, message: str = "") -> None:
            try:
                progress(lo + (hi - lo) * float(fraction), desc=f"{info.label}: {message}" if message else info.label)
            except Exception:  # progress is cosmetic; never fail a run because of it
                pass

        return self._work(image, info.id, settings, report if progress is not None else None)

    def _save(self, result: Result, stem: str, seeded: bool = False) -> str:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        _prune_old(OUT_DIR, OUT_MAX_AGE_S)
        folder = Path(tempfile.mkdtemp(prefix="run-", dir=OUT_DIR))
        s = result.settings
        name = f"{_slug(stem)}_{_slug(result.method_id)}_x{s.scale}" + (f"_seed{s.seed}" if seeded else "") + ".png"
        return str(self.core.save_png(result.image, folder / name))

    def _metrics(self, hr, lr, scale: int, entries: list[tuple[str, Any]]) -> str:
        """Markdown table of PSNR-Y / SSIM-Y / LR-PSNR of each (name, image) against `hr`."""
        if hr is None:
            return "*Upload an HR reference (exactly scale × the input size) to see PSNR-Y, SSIM-Y and LR-PSNR.*"
        rows = ["| | PSNR-Y (dB) | SSIM-Y | LR-PSNR (dB) |", "|---|---:|---:|---:|"]
        for name, img in entries:
            try:
                m = self.core.metrics(img, hr, lr, scale)
            except SRError as e:
                gr.Warning(str(e))
                return f"*Metrics skipped: {e}*"
            rows.append(f"| {name} | {m['psnr_y']:.3f} | {m['ssim_y']:.4f} | {m['lr_psnr']:.2f} |")
        return "\n".join(rows)

    @staticmethod
    def _summary(result: Result, info: MethodInfo) -> str:
        s = result.settings
        parts = [f"**{info.label}** ×{s.scale}", f"{result.seconds:.2f} s"]
        if info.uses_seed:
            parts.append(f"seed **{s.seed}**")
        if s.steps is not None:
            parts.append(f"{s.steps} step{'' if s.steps == 1 else 's'}")
        if info.supports_fidelity:
            parts.append(f"w = {s.fidelity:g}")
        if s.color_fix and s.color_fix != "none":
            parts.append(f"colour fix {s.color_fix}")
        size = result.info.get("output_size") if isinstance(result.info, dict) else None
        if size:
            parts.append(f"{size[0]}×{size[1]} px")
        return " · ".join(parts)

    @staticmethod
    def _settings_json(result: Result) -> dict:
        return {"method": result.method_id, "seconds": round(float(result.seconds), 4),
                "settings": dataclasses.asdict(result.settings),
                "info": dict(result.info) if isinstance(result.info, dict) else {}}

    @user_errors("Upscaling")
    def run_upscale(self, image: Optional[Image.Image], method: str, scale: int, steps: Optional[float],
                    seed: Optional[float], fidelity: Optional[float], tile: Optional[float], overlap: Optional[float],
                    color_fix: Optional[str], prompt: Optional[str], hr: Optional[Image.Image] = None,
                    progress: gr.Progress = gr.Progress()):
        """Upscale tab: -> ((bicubic, result) for the slider, PNG path, summary, settings JSON, metrics)."""
        if image is None:
            raise gr.Error("Upload an image first (drag and drop it onto the input box).", title="No image")
        info, settings = self.settings_for(method, scale, steps, seed, fidelity, tile, overlap, color_fix, prompt)
        result = self._run(image, info, settings, progress)
        path = self._save(result, Path(getattr(image, "filename", "") or "image").stem, info.uses_seed)
        metrics = self._metrics(hr, image, result.settings.scale, [(info.label, result.image), ("Bicubic", result.bicubic)])
        return ((result.bicubic, result.image), path, self._summary(result, info), self._settings_json(result), metrics)

    @user_errors("Comparing")
    def run_compare(self, image: Optional[Image.Image], scale: int, hr: Optional[Image.Image],
                    method_a: str, steps_a, seed_a, fidelity_a, tile_a, overlap_a, color_fix_a, prompt_a,
                    method_b: str, steps_b, seed_b, fidelity_b, tile_b, overlap_b, color_fix_b, prompt_b,
                    progress: gr.Progress = gr.Progress()):
        """Compare tab: A and B (two methods, or two settings of one) -> ((A, B) slider, summary, metrics)."""
        if image is None:
            raise gr.Error("Upload an image first (drag and drop it onto the input box).", title="No image")
        if scale is None:
            raise InputError("the two methods have no scale in common")
        info_a, set_a = self.settings_for(method_a, scale, steps_a, seed_a, fidelity_a, tile_a, overlap_a, color_fix_a,
                                          prompt_a)
        info_b, set_b = self.settings_for(method_b, scale, steps_b, seed_b, fidelity_b, tile_b, overlap_b, color_fix_b,
                                          prompt_b)
        res_a = self._run(image, info_a, set_a, progress, 0.0, 0.5)
        res_b = self._run(image, info_b, set_b, progress, 0.5, 1.0)
        summary = f"**A:** {self._summary(res_a, info_a)}  \n**B:** {self._summary(res_b, info_b)}"
        metrics = self._metrics(hr, image, set_a.scale, [("A: " + info_a.label, res_a.image),
                                                         ("B: " + info_b.label, res_b.image)])
        return (res_a.image, res_b.image), summary, metrics

    @user_errors("Upscaling")
    def api_upscale(self, image: Optional[Image.Image], method: str, scale: float = 4, steps: Optional[float] = None,
                    seed: Optional[float] = 0, fidelity: Optional[float] = DEFAULTS.fidelity, tile: Optional[float] = 0,
                    overlap: Optional[float] = DEFAULTS.tile_overlap, color_fix: Optional[str] = "",
                    prompt: Optional[str] = "") -> Image.Image:
        """The `/upscale` endpoint: one image in, the result image out (PNG).  steps None/0 and colour
        fix "" mean the method's defaults; tile 0 means the method's default tiling."""
        if image is None:
            raise gr.Error("no image was sent", title="No image")
        info, settings = self.settings_for(method, scale, steps, 0 if seed is None else seed, fidelity, tile,
                                           overlap, color_fix, prompt)
        return self._run(image, info, settings, None).image


    # ---- Studio: latent interpolation, content fusion, diversity -----------------------------

    def studio_method_choices(self) -> list[tuple[str, str]]:
        """Methods that support latent interpolation / fusion (`MethodInfo.supports_interpolation`)."""
        return [(method_label(i, a), i.id) for i, a in self.core.methods() if getattr(i, "supports_interpolation", False)]

    def seeded_method_choices(self) -> list[tuple[str, str]]:
        """Methods whose output depends on the seed (the diversity view)."""
        return [(method_label(i, a), i.id) for i, a in self.core.methods() if i.uses_seed]

    @staticmethod
    def _first_available(choices: list[tuple[str, str]], core: Any) -> Optional[str]:
        for _label, mid in choices:
            if core.method(mid)[1].ok:
                return mid
        return choices[0][1] if choices else None

    @user_errors("Loading the method")
    def on_studio_method(self, method_id: Optional[str]) -> tuple[dict, dict]:
        """(steps, t) slider updates for a studio method: steps 1..T at its default, t half of that."""
        if not method_id:
            return gr.update(), gr.update()
        info, _ = self._method(method_id)
        st = info.steps
        if st is None:
            return gr.update(visible=False), gr.update(visible=False)
        return (gr.update(minimum=st.min, maximum=st.max, value=st.default, visible=True),
                gr.update(minimum=1, maximum=st.default, value=max(1, (st.default + 1) // 2), visible=True))

    def on_studio_steps(self, steps, t) -> dict:
        """t ranges over 1..steps."""
        try:
            n = max(1, int(steps))
        except (TypeError, ValueError):
            return gr.update()
        try:
            tv = int(t)
        except (TypeError, ValueError):
            tv = n
        return gr.update(maximum=n, value=min(max(tv, 1), n))

    @staticmethod
    def on_studio_sources(kind: str) -> tuple[dict, dict]:
        """Show the seed row or the HR reference row."""
        refs = kind == STUDIO_SOURCES[1]
        return gr.update(visible=not refs), gr.update(visible=refs)

    def _studio_settings(self, method_id: Optional[str], steps, seed, need_studio: bool) -> tuple[MethodInfo, Settings]:
        info, avail = self._method(method_id)
        if not avail.ok:
            raise InputError(f"{info.label} is not available: {avail.reason}")
        if need_studio and not getattr(info, "supports_interpolation", False):
            raise InputError(f"{info.label} does not support the Studio (latent interpolation / fusion)")
        st = None
        if info.steps is not None and not info.steps.fixed and steps not in (None, "") and _as_int(steps, "steps") > 0:
            st = _as_int(steps, "steps")
        return info, Settings(scale=info.default_scale, steps=st, seed=_as_int(seed, "seed", 0))

    @staticmethod
    def _studio_sources(kind: str, seed_a, seed_b, ref_a, ref_b) -> list:
        if kind == STUDIO_SOURCES[1]:
            if ref_a is None or ref_b is None:
                raise InputError("upload two HR reference images (any size; they are resized to the output size)")
            return [ref_a, ref_b]
        return [_as_int(seed_a, "seed A", 0), _as_int(seed_b, "seed B", 1)]

    def _studio_progress(self, progress, label: str) -> Optional[Callable[[float, str], None]]:
        if progress is None:
            return None

        def report(fraction: float, message: str = "") -> None:
            try:
                progress(float(fraction), desc=f"{label}: {message}" if message else label)
            except Exception:
                pass

        return report

    def _studio_work(self, name: str, *args):
        return getattr(self.core, name)(*args)

    def _out_folder(self) -> Path:
        OUT_DIR.mkdir(parents=True, exist_ok=True)
        _prune_old(OUT_DIR, OUT_MAX_AGE_S)
        return Path(tempfile.mkdtemp(prefix="studio-", dir=OUT_DIR))

    @user_errors("Interpolation")
    def run_interpolate(self, image: Optional[Image.Image], method: str, steps, t, kind: str, seed_a, seed_b,
                        ref_a: Optional[Image.Image], ref_b: Optional[Image.Image], frames, lam,
                        progress: gr.Progress = gr.Progress()):
        """-> (strip gallery [(image, caption)], strip PNG path, animation PNG path, result at lambda, summary)."""
        if image is None:
            raise gr.Error("Upload an image first (drag and drop it onto the input box).", title="No image")
        info, settings = self._studio_settings(method, steps, seed_a, True)
        sources = self._studio_sources(kind, seed_a, seed_b, ref_a, ref_b)
        n = min(max(_as_int(frames, "frames", 5), 2), STUDIO_MAX_FRAMES)
        lam_v = min(max(_as_float(lam, "lambda", 0.5), 0.0), 1.0)
        lambdas = [round(i / (n - 1), 4) for i in range(n)]
        extra = lam_v not in lambdas
        res = self._studio_call("interpolate", image, info.id, sources, lambdas + ([lam_v] if extra else []),
                                _as_int(t, "t", 1), settings, self._studio_progress(progress, info.label))
        strip_imgs = res.images[:n]
        single = res.images[-1] if extra else res.images[lambdas.index(lam_v)]
        from sr_core.studio import save_animation, strip

        folder = self._out_folder()
        strip_path = str(self.core.save_png(strip(strip_imgs), folder / "interpolation_strip.png"))
        anim_path = str(save_animation(strip_imgs, folder / "interpolation_animation.png"))
        gallery = [(im, f"λ = {x:g}") for im, x in zip(strip_imgs, lambdas)]
        src = "seeds " + " → ".join(str(x) for x in sources) if res.sources == "seeds" else "two HR references"
        summary = (f"**{info.label}** · {src} · mixed at t = {res.t} of {res.steps} steps · {n} frames λ = 0…1 · "
                   f"{res.seconds:.1f} s")
        return gallery, strip_path, anim_path, single, summary

    @staticmethod
    def mask_from_editor(value) -> Optional[np.ndarray]:
        """The drawn region of a gr.ImageEditor value as an (h, w) float mask in [0, 1], or None if empty."""
        if not isinstance(value, dict):
            return None
        alpha = None
        for layer in value.get("layers") or []:
            if layer is None:
                continue
            a = np.asarray(layer.convert("RGBA") if isinstance(layer, Image.Image) else layer)
            a = a[..., 3] if a.ndim == 3 and a.shape[-1] == 4 else (a.max(axis=-1) if a.ndim == 3 else a)
            alpha = a if alpha is None else np.maximum(alpha, a)
        if alpha is None or not np.any(alpha > 0):
            return None
        return (alpha.astype(np.float32) / float(max(alpha.max(), 1))).clip(0, 1)

    @user_errors("Fusion")
    def run_fuse(self, image: Optional[Image.Image], method: str, steps, t, kind: str, seed_a, seed_b,
                 ref_a: Optional[Image.Image], ref_b: Optional[Image.Image], editor, region: str,
                 progress: gr.Progress = gr.Progress()):
        """-> (fused image, mask image (white = source A), summary)."""
        if image is None:
            raise gr.Error("Upload an image first (drag and drop it onto the input box).", title="No image")
        info, settings = self._studio_settings(method, steps, seed_a, True)
        sources = self._studio_sources(kind, seed_a, seed_b, ref_a, ref_b)
        if region == DRAWN_REGION:
            mask = self.mask_from_editor(editor)
            if mask is None:
                raise InputError("draw the region of source A on the image (or pick a preset region)")
        else:
            mask = region
        res = self._studio_call("fuse", image, info.id, sources[0], sources[1], mask, _as_int(t, "t", 1), settings,
                                self._studio_progress(progress, info.label))
        what = "drawn region" if region == DRAWN_REGION else f"{region} region"
        summary = (f"**{info.label}** · source A in the {what}, source B elsewhere · mixed at t = {res.t} of "
                   f"{res.steps} steps · {res.seconds:.1f} s")
        return res.images[0], res.mask, summary

    @user_errors("Diversity")
    def run_diversity(self, image: Optional[Image.Image], method: str, steps, seed, n,
                      progress: gr.Progress = gr.Progress()):
        """-> (gallery [(image, caption)], std heat map, summary)."""
        if image is None:
            raise gr.Error("Upload an image first (drag and drop it onto the input box).", title="No image")
        info, settings = self._studio_settings(method, steps, seed, False)
        if not info.uses_seed:
            raise InputError(f"{info.label} does not use a seed: every run gives the same image")
        first = _as_int(seed, "seed", 0)
        count = min(max(_as_int(n, "number of seeds", 4), 2), STUDIO_MAX_SEEDS)
        seeds = [(first + i) % (MAX_SEED + 1) for i in range(count)]
        images, std, heat = self._studio_call("diversity", image, info.id, seeds, settings,
                                              self._studio_progress(progress, info.label))
        gallery = [(im, f"seed {s}") for im, s in zip(images, seeds)]
        summary = (f"**{info.label}** · {count} seeds ({seeds[0]}…{seeds[-1]}) · per-pixel std across seeds: "
                   f"mean {float(np.mean(std)):.2f}, max {float(np.max(std)):.1f} grey levels (heat map: black = 0)")
        return gallery, heat, summary


# --------------------------------------------------------------------------------------------
# Components
# --------------------------------------------------------------------------------------------


def input_image(**kwargs) -> gr.Image:
    """A gr.Image (PIL, alpha kept, PNG) whose decoding failures reach the user as a clear gr.Error.

    The stock component lets Pillow's UnidentifiedImageError escape from `preprocess`, which a
    client sees as a bare "error".  The instance's `preprocess` is wrapped (a subclass would make
    gradio write an `app.pyi` stub next to this file)."""
    kwargs = {"type": "pil", "image_mode": None, "format": "png", **kwargs}
    comp = gr.Image(**kwargs)
    stock = comp.preprocess

    @functools.wraps(stock)
    def preprocess(payload):
        try:
            return stock(payload)
        except gr.Error:
            raise
        except Exception as e:
            log.info("unreadable upload for %r: %s", comp.label, e)
            raise gr.Error(f"{comp.label or 'The upload'}: the file is not a readable image ({type(e).__name__}). "
                           f"Use a PNG, JPEG, WebP, BMP or TIFF image.", title="Unreadable image",
                           print_exception=False) from None

    comp.preprocess = preprocess
    return comp


@dataclasses.dataclass
class Panel:
    """The per-method controls of one column (the Upscale tab, or side A / B of Compare)."""

    method: gr.Dropdown
    scale: Optional[gr.Dropdown]
    preset: gr.Dropdown
    description: gr.Markdown
    steps: gr.Slider
    fidelity: gr.Slider
    seed_row: gr.Row
    seed: gr.Number
    randomize: gr.Button
    tile_row: gr.Row
    tile: gr.Slider
    overlap: gr.Slider
    color_fix: gr.Radio
    prompt: gr.Textbox

    def settings_inputs(self) -> list:
        return [self.steps, self.seed, self.fidelity, self.tile, self.overlap, self.color_fix, self.prompt]


def _panel(h: Handlers, choices, method_id: Optional[str], *, with_scale: bool, suffix: str = "") -> Panel:
    if method_id is not None:
        init = h.on_method_change(method_id, None)
        info, _ = h.core.method(method_id)
    else:
        init, info = {k: {} for k in METHOD_FIELDS}, None

    def prop(name, key, default):
        return init[name].get(key, default)

    eid = f"-{suffix}" if suffix else ""
    method = gr.Dropdown(choices=choices, value=method_id, label="Method", elem_id=f"method{eid}")
    scale = None
    if with_scale:
        scale = gr.Dropdown(choices=prop("scale", "choices", []), value=prop("scale", "value", None), label="Scale",
                            elem_id=f"scale{eid}")
    description = gr.Markdown(prop("description", "value", ""), elem_classes=["method-card"])
    preset = gr.Dropdown(choices=prop("preset", "choices", [NO_PRESET]), value=NO_PRESET, label="Preset",
                         visible=prop("preset", "visible", False), elem_id=f"preset{eid}")
    st = info.steps if info is not None else None
    ranged = st is not None and not st.fixed  # a fixed count hides the slider (gradio refuses min == max)
    steps = gr.Slider(minimum=st.min if ranged else 1, maximum=st.max if ranged else max(100, st.default if st else 1),
                      step=1,
                      value=st.default if st else 1, label="Steps",
                      visible=prop("steps", "visible", False), elem_id=f"steps{eid}")
    fidelity = gr.Slider(0.0, 1.0, step=0.05, value=DEFAULTS.fidelity, label="Fidelity w (0 = realism, 1 = fidelity)",
                         info="Changing only w on the same image and seed re-uses the sampled latent: "
                              "just the decoder runs again.",
                         visible=prop("fidelity", "visible", False), elem_id=f"fidelity{eid}")
    with gr.Row(visible=prop("seed_row", "visible", False), elem_classes=["seed-row"]) as seed_row:
        seed = gr.Number(value=DEFAULTS.seed, precision=0, minimum=0, maximum=MAX_SEED, label="Seed",
                         elem_id=f"seed{eid}", scale=3)
        randomize = gr.Button("Randomize", elem_id=f"randomize{eid}", scale=1, min_width=90, size="sm")
    with gr.Accordion("Tiles and colour fix", open=False, elem_id=f"advanced{eid}"):
        with gr.Row(visible=prop("tile_row", "visible", False)) as tile_row:
            tile = gr.Slider(0, TILE_MAX, step=8, value=prop("tile", "value", 0),
                             label="Tile size (LR px, 0 = whole image)", elem_id=f"tile{eid}")
            overlap = gr.Slider(0, OVERLAP_MAX, step=4, value=DEFAULTS.tile_overlap, label="Tile overlap (LR px)",
                                elem_id=f"overlap{eid}")
        color_fix = gr.Radio(list(COLOR_FIXES), value=prop("color_fix", "value", "none"),
                             label="Colour fix (against the bicubic upscale)", elem_id=f"colorfix{eid}")
    prompt = gr.Textbox(label="Prompt", placeholder="optional text prompt", visible=prop("prompt", "visible", False),
                        elem_id=f"prompt{eid}")
    return Panel(method, scale, preset, description, steps, fidelity, seed_row, seed, randomize, tile_row, tile, overlap,
                 color_fix, prompt)


def _wire_panel(h: Handlers, p: Panel) -> None:
    """Method change -> visibility/ranges/defaults; preset -> controls; randomize -> seed."""
    light = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
    m_names = [n for n in METHOD_FIELDS if getattr(p, n) is not None]
    m_outputs = [getattr(p, n) for n in m_names]

    def method_change(method_id, scale=None):
        upd = h.on_method_change(method_id, scale)
        return tuple(upd[n] for n in m_names)

    scale_in = [p.scale] if p.scale is not None else []
    p.method.change(method_change, [p.method, *scale_in], m_outputs, **light)

    pr_names = [n for n in PRESET_FIELDS if getattr(p, n) is not None]

    def preset_change(method_id, preset):
        upd = h.on_preset(method_id, preset)
        return tuple(upd[n] for n in pr_names)

    p.preset.input(preset_change, [p.method, p.preset], [getattr(p, n) for n in pr_names], **light)
    p.randomize.click(h.randomize_seed, [p.seed], [p.seed], **light)


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------

CSS = """
.method-card { font-size: 0.9em; }
.seed-row { align-items: flex-end !important; }
#result-slider img, #compare-slider img { image-rendering: auto; }
"""


def example_paths() -> list[str]:
    return [str(p) for p in sorted(EXAMPLES_DIR.glob("*.png"))]


def build_demo(core: Any = None) -> gr.Blocks:
    """Build the Blocks app on `core` (default: `Core()` over the real sr_core registry)."""
    core = core if core is not None else Core()
    h = Handlers(core)
    choices = h.method_choices()
    first = h.default_method()
    other = next((info.id for info, avail in core.methods() if avail.ok and info.id != first), first)
    heavy = dict(concurrency_id="sr", concurrency_limit="default")

    with gr.Blocks(title="Diffusion super-resolution", delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Diffusion super-resolution\nDrop a low-resolution image, pick a method and a scale, "
                    "and compare the result with the bicubic upscale on the slider.")
        with gr.Row():
            with gr.Column(scale=1, min_width=300):
                image = input_image(label="Low-resolution input", sources=["upload", "clipboard"], height=300,
                                    elem_id="input-image")
                with gr.Accordion("HR reference for metrics (optional)", open=False):
                    hr = input_image(label="HR reference (exactly scale × the input)", sources=["upload", "clipboard"],
                                     height=200, elem_id="hr-image")
                examples = example_paths()
                if examples:
                    gr.Examples([[p] for p in examples], inputs=[image], label="Examples (Kodak24 crops, ×1/3 bicubic)",
                                cache_examples=False, examples_per_page=8)
            with gr.Column(scale=2, min_width=420):
                with gr.Tabs():
                    with gr.Tab("Upscale", id="upscale"):
                        with gr.Row():
                            with gr.Column(scale=2, min_width=260):
                                main = _panel(h, choices, first, with_scale=True)
                                run = gr.Button("Run", variant="primary", elem_id="run")
                            with gr.Column(scale=3, min_width=320):
                                slider = gr.ImageSlider(label="Bicubic ↔ result", type="pil", format="png",
                                                        interactive=False, elem_id="result-slider", max_height=600)
                                download = gr.File(label="Result (PNG)", interactive=False, elem_id="download", height=100)
                                summary = gr.Markdown(elem_id="summary")
                                metrics = gr.Markdown(elem_id="metrics")
                                with gr.Accordion("Settings used", open=False):
                                    settings_json = gr.JSON(label="Settings", elem_id="settings-json")
                    with gr.Tab("Compare", id="compare"):
                        gr.Markdown("Two methods, or two settings of one method, on one slider (A left, B right).")
                        with gr.Row():
                            with gr.Column(min_width=260):
                                gr.Markdown("### A")
                                pa = _panel(h, choices, first, with_scale=False, suffix="a")
                            with gr.Column(min_width=260):
                                gr.Markdown("### B")
                                pb = _panel(h, choices, other, with_scale=False, suffix="b")
                        cmp_scale = gr.Dropdown(label="Scale", elem_id="scale-compare",
                                                **_scale_init(h, first, other))
                        run_cmp = gr.Button("Run A and B", variant="primary", elem_id="run-compare")
                        cmp_slider = gr.ImageSlider(label="A ↔ B", type="pil", format="png", interactive=False,
                                                    elem_id="compare-slider", max_height=600)
                        cmp_summary = gr.Markdown()
                        cmp_metrics = gr.Markdown()
                    with gr.Tab("Studio", id="studio"):
                        studio = _studio_tab(h)

        # API-only inputs/outputs of /upscale (hidden; defaults are what a client may leave out).
        with gr.Column(visible=False):
            api_in = [
                input_image(label="image"),
                gr.Textbox(value=first or "bicubic", label="method"),
                gr.Number(value=4, precision=0, label="scale"),
                gr.Number(value=None, precision=0, label="steps"),
                gr.Number(value=0, precision=0, label="seed"),
                gr.Number(value=DEFAULTS.fidelity, label="fidelity"),
                gr.Number(value=0, precision=0, label="tile"),
                gr.Number(value=DEFAULTS.tile_overlap, precision=0, label="overlap"),
                gr.Textbox(value="", label="color_fix"),
                gr.Textbox(value="", label="prompt"),
            ]
            api_out = gr.Image(label="result", type="pil", format="png")
            api_button = gr.Button("api")

        for p in (main, pa, pb):
            _wire_panel(h, p)
        light = dict(api_visibility="private", concurrency_limit=None, show_progress="hidden")
        for m in (pa.method, pb.method):
            m.change(h.compare_scales, [pa.method, pb.method, cmp_scale], [cmp_scale], **light)

        run.click(h.run_upscale, [image, main.method, main.scale, *main.settings_inputs(), hr],
                  [slider, download, summary, settings_json, metrics], api_visibility="private", **heavy)
        run_cmp.click(h.run_compare, [image, cmp_scale, hr, pa.method, *pa.settings_inputs(), pb.method,
                                      *pb.settings_inputs()],
                      [cmp_slider, cmp_summary, cmp_metrics], api_visibility="private", **heavy)
        api_button.click(h.api_upscale, api_in, [api_out], api_name=API_NAME,
                         api_description="Upscale one image; returns the result as a PNG file.", **heavy)
        _wire_studio(h, studio, image, heavy, light)

    demo.handlers = h  # for tests and embedding
    demo.queue(default_concurrency_limit=_env_int("SR_CONCURRENCY", 1),
               max_size=_env_int("SR_MAX_QUEUE", 16))
    return demo


@dataclasses.dataclass
class StudioTab:
    """The Studio tab's components (shared controls, then the three sub-tabs)."""

    method: gr.Dropdown
    steps: gr.Slider
    t: gr.Slider
    kind: gr.Radio
    seed_row: gr.Row
    seed_a: gr.Number
    seed_b: gr.Number
    ref_row: gr.Row
    ref_a: gr.Image
    ref_b: gr.Image
    frames: gr.Slider
    lam: gr.Slider
    run_interp: gr.Button
    gallery: gr.Gallery
    strip_file: gr.File
    anim_file: gr.File
    single: gr.Image
    interp_summary: gr.Markdown
    editor: gr.ImageEditor
    region: gr.Radio
    run_fuse: gr.Button
    fused: gr.Image
    mask: gr.Image
    fuse_summary: gr.Markdown
    div_method: gr.Dropdown
    div_steps: gr.Number
    div_seed: gr.Number
    div_n: gr.Slider
    run_div: gr.Button
    div_gallery: gr.Gallery
    div_std: gr.Image
    div_summary: gr.Markdown


def _studio_tab(h: Handlers) -> StudioTab:
    from sr_core.studio import REGIONS

    choices = h.studio_method_choices()
    first = h._first_available(choices, h.core)
    seeded = h.seeded_method_choices()
    first_seeded = h._first_available(seeded, h.core)
    steps_upd, t_upd = h.on_studio_method(first) if first else ({}, {})
    gr.Markdown("SRDiff's latent-space manipulations of the input above: two sources (two seeds, or two HR "
                "references diffused to step t) are mixed in the diffused residual and denoised for the last "
                "t steps, conditioned on the input. λ = 0 gives source A, λ = 1 source B."
                + ("" if choices else "\n\n*No method here supports the Studio (SRDiff's weights are needed).*"))
    with gr.Row():
        method = gr.Dropdown(choices=choices, value=first, label="Method (residual diffusion)",
                             elem_id="studio-method", scale=2)
        steps = gr.Slider(minimum=steps_upd.get("minimum", 1), maximum=steps_upd.get("maximum", 100), step=1,
                          value=steps_upd.get("value", 1), label="Steps", elem_id="studio-steps", scale=2)
        t = gr.Slider(minimum=1, maximum=t_upd.get("maximum", 100), step=1, value=t_upd.get("value", 1),
                      label="t: steps run from the mix (t = steps: mix at the start)", elem_id="studio-t", scale=2)
    kind = gr.Radio(list(STUDIO_SOURCES), value=STUDIO_SOURCES[0], label="Sources", elem_id="studio-sources")
    with gr.Row() as seed_row:
        seed_a = gr.Number(value=1, precision=0, minimum=0, maximum=MAX_SEED, label="Seed A (also the step noise "
                           "with references)", elem_id="studio-seed-a")
        seed_b = gr.Number(value=2, precision=0, minimum=0, maximum=MAX_SEED, label="Seed B", elem_id="studio-seed-b")
    with gr.Row(visible=False) as ref_row:
        ref_a = input_image(label="HR reference A", sources=["upload", "clipboard"], height=200, elem_id="studio-ref-a")
        ref_b = input_image(label="HR reference B", sources=["upload", "clipboard"], height=200, elem_id="studio-ref-b")
    with gr.Tabs():
        with gr.Tab("Interpolation", id="studio-interpolation"):
            with gr.Row():
                frames = gr.Slider(2, STUDIO_MAX_FRAMES, step=1, value=5, label="Frames of the strip (λ = 0 … 1)",
                                   elem_id="studio-frames")
                lam = gr.Slider(0.0, 1.0, step=0.05, value=0.5, label="λ of the single result", elem_id="studio-lambda")
            run_interp = gr.Button("Interpolate", variant="primary", elem_id="run-interpolate")
            gallery = gr.Gallery(label="λ = 0 … 1 (click for a flip-through view)", format="png", columns=5,
                                 height="auto", elem_id="studio-gallery", interactive=False)
            single = gr.Image(label="Result at λ", type="pil", format="png", interactive=False, elem_id="studio-single")
            with gr.Row():
                strip_file = gr.File(label="Strip (PNG)", interactive=False, elem_id="studio-strip", height=80)
                anim_file = gr.File(label="Animation (animated PNG)", interactive=False, elem_id="studio-anim",
                                    height=80)
            interp_summary = gr.Markdown(elem_id="studio-interp-summary")
        with gr.Tab("Fusion", id="studio-fusion"):
            gr.Markdown("Paint the region that should come from source A (or pick a preset region); source B "
                        "fills the rest. The mask is mixed into the diffused latent at step t, then denoised.")
            editor = gr.ImageEditor(label="Region of source A", type="pil", image_mode="RGBA", format="png",
                                    sources=(), transforms=(), layers=False, height=320, elem_id="studio-editor",
                                    brush=gr.Brush(colors=["#ff3030"], color_mode="fixed", default_size=12))
            region = gr.Radio([DRAWN_REGION, *REGIONS], value="left", label="Region of source A",
                              elem_id="studio-region")
            run_fuse = gr.Button("Fuse", variant="primary", elem_id="run-fuse")
            with gr.Row():
                fused = gr.Image(label="Fused result", type="pil", format="png", interactive=False,
                                 elem_id="studio-fused")
                mask = gr.Image(label="Mask used (white = source A)", type="pil", format="png", interactive=False,
                                elem_id="studio-mask")
            fuse_summary = gr.Markdown(elem_id="studio-fuse-summary")
        with gr.Tab("Diversity", id="studio-diversity"):
            gr.Markdown("Any seeded method: N seeds, the results, and the per-pixel standard deviation across them "
                        "(where the model is unsure).")
            with gr.Row():
                div_method = gr.Dropdown(choices=seeded, value=first_seeded, label="Method", elem_id="div-method")
                div_steps = gr.Number(value=0, precision=0, minimum=0, label="Steps (0 = the method's default)",
                                      elem_id="div-steps")
                div_seed = gr.Number(value=0, precision=0, minimum=0, maximum=MAX_SEED, label="First seed",
                                     elem_id="div-seed")
                div_n = gr.Slider(2, STUDIO_MAX_SEEDS, step=1, value=4, label="Seeds", elem_id="div-n")
            run_div = gr.Button("Run the seeds", variant="primary", elem_id="run-diversity")
            div_gallery = gr.Gallery(label="Results", format="png", columns=4, height="auto",
                                     elem_id="div-gallery", interactive=False)
            div_std = gr.Image(label="Per-pixel std across seeds", type="pil", format="png", interactive=False,
                               elem_id="div-std")
            div_summary = gr.Markdown(elem_id="div-summary")
    return StudioTab(method, steps, t, kind, seed_row, seed_a, seed_b, ref_row, ref_a, ref_b, frames, lam, run_interp,
                     gallery, strip_file, anim_file, single, interp_summary, editor, region, run_fuse, fused, mask,
                     fuse_summary, div_method, div_steps, div_seed, div_n, run_div, div_gallery, div_std, div_summary)


def _wire_studio(h: Handlers, st: StudioTab, image, heavy: dict, light: dict) -> None:
    st.method.change(h.on_studio_method, [st.method], [st.steps, st.t], **light)
    st.steps.change(h.on_studio_steps, [st.steps, st.t], [st.t], **light)
    st.kind.change(h.on_studio_sources, [st.kind], [st.seed_row, st.ref_row], **light)
    # the fusion canvas shows the input image; painting on it marks source A's region
    image.change(lambda img: img, [image], [st.editor], **light)
    for ev in (st.editor.input, st.editor.apply):  # a stroke on the canvas selects the drawn region
        ev(lambda v: DRAWN_REGION if h.mask_from_editor(v) is not None else gr.update(), [st.editor], [st.region],
           **light)
    shared = [st.method, st.steps, st.t, st.kind, st.seed_a, st.seed_b, st.ref_a, st.ref_b]
    st.run_interp.click(h.run_interpolate, [image, *shared, st.frames, st.lam],
                        [st.gallery, st.strip_file, st.anim_file, st.single, st.interp_summary],
                        api_visibility="private", **heavy)
    st.run_fuse.click(h.run_fuse, [image, *shared, st.editor, st.region], [st.fused, st.mask, st.fuse_summary],
                      api_visibility="private", **heavy)
    st.run_div.click(h.run_diversity, [image, st.div_method, st.div_steps, st.div_seed, st.div_n],
                     [st.div_gallery, st.div_std, st.div_summary], api_visibility="private", **heavy)


def _scale_init(h: Handlers, a: Optional[str], b: Optional[str]) -> dict:
    if a is None or b is None:
        return {"choices": [], "value": None}
    upd = h.compare_scales(a, b, None)
    return {"choices": upd.get("choices", []), "value": upd.get("value")}


def launch_kwargs() -> dict:
    """Arguments every launch of the app should use (tests reuse them)."""
    return {"allowed_paths": [str(EXAMPLES_DIR)], "css": CSS,
            "max_file_size": os.environ.get("SR_MAX_UPLOAD", "50mb")}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Web app of the diffusion super-resolution toolkit")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="address to listen on (env GRADIO_SERVER_NAME; default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                        help="port (env GRADIO_SERVER_PORT; default 7860)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_demo(Core()).launch(server_name=args.host, server_port=args.port, **launch_kwargs())


if __name__ == "__main__":
    main()
