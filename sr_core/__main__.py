"""Command line: `python -m sr_core methods | upscale | eval | bench`.

The flags are a contract (scripts call them exactly like this):
  methods [--json]
  upscale INPUT... -o OUT_DIR --method ID [--scale S] [--steps N] [--seed N] [--tile PX]
          [--tile-overlap PX] [--fidelity W] [--color-fix adain|wavelet|none] [--device auto|cpu|cuda]
  eval --method ID --hr DIR [--scale 4] [--limit N] [--json FILE] [--compare-color-fix none,wavelet,adain]
       [method options]
  bench --method ID[,ID...] [--sizes 256,512,1024] [--json FILE] [method options]  (several: compared)
`upscale` under `accelerate launch` (or torchrun) shards the inputs across processes by rank, one
GPU each.  Training entry points live in `python -m sr_core.training`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from .types import COLOR_FIXES, Settings, SRError

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _method_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", required=True, help="method id (see `python -m sr_core methods`)")
    p.add_argument("--scale", type=int, default=None, help="upscaling factor (default: the method's)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (diffusion methods)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    p.add_argument("--tile", type=int, default=None, help="LR tile size in px (0: no tiling)")
    p.add_argument("--tile-overlap", type=int, default=None, help="overlap between tiles in px")
    p.add_argument("--fidelity", type=float, default=None, help="fidelity-realism weight w in [0,1]")
    p.add_argument("--color-fix", choices=COLOR_FIXES, default=None, help="colour correction")
    p.add_argument("--device", default=None, help="auto, cpu or cuda")
    p.add_argument("--preset", default=None, help="named preset from presets/<method>.json")


def _settings_from(args, info) -> Settings:
    from .presets import apply_preset

    s = Settings(scale=info.default_scale, fidelity=info.default_fidelity)
    if args.preset:
        s = apply_preset(s, info.id, args.preset)
    for field, attr in (("scale", "scale"), ("steps", "steps"), ("seed", "seed"), ("tile", "tile"),
                        ("tile_overlap", "tile_overlap"), ("fidelity", "fidelity"), ("color_fix", "color_fix"),
                        ("device", "device")):
        v = getattr(args, attr, None)
        if v is not None:
            s = s.replace(**{field: v})
    return s


def _collect_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    files, missing = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in IMAGE_EXTS))
        elif p.is_file():
            files.append(p)
        else:
            missing.append(item)
    return files, missing


def _dist() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables accelerate/torchrun set."""
    rank = int(os.environ.get("RANK", os.environ.get("PMI_RANK", "0")))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("PMI_SIZE", "1")))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, max(world, 1), local


def cmd_methods(args) -> int:
    from .registry import default_registry

    reg = default_registry()
    rows = []
    for m in reg:
        a = m.availability()
        d = m.info.to_dict()
        d["available"], d["reason"] = a.ok, a.reason
        rows.append(d)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for d in rows:
        steps = d["steps"]
        st = "-" if not steps else (str(steps["min"]) if steps["min"] == steps["max"]
                                   else f"{steps['min']}-{steps['max']} (default {steps['default']})")
        status = "available" if d["available"] else f"UNAVAILABLE: {d['reason']}"
        print(f"{d['id']:<14} {d['label']}")
        print(f"    scales {','.join(map(str, d['scales']))}; steps {st}; fidelity w: "
              f"{'yes' if d['supports_fidelity'] else 'no'}; seed: {'yes' if d['uses_seed'] else 'no'}; "
              f"tiling: {d['tiling_space']}; colour fix: {d['default_color_fix']}; licence: {d['licence']}")
        print(f"    {status}")
    return 0


