"""Gradio web app of the super-resolution toolkit: a thin `gr.Blocks` UI over `sr_core.api.upscale`.

`build_demo(core)` builds the page from a *core* object (`Core` below wraps sr_core: the method
registry with each method's availability, presets, the upscale facade, benchmark metrics, PNG
writing); tests pass a fake core with the same methods.  The controls a method gets (steps, seed,
fidelity w, tiles, colour fix, prompt) follow its declared `MethodInfo` capabilities.  The event
handlers live on `Handlers`, are plain typed methods that call one core function each and turn
every failure into a `gr.Error`, so tests call them directly.  Results go to the native
`gr.ImageSlider` as (MATLAB-bicubic input, result), always as PNG.  On Hugging Face ZeroGPU
(`import spaces` works) the GPU work is wrapped with `spaces.GPU`; elsewhere nothing changes.
A named endpoint `/upscale` serves gradio_client callers and returns the result PNG.
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
        caps.append(f"{st.min} steps (fixed)" if st.fixed else f"steps {st.min}–{st.max} (default {st.default})")
    if info.supports_fidelity:
        caps.append("fidelity w")
    if info.uses_seed:
        caps.append("seeded")
    if info.tiling_space != "none":
        caps.append(f"tiles ({info.tiling_space} space)")
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

    # ---- menus -------------------------------------------------------------------------------

    def method_choices(self) -> list[tuple[str, str]]:
        return [(method_label(info, avail), info.id) for info, avail in self.core.methods()]

    def default_method(self) -> Optional[str]:
        methods = self.core.methods()
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
            "fidelity": gr.update(visible=info.supports_fidelity, value=DEFAULTS.fidelity),
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
            "fidelity": gr.update(value=p.get("fidelity", DEFAULTS.fidelity)),
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
            fidelity=_as_float(fidelity, "fidelity", DEFAULTS.fidelity) if info.supports_fidelity else DEFAULTS.fidelity,
            seed=seed_v,
            tile=_as_int(tile, "tile size", 0) if tiles else 0,
            tile_overlap=_as_int(overlap, "tile overlap", DEFAULTS.tile_overlap) if tiles else DEFAULTS.tile_overlap,
            color_fix=(color_fix or None) if color_fix not in ("", "default") else None,
            prompt=str(prompt or ""),
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
            parts.append(f"{s.steps} steps")
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
    steps = gr.Slider(minimum=st.min if st else 1, maximum=st.max if st else 100, step=1,
                      value=st.default if st else 1, label="Steps",
                      visible=prop("steps", "visible", False), elem_id=f"steps{eid}")
    fidelity = gr.Slider(0.0, 1.0, step=0.05, value=DEFAULTS.fidelity, label="Fidelity w (0 = realism, 1 = fidelity)",
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

    demo.handlers = h  # for tests and embedding
    demo.queue(default_concurrency_limit=_env_int("SR_CONCURRENCY", 1),
               max_size=_env_int("SR_MAX_QUEUE", 16))
    return demo


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
