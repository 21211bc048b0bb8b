"""Command line of the training kit.

    python -m sr_core.training list
    python -m sr_core.training pack [--out packs/train_x4.npz] [--folders DIR ...] [--n-crops 320] [--seed 0]
                                    [--codec raw|webp]
    python -m sr_core.training RECIPE [--pack FILE] [--out DIR] [--max-steps N] [--resume] [--device auto|cpu|cuda]
                                      [--mixed-precision auto|no|bf16|fp16] [--time-budget MIN] [--set key=value ...]
                                      [--batch-scale K] [--lr-scale F]
    python -m sr_core.training export RUN_DIR [--id rrdb-mini] [--dtype fp16|fp32] [--no-eval]
    python -m sr_core.training handoff RUN_DIR... --out DIR     (on a lent GPU: what training changed, in
                                                                 <= 8 files of < 16 MiB for $OUT)
    python -m sr_core.training adopt DIR [--runs runs]          (here: rebuild those run folders from it)
    python -m sr_core.training preflight CHAIN... --pack FILE [--device cuda]
                                                                (a lent GPU: every recipe of the chains at smoke
                                                                 size for 2 steps there, before the real run)
    python -m sr_core.training profile RECIPE [--device cuda] [--random-sources] [--steps 10]
                                                                (ms per phase of a training step, it/s, kernels)

Multi-GPU / multi-node: `accelerate launch -m sr_core.training RECIPE ...`.  Mirrors the workflow of
the official repos' train scripts (config -> trainer -> checkpoint) with recipes kept as code.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .recipes import RECIPES, apply_overrides, get_recipe

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PACK = REPO_ROOT / "packs" / "train_x4_s256_n320.npz"


def _pack_main(argv: list[str]) -> int:
    from .data import DEFAULT_TRAIN_ROOT, build_pack, default_folders

    ap = argparse.ArgumentParser(prog="python -m sr_core.training pack", description="build a training pack (.npz)")
    ap.add_argument("--out", default=str(DEFAULT_PACK))
    ap.add_argument("--folders", nargs="*", default=None,
                    help=f"data set folders (default: every folder under {DEFAULT_TRAIN_ROOT})")
    ap.add_argument("--n-crops", type=int, default=320)
    ap.add_argument("--hr-size", type=int, default=256)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-mib", type=float, default=50.0)
    ap.add_argument("--codec", choices=("raw", "webp"), default="raw",
                    help="raw: zlib-compressed arrays (~0.155 MiB per 256-px crop); webp: each crop as lossless "
                         "WebP (~0.08 MiB, about twice the crops in the same bytes; slower to build)")
    a = ap.parse_args(argv)
    folders = a.folders or default_folders()
    meta = build_pack(a.out, folders, n_crops=a.n_crops, hr_size=a.hr_size, scale=a.scale, seed=a.seed,
                      max_mib=a.max_mib, codec=a.codec, verbose=True)
    print(json.dumps({k: v for k, v in meta.items() if k != "files"}, indent=2))
    return 0


def _export_main(argv: list[str]) -> int:
    from .export import export_run

    ap = argparse.ArgumentParser(prog="python -m sr_core.training export", description="export a run to assets/weights")
    ap.add_argument("run", help="run folder (holds ckpt/last.pt and train_info.json)")
    ap.add_argument("--id", default=None, help="model id (default: the recipe's export_id)")
    ap.add_argument("--assets", default=None, help="weights root (default: assets/weights)")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"), help="stored weight precision")
    ap.add_argument("--weights", default="ema", choices=("ema", "model"))
    ap.add_argument("--no-eval", action="store_true", help="skip the Set5/Set14/BSD100 figures")
    ap.add_argument("--eval-limit", type=int, default=0, help="images per eval set (0: all)")
    ap.add_argument("--note", default="", help="free text added to the model card (e.g. how the run went)")
    a = ap.parse_args(argv)
    res = export_run(a.run, model_id=a.id, assets_dir=a.assets, dtype=a.dtype, which=a.weights,
                     evaluate=not a.no_eval, eval_limit=a.eval_limit or None, notes=a.note)
    print(json.dumps(res, indent=2))
    return 0


def _handoff_main(argv: list[str]) -> int:
    from .handoff import MAX_FILES, MAX_TOTAL_MIB, write_handoff

    ap = argparse.ArgumentParser(prog="python -m sr_core.training handoff",
                                 description="write runs' trained weights as small shards (sr_core/training/handoff.py)")
    ap.add_argument("runs", nargs="+", help="run folders, in the order they were trained")
    ap.add_argument("--out", required=True, help="folder to write into (the device's $OUT)")
    ap.add_argument("--max-mib", type=float, default=15.0, help="largest shard (the device returns files < 16 MiB)")
    ap.add_argument("--dtype", default="fp16", choices=("fp16", "fp32"), help="stored precision (default fp16)")
    a = ap.parse_args(argv)
    paths = []
    for i, run in enumerate(a.runs):
        paths += write_handoff(run, a.out, max_mib=a.max_mib, seq=i, dtype=a.dtype)
    for p in paths:
        print(f"{p}  {p.stat().st_size / 2**20:.2f} MiB")
    total = sum(p.stat().st_size for p in paths) / 2**20
    print(f"{len(paths)} files, {total:.1f} MiB")
    if len(paths) > MAX_FILES or total > MAX_TOTAL_MIB:
        print(f"too much for a lent device's $OUT ({MAX_FILES} files, {MAX_TOTAL_MIB:g} MiB together): hand off "
              f"fewer runs per call", file=sys.stderr)
        return 1
    return 0


def _adopt_main(argv: list[str]) -> int:
    from .handoff import adopt_handoff, handoff_files, handoff_seq

    ap = argparse.ArgumentParser(prog="python -m sr_core.training adopt",
                                 description="rebuild run folders from handoff shards (sr_core/training/handoff.py)")
    ap.add_argument("folder", help="where the shards are (the device's files_at)")
    ap.add_argument("--runs", default=str(REPO_ROOT / "runs"), help="runs root (default: runs/)")
    a = ap.parse_args(argv)
    found = handoff_files(a.folder)
    if not found:
        print(f"no handoff shards in {a.folder}", file=sys.stderr)
        return 2
    for name in sorted(found, key=lambda n: handoff_seq(found[n])):
        print(json.dumps(adopt_handoff(found[name], Path(a.runs) / name)), flush=True)
    return 0


def scale_batch(recipe, k: float):
    """`recipe` with batch size x k (rounded, >= 1) and lr, lr_min x sqrt(k) (Adam's usual square-root rule)."""
    import dataclasses
    import math

    if k == 1:
        return recipe
    if k <= 0:
        raise ValueError(f"--batch-scale must be > 0, not {k}")
    bs = max(1, int(round(recipe.batch_size * k)))
    f = math.sqrt(bs / recipe.batch_size)
    return dataclasses.replace(recipe, batch_size=bs, lr=recipe.lr * f, lr_min=recipe.lr_min * f)


def _train_main(name: str, argv: list[str]) -> int:
    from .trainer import train

    ap = argparse.ArgumentParser(prog=f"python -m sr_core.training {name}", description=get_recipe(name).description)
    ap.add_argument("--pack", default=str(DEFAULT_PACK), help="training pack (.npz); built with defaults if missing")
    ap.add_argument("--out", default=None, help="run folder (default runs/<recipe>)")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt/last.pt")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"))
    ap.add_argument("--time-budget", type=float, default=None,
                    help="minutes: stop then, and anneal the LR over max(step/max_steps, time/budget)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--no-val", action="store_true", help="skip Set5 validation")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe field (lr=5e-4, model.nf=16, degradation.realesrgan=0.5)")
    ap.add_argument("--batch-scale", type=float, default=1.0,
                    help="K: batch size x K and lr, lr_min x sqrt(K), after --set (a GPU whose step is bound by "
                         "kernel launches trains K times the samples per second for about the same step time)")
    ap.add_argument("--lr-scale", type=float, default=1.0,
                    help="F: lr and lr_min x F, after --set and --batch-scale (e.g. 0.5 for a warm start)")
    ap.add_argument("--compile", action="store_true",
                    help="compute the loss through torch.compile(model) (fused kernels; the first step compiles, "
                         "minutes, inside --time-budget); checkpoints and exports are the same")
    a = ap.parse_args(argv)
    recipe = scale_batch(apply_overrides(get_recipe(name), a.set), a.batch_scale)
    if a.lr_scale != 1.0:
        if a.lr_scale <= 0:
            raise SystemExit(f"--lr-scale must be > 0, not {a.lr_scale}")
        import dataclasses

        recipe = dataclasses.replace(recipe, lr=recipe.lr * a.lr_scale, lr_min=recipe.lr_min * a.lr_scale)
    pack = Path(a.pack)
    if not pack.exists():
        from .data import build_pack

        print(f"pack {pack} not found; building it with defaults")
        build_pack(pack, scale=recipe.scale, verbose=True)
    out = Path(a.out) if a.out else REPO_ROOT / "runs" / name
    from .trainer import SET5_HR

    train(recipe, pack_path=pack, out=out, max_steps=a.max_steps, resume=a.resume, device=a.device,
          mixed_precision=a.mixed_precision, time_budget_min=a.time_budget, threads=a.threads,
          val_dir=None if a.no_val else SET5_HR, log=lambda s: print(s, flush=True), compile=a.compile)
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = ("usage: python -m sr_core.training {list | pack ... | export RUN ... | handoff RUN... --out DIR | "
             "adopt DIR | preflight CHAIN... | profile RECIPE | RECIPE ...}\n"
             f"recipes: {', '.join(sorted(RECIPES))}")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd == "list":
        for k, r in sorted(RECIPES.items()):
            print(f"{k:<16} {r.description}")
        return 0
    commands = {"pack": _pack_main, "export": _export_main, "handoff": _handoff_main, "adopt": _adopt_main}
    if cmd in commands:
        return commands[cmd](rest)
    if cmd in ("preflight", "profile"):  # modules of their own, imported when asked for
        import importlib

        return importlib.import_module(f".{cmd}", __package__).main(rest)
    if cmd in RECIPES:
        return _train_main(cmd, rest)
    print(f"unknown recipe or command {cmd!r}\n{usage}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