def cmd_upscale(args) -> int:
    from tqdm import tqdm

    from .api import upscale
    from .registry import default_registry

    method = default_registry().get(args.method)
    settings = _settings_from(args, method.info)
    rank, world, local = _dist()
    if world > 1 and settings.device in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            settings = settings.replace(device=f"cuda:{local % torch.cuda.device_count()}")
    files, missing = _collect_inputs(args.inputs)
    failed = 0
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
        failed += 1
    files = files[rank::world]
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = 0
    bar = tqdm(files, desc=f"{args.method}" + (f" [rank {rank}/{world}]" if world > 1 else ""), unit="img",
               disable=args.quiet)
    for f in bar:
        bar.set_postfix_str(f.name)
        dest = out_dir / (f.stem + ".png")
        try:
            res = upscale(f, args.method, settings)
            res.image.save(dest, format="PNG")
            done += 1
        except SRError as e:
            failed += 1
            tqdm.write(f"error: {f}: {e}", file=sys.stderr)
        except Exception as e:  # a bug or an unexpected library error: report, keep going
            failed += 1
            tqdm.write(f"error: {f}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"{done} written to {out_dir}, {failed} failed" + (f" (rank {rank} of {world})" if world > 1 else ""))
    return 1 if failed else 0


def cmd_eval(args) -> int:
    from .evaluate import evaluate_method, format_table
    from .registry import default_registry

    method = default_registry().get(args.method)
    settings = _settings_from(args, method.info)
    compare = [m.strip() for m in (args.compare_color_fix or "").split(",") if m.strip()]
    bad = [m for m in compare if m not in COLOR_FIXES]
    if bad:
        raise SRError(f"--compare-color-fix takes {', '.join(COLOR_FIXES)} (comma-separated), not {bad[0]!r}")
    res = evaluate_method(args.method, args.hr, scale=args.scale or 4, limit=args.limit, settings=settings,
                          compare_color_fix=compare)
    print(format_table(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def cmd_bench(args) -> int:
    from .bench import bench, compare, format_bench, format_compare
    from .registry import default_registry

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise SRError(f"--sizes must be comma-separated integers, not {args.sizes!r}")
    ids = [m.strip() for m in args.method.split(",") if m.strip()]
    if not ids:
        raise SRError("--method needs a method id (or several, comma-separated, to compare them)")
    reg = default_registry()
    if len(ids) > 1:  # several methods: timed in one process, interleaved, with their ratios
        settings = {mid: _settings_from(args, reg.get(mid).info) for mid in ids}
        res = compare(ids, sizes, settings, registry=reg, repeat=args.repeat)
        print(format_compare(res))
    else:
        settings = _settings_from(args, reg.get(ids[0]).info)
        res = bench(ids[0], sizes, settings, registry=reg, repeat=args.repeat)
        print(format_bench(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sr_core", description="Diffusion super-resolution toolkit")
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("methods", help="list methods, capabilities and weight availability")
    m.add_argument("--json", action="store_true")
    u = sub.add_parser("upscale", help="upscale files or folders into PNGs")
    u.add_argument("inputs", nargs="+", help="image files or folders")
    u.add_argument("-o", "--output", required=True, help="output folder")
    u.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    _method_options(u)
    e = sub.add_parser("eval", help="benchmark protocol: PSNR/SSIM on Y, LR-PSNR")
    e.add_argument("--hr", required=True, help="folder of HR images")
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--json", default=None, help="write the results to this JSON file")
    e.add_argument("--compare-color-fix", default="", metavar="MODES",
                   help="also measure these colour fixes (comma-separated: none, wavelet, adain) on the same "
                        "outputs (one run; the table is for --color-fix or the method's default)")
    _method_options(e)
    b = sub.add_parser("bench", help="seconds and peak memory per input size")
    b.add_argument("--sizes", default="256,512,1024", help="LR sizes, comma-separated")
    b.add_argument("--repeat", type=int, default=1)
    b.add_argument("--json", default=None)
    _method_options(b)
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"methods": cmd_methods, "upscale": cmd_upscale, "eval": cmd_eval, "bench": cmd_bench}[args.cmd](args)
    except SRError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
