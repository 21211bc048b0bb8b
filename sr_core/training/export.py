"""Export a finished run into `assets/weights/<id>/`: weights as safetensors, config.json, a model
card (MODEL_CARD.md) and SHA256SUMS.

The card records what trained the model (recipe, network config, data pack and which training
folders fed it, degradation, steps, batch, device, mixed precision, wall time) and its benchmark
figures: Set5 / Set14 / BSD100 x4 PSNR-Y / SSIM-Y / LR-PSNR computed by `sr_core.evaluate`
(`evaluate_fn`, the protocol of `sr_core eval`) on the *exported* file as the method loads it,
next to the published bicubic and FSRCNN figures.  Follows the model-card habit of Hugging Face
repos; the code is ours.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import torch

from ..weights import sha256_file
from .recipes import RECIPES, Recipe, apply_overrides, get_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]
ASSETS_WEIGHTS = REPO_ROOT / "assets" / "weights"
EVAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "eval"
EVAL_SETS = ("Set5", "Set14", "BSD100")

# x4 Y-PSNR (dB) on the benchmark protocol, for comparison in the card: bicubic as measured by
# `sr_core eval` (METHODS.md), FSRCNN as published.
REFERENCE_X4 = {
    "bicubic (MATLAB)": {"Set5": 28.42, "Set14": 26.00, "BSD100": 25.96},
    "FSRCNN (published)": {"Set5": 30.72, "Set14": 27.61, "BSD100": 26.98},
}


def recipe_from_dict(d: dict) -> Recipe:
    """Rebuild the recipe a run was trained with (registered recipe + the recorded field values)."""
    base = get_recipe(d["name"]) if d.get("name") in RECIPES else None
    if base is None:
        raise KeyError(f"recipe {d.get('name')!r} is not registered")
    sets = []
    for k, v in d.items():
        if k in ("name", "description", "class", "degradation", "model_config", "smoke"):
            continue
        if isinstance(v, list):
            if hasattr(base, k) and tuple(getattr(base, k)) != tuple(v):
                sets.append(f"{k}={','.join(str(x) for x in v)}")
        elif hasattr(base, k) and getattr(base, k) != v:
            sets.append(f"{k}={v}")
    if "warmup_frac" not in d:  # recorded before the field existed: the warm-up counted steps alone
        sets.append("warmup_frac=0")
    for k, v in (d.get("model_config") or {}).items():
        sets.append(f"model.{k}={json.dumps(v)}")
    deg = d.get("degradation") or {}
    for k in ("bicubic", "realesrgan"):
        if k in deg:
            sets.append(f"degradation.{k}={deg[k]}")
    return apply_overrides(base, sets)


def evaluate_weights(recipe: Recipe, model: torch.nn.Module, sets=EVAL_SETS, limit: Optional[int] = None,
                     eval_root: Path = EVAL_ROOT) -> dict:
    from .trainer import validate

    out = {}
    for name in sets:
        hr = eval_root / name / "HR"
        if not hr.is_dir():
            continue
        res = validate(recipe, model, torch.device("cpu"), hr, limit)
        out[name] = {k: v for k, v in res.items() if k != "images"}
    return out


def export_run(run_dir, *, model_id: Optional[str] = None, assets_dir=None, dtype: str = "fp16",
               which: str = "ema", evaluate: bool = True, eval_limit: Optional[int] = None,
               eval_sets=EVAL_SETS, eval_root: Path = EVAL_ROOT, notes: str = "") -> dict:
    """Write `<assets>/<id>/{model.safetensors, config.json, MODEL_CARD.md, SHA256SUMS}` from a run folder."""
    from ..weights import load_state_dict, save_safetensors

    run_dir = Path(run_dir)
    ck = torch.load(run_dir / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    info_path = run_dir / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {
        "steps": int(ck["step"]), "wall_seconds": float(ck.get("elapsed", 0.0)), "device": "unknown",
        "mixed_precision": ck.get("mixed_precision", "?"), "recipe": ck["recipe"], "pack_meta": {}}
    if int(info.get("steps", -1)) != int(ck["step"]):  # the checkpoint is newer than train_info.json
        info = dict(info, steps=int(ck["step"]), wall_seconds=float(ck.get("elapsed", 0.0)), partial=True)
    recipe = recipe_from_dict(ck["recipe"])
    hook = getattr(recipe, "export_run", None)
    if callable(hook):  # recipes whose bundles have their own layout (resshift/sinsr/sd minis) export themselves
        return hook(run_dir, model_id=model_id, assets_dir=assets_dir, dtype=dtype, which=which, evaluate=evaluate,
                    eval_limit=eval_limit, eval_sets=eval_sets, eval_root=eval_root, notes=notes)
    model_id = model_id or recipe.export_id or recipe.name
    dest = Path(assets_dir) if assets_dir else ASSETS_WEIGHTS
    dest = dest / model_id
    dest.mkdir(parents=True, exist_ok=True)

    sd = ck[which]
    torch_dtype = {"fp16": torch.float16, "fp32": torch.float32}[dtype]
    sd = {k: v.detach().to(torch_dtype).contiguous() for k, v in sd.items()}
    wpath = dest / "model.safetensors"
    model = recipe.build_model()
    config = model.config() if hasattr(model, "config") else dict(recipe.model_config)
    save_safetensors(sd, wpath, metadata={"format": "pt", "model_id": model_id, "recipe": recipe.name,
                                          "config": json.dumps(config), "steps": str(info.get("steps"))})
    # evaluate the file as it will be served: reload it into a fresh fp32 network
    from ..weights import load_into

    load_into(model, load_state_dict(wpath))
    model.eval().float()
    figures = evaluate_weights(recipe, model, eval_sets, eval_limit, eval_root) if evaluate else {}

    digest = sha256_file(wpath)
    size_mb = wpath.stat().st_size / 1e6
    cfg = {
        "id": model_id, "architecture": type(model).__name__, "config": config, "scale": recipe.scale,
        "value_range": recipe.card(config)["values"],
        "weights": "model.safetensors", "dtype": dtype, "which": which, "sha256": digest,
        "recipe": recipe.to_dict(), "steps": info.get("steps"), "eval_x4": figures,
    }
    (dest / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    card = _card(model_id, recipe, info, config, figures, digest, size_mb, dtype, which, eval_limit, notes)
    (dest / "MODEL_CARD.md").write_text(card)
    (dest / "SHA256SUMS").write_text(f"{digest}  model.safetensors\n")
    return {"dir": str(dest), "sha256": digest, "size_mb": round(size_mb, 3), "eval_x4": figures,
            "steps": info.get("steps")}


def _fmt_fig(figures: dict, name: str) -> str:
    f = figures.get(name)
    return f"{f['psnr_y']:.2f} / {f['ssim_y']:.4f}" if f else "n/a"


def _card(model_id: str, recipe: Recipe, info: dict, config: dict, figures: dict, digest: str,
          size_mb: float, dtype: str, which: str, eval_limit, notes: str = "") -> str:
    pm = info.get("pack_meta") or {}
    folders = ", ".join(f"train/{k} ({v} crops)" for k, v in (pm.get("crops_per_folder") or {}).items()) or "n/a"
    wall = float(info.get("wall_seconds") or 0.0)
    rows = [f"| {model_id} (this model) | " + " | ".join(_fmt_fig(figures, s) for s in EVAL_SETS) + " |"]
    for ref, vals in REFERENCE_X4.items():
        rows.append(f"| {ref} | " + " | ".join(f"{vals[s]:.2f}" for s in EVAL_SETS) + " |")
    lr_psnr = ", ".join(f"{s} {figures[s]['lr_psnr']:.2f} dB" for s in EVAL_SETS if s in figures) or "n/a"
    beats = ""
    if all(s in figures for s in EVAL_SETS):
        fs = REFERENCE_X4["FSRCNN (published)"]
        ok = [figures[s]["psnr_y"] > fs[s] for s in EVAL_SETS]
        beats = ("Beats FSRCNN's published PSNR on all three sets." if all(ok) else
                 "Does not beat FSRCNN's published PSNR on: " +
                 ", ".join(s for s, o in zip(EVAL_SETS, ok) if not o) + ".")
    partial = " (run stopped early; exported from the last checkpoint)" if info.get("partial") else ""
    text = recipe.card(config)
    return f"""# {model_id}

