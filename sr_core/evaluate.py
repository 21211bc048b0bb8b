"""Benchmark evaluation with the protocol that reproduces the published tables (DATA.md).

For each HR image: mod-crop to the scale, make the LR with MATLAB-compatible bicubic `imresize`,
super-resolve it, and measure PSNR/SSIM on the BT.601 Y channel with `scale` border pixels cropped
(grayscale images are used as they are) and LR-PSNR (SRDiff's consistency: the SR downscaled by the
same bicubic against the LR).  `evaluate_fn` takes any function LR tensor -> SR tensor (used by the
trainer's validation); `evaluate_method` runs a registered method through the facade.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from . import imaging, metrics
from .types import InputError, ProgressFn

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def list_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder or an image file")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())


def dataset_name(hr_dir: Path) -> str:
    p = Path(hr_dir).resolve()
    return p.parent.name if p.name.upper() in ("HR", "GT") else p.name


def peak_rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def _to_u8(t: torch.Tensor) -> np.ndarray:
    return t[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def _measure(path: Path, y: torch.Tensor, hr: np.ndarray, lr: np.ndarray, gray: bool, scale: int) -> dict:
    sr = _to_u8(y.float().cpu())
    if sr.shape[:2] != hr.shape[:2]:
        raise InputError(f"{path.name}: output {sr.shape[:2]} does not match HR {hr.shape[:2]}")
    if gray:
        sr = np.round(sr.astype(np.float64).mean(axis=2)).astype(np.uint8)
    return {"name": path.name, "psnr_y": float(metrics.psnr_y(sr, hr, scale)),
            "ssim_y": float(metrics.ssim_y(sr, hr, scale)), "lr_psnr": float(metrics.lr_psnr(sr, lr, scale))}


def _mean(rows: list[dict], k: str) -> float:
    return float(np.mean([r[k] for r in rows if np.isfinite(r[k])] or [float("inf")]))


def evaluate_fn(fn: Callable[[torch.Tensor], torch.Tensor], hr_dir, scale: int = 4, limit: Optional[int] = None,
                *, method: str = "custom", progress: Optional[ProgressFn] = None,
                post: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None,
                variants: Optional[dict] = None) -> dict:
    """Evaluate `fn` (LR (1,3,h,w) in [0,1] -> SR (1,3,h*s,w*s)) on the HR images of `hr_dir`.

    `post(lr, sr)`, when given, turns `fn`'s output into the evaluated SR (outside the timing); each of
    `variants` ({name: post-like function}) is measured on the same output too, so that post-processings
    (colour fixes) are compared on one run: their means are under `variants[name]`, with per-image rows."""
    files = list_images(Path(hr_dir))
    if limit:
        files = files[: int(limit)]
    if not files:
        raise InputError(f"no images found in {hr_dir}")
    rows = []
    var_rows: dict[str, list[dict]] = {k: [] for k in (variants or {})}
    for i, path in enumerate(files):
        hr = np.asarray(imaging.load_image(path, max_pixels=1 << 30))
        if hr.ndim == 3 and hr.shape[2] == 4:
            hr = hr[..., :3]
        gray = hr.ndim == 2
        hr = imaging.mod_crop(hr, scale)
        lr = imaging.imresize(hr, 1.0 / scale)
        lr_rgb = np.repeat(lr[..., None], 3, axis=2) if gray else lr
        x = torch.from_numpy(np.ascontiguousarray(lr_rgb)).permute(2, 0, 1)[None].float() / 255.0
        t0 = time.perf_counter()
        with torch.inference_mode():
            y = fn(x)
        sec = time.perf_counter() - t0
        with torch.inference_mode():
            rows.append(dict(_measure(path, post(x, y) if post else y, hr, lr, gray, scale), seconds=sec))
            for k, v in (variants or {}).items():
                var_rows[k].append(_measure(path, v(x, y), hr, lr, gray, scale))
        if progress:
            progress((i + 1) / len(files), path.name)
    out = {
        "method": method,
        "scale": int(scale),
        "dataset": dataset_name(Path(hr_dir)),
        "n": len(rows),
        "psnr_y": _mean(rows, "psnr_y"),
        "ssim_y": _mean(rows, "ssim_y"),
        "lr_psnr": _mean(rows, "lr_psnr"),
        "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
        "peak_rss_mb": peak_rss_mb(),
        "images": rows,
    }
    if variants:
        out["variants"] = {k: {"psnr_y": _mean(r, "psnr_y"), "ssim_y": _mean(r, "ssim_y"),
                               "lr_psnr": _mean(r, "lr_psnr"), "images": r} for k, r in var_rows.items()}
    return out


def evaluate_method(method_id: str, hr_dir, scale: int = 4, limit: Optional[int] = None, settings=None,
                    registry=None, progress: Optional[ProgressFn] = None,
                    compare_color_fix: Sequence[str] = ()) -> dict:
    """`evaluate_fn` through the facade.  `compare_color_fix` (colour fix names): the method runs once per
    image without a colour fix, and the settings' colour fix (the result) and each of these (under
    `variants`, e.g. "none") are applied to that one output exactly as `run_method` applies them."""
    from .api import apply_color_fix, check_settings, run_method
    from .registry import default_registry
    from .types import Settings, WeightsUnavailable

    reg = registry or default_registry()
    method = reg.get(method_id)
    avail = method.availability()
    if not avail.ok:
        raise WeightsUnavailable(f"{method_id} is not available: {avail.reason}")
    settings = check_settings(method.info, (settings or Settings()).replace(scale=scale))
    others = [m for m in dict.fromkeys(compare_color_fix) if m != settings.color_fix]
    if not others:
        out = evaluate_fn(lambda x: run_method(method, x, settings), hr_dir, scale, limit, method=method_id,
                          progress=progress)
    else:
        for m in others:
            check_settings(method.info, settings.replace(color_fix=m))  # a clear error for an unknown name
        raw = settings.replace(color_fix="none")

        def fix(mode: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
            return lambda x, y: apply_color_fix(y, x, scale, mode)

        out = evaluate_fn(lambda x: run_method(method, x, raw), hr_dir, scale, limit, method=method_id,
                          progress=progress, post=fix(settings.color_fix), variants={m: fix(m) for m in others})
    out["settings"] = {k: v for k, v in settings.__dict__.items()}
    return out


def format_table(res: dict) -> str:
    lines = [f"{'image':<24} {'PSNR-Y':>8} {'SSIM-Y':>7} {'LR-PSNR':>8} {'sec':>7}"]
    for r in res["images"]:
        lines.append(f"{r['name']:<24} {r['psnr_y']:8.3f} {r['ssim_y']:7.4f} {r['lr_psnr']:8.2f} {r['seconds']:7.3f}")
    lines.append(f"{'mean (' + res['dataset'] + ', n=' + str(res['n']) + ')':<24} {res['psnr_y']:8.3f} "
                 f"{res['ssim_y']:7.4f} {res['lr_psnr']:8.2f} {res['seconds_per_image']:7.3f}")
    cf = (res.get("settings") or {}).get("color_fix")
    for name, v in (res.get("variants") or {}).items():
        lines.append(f"{'  colour fix ' + name:<24} {v['psnr_y']:8.3f} {v['ssim_y']:7.4f} {v['lr_psnr']:8.2f}"
                     f"   (same outputs; the rows above: colour fix {cf})")
    lines.append(f"method {res['method']} x{res['scale']}, peak RSS {res['peak_rss_mb']:.0f} MB")
    return "\n".join(lines)