{recipe.description}

- **Architecture**: {text['architecture']}; value convention: {text['values']}.
- **Method**: `{recipe.method_id or model_id}` ({text['method']}).
- **Weights**: `model.safetensors`, {dtype}, {which} weights, {size_mb:.2f} MB,
  sha256 `{digest}`.
- **Licence**: code MIT; weights for research use (the training images are research-only).

## Training
- Recipe: `{recipe.name}` (`{type(recipe).__module__.replace('.', '/')}.py`): {text['objective']};
  lr {recipe.lr:g} with {recipe.warmup_text()} and cosine decay to {recipe.lr_min:g},
  gradient clipping {recipe.grad_clip:g}, EMA {recipe.ema_decay:g}, batch {recipe.batch_size}, LR patch
  {recipe.patch_lr} px (HR {recipe.patch_lr * recipe.scale} px), seed {recipe.seed}.
- Steps: {info.get('steps')} (planned {info.get('max_steps', recipe.max_steps)}{', time budget ' + str(info.get('time_budget_min')) + ' min' if info.get('time_budget_min') else ''}){partial}.
- Device: {info.get('device', 'unknown')}; mixed precision: {info.get('mixed_precision', '?')}; processes:
  {info.get('processes', 1)}; wall time {wall / 60:.1f} min.
- Data: pack `{Path(str(info.get('pack', 'n/a'))).name}` -- {pm.get('n', '?')} random {pm.get('hr_size', '?')} px
  crops (seed {pm.get('seed', '?')}, random flip/rot90) from {folders} in `../shared/data/`; images smaller
  than the crop were skipped ({pm.get('skipped_small', '?')}). No eval/ image was used.
- Degradation: {recipe.degradation.describe()}.

{('## Notes' + chr(10) + notes.strip() + chr(10) + chr(10)) if notes.strip() else ''}## Benchmark (x4, Y-PSNR dB / SSIM for this model, `sr_core eval` protocol{', first ' + str(eval_limit) + ' images' if eval_limit else ''})

| model | Set5 | Set14 | BSD100 |
|---|---|---|---|
{chr(10).join(rows)}

{beats} LR-PSNR (consistency): {lr_psnr}.

Reproduce: `python -m sr_core.training pack`, `python -m sr_core.training {recipe.name} --max-steps
{info.get('steps')}` (cosine over steps; a `--time-budget` run anneals over wall time instead), `python -m
sr_core.training export runs/{recipe.name}`. Exported
{time.strftime('%Y-%m-%d')}.
"""
