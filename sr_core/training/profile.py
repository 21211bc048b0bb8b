"""Where a recipe's training step spends its time on the device it runs on -- a benchmark that prints figures.

    python -m sr_core.training profile RECIPE [--device cuda] [--steps 10] [--batch N] [--random-sources]
                                              [--pack FILE] [--set key=value ...] [--json FILE] [--compile]

The first lent GPU run (2026-11-30, one H200, two chains side by side) trained at 6 it/s for resshift-mini
(batch 64) and 1 it/s for sinsr-mini -- a few percent of what the recipes' FLOPs allow, so the step is not
bound by arithmetic.  This measures, for one recipe at its real size:
- each phase of a step with the device synchronised around it (batch assembly on the CPU, the copy to the
  device and the degradation, forward + loss, backward, gradient clipping + Adam, EMA) in ms;
- the step as the trainer runs it (no synchronisation between phases: the host runs ahead) in ms and it/s;
- the kernels one step launches (CUDA kernels on a GPU; aten ops on a CPU) -- at ~5-10 us of launch
  overhead each, kernels x 5 us is a floor that no GPU makes up for.
`--random-sources` builds the recipe's frozen sources (ae_from, teacher_from, vae_from, prior_from,
stage1_from) as seeded random networks of the real size, so a stage can be timed before its sources exist.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Optional

import torch

from .data import PackSource, load_pack
from .recipes import apply_overrides, get_recipe
from .trainer import choose_mixed_precision, compile_for_training, train_step

__all__ = ["profile_recipe", "SOURCE_FIELDS"]

SOURCE_FIELDS = ("ae_from", "teacher_from", "vae_from", "prior_from", "stage1_from")
PHASES = ("batch", "to_device", "forward", "backward", "optimizer", "ema")


def profile_recipe(recipe, pack, *, device: str = "auto", steps: int = 10, warmup: int = 3,
                   mixed_precision: str = "auto", count_kernels: bool = True, compile: bool = False) -> dict:
    """Time `steps` training steps of `recipe` (after `warmup` untimed ones); see the module docstring."""
    from accelerate import Accelerator

    want_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    dev_type = "cpu" if want_cpu else "cuda"
    mp = choose_mixed_precision(mixed_precision, dev_type)
    acc = Accelerator(cpu=want_cpu, mixed_precision=mp)
    source = PackSource(load_pack(pack), recipe.patch_lr, recipe.scale, recipe.seed)
    torch.manual_seed(recipe.seed)
    model = recipe.build_model()
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, betas=tuple(recipe.betas))
    model, opt = acc.prepare(model, opt)
    ema.to(acc.device)
    dev = acc.device
    model.train()
    fwd = compile_for_training(model) if compile else None
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    bs = recipe.batch_size

    def step_once(i: int, times: Optional[dict]) -> torch.Tensor:
        """The trainer's own step (trainer.train_step); with `times`, the device synchronised and the clock
        read after each phase."""
        if times is None:
            return train_step(recipe, acc, model, ema, opt, source, i, bs, fwd=fwd)
        last = [time.perf_counter()]

        def mark(phase: str) -> None:
            if phase != "batch":  # the batch is assembled on the CPU
                sync()
            now = time.perf_counter()
            times[phase].append(1000.0 * (now - last[0]))
            last[0] = now

        return train_step(recipe, acc, model, ema, opt, source, i, bs, mark=mark, fwd=fwd)

    t_first = time.perf_counter()
    for i in range(warmup):
        step_once(i, None)
    sync()
    warmup_s = time.perf_counter() - t_first  # with --compile: the compilation
    phases: dict[str, list[float]] = {k: [] for k in PHASES}
    for i in range(steps):
        step_once(warmup + i, phases)
    # the step as the trainer runs it: no synchronisation, the loss summed on the device
    sync()
    t0 = time.perf_counter()
    total = torch.zeros((), device=dev)
    for i in range(steps):
        total = total + step_once(warmup + steps + i, None).float()
    float(total)
    free_ms = 1000.0 * (time.perf_counter() - t0) / steps

    kernels = None
    if count_kernels:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            step_once(warmup + 2 * steps, None)
            sync()
        evs = prof.events()
        if dev.type == "cuda":
            kernels = sum(1 for e in evs if e.device_type == torch.autograd.DeviceType.CUDA)
        else:
            kernels = sum(1 for e in evs if e.name.startswith("aten::"))
    mean = {k: round(sum(v) / len(v), 3) for k, v in phases.items()}
    return {
        "recipe": recipe.name, "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(dev),
        "mixed_precision": mp, "batch": bs, "patch_lr": recipe.patch_lr, "threads": torch.get_num_threads(),
        "params_m": round(sum(p.numel() for p in acc.unwrap_model(model).parameters()) / 1e6, 3),
        "phases_ms": mean, "synced_step_ms": round(sum(mean.values()), 3),
        "step_ms": round(free_ms, 3), "it_per_s": round(1000.0 / free_ms, 2),
        "samples_per_s": round(bs * 1000.0 / free_ms, 1),
        "kernels_per_step": kernels, "kernel_kind": "cuda kernels" if dev.type == "cuda" else "aten ops",
        "launch_floor_ms_at_5us": round(kernels * 0.005, 2) if kernels else None,
        "steps": steps, "warmup": warmup, "warmup_s": round(warmup_s, 1), "compiled": bool(compile),
    }


def main(argv: Optional[list[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m sr_core.training profile",
                                 description="time each phase of a recipe's training step (see the module docstring)")
    ap.add_argument("recipe")
    ap.add_argument("--pack", default=str(Path(__file__).resolve().parents[2] / "packs" / "train_x4_s256_n320.npz"))
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--mixed-precision", default="auto", choices=("auto", "no", "bf16", "fp16"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=None, help="batch size (default: the recipe's)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--random-sources", action="store_true",
                    help=f"seeded random frozen sources ({', '.join(SOURCE_FIELDS)}) of the real size")
    ap.add_argument("--no-kernels", action="store_true", help="skip the kernel count (torch.profiler)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--compile", action="store_true", help="the step as `--compile` trains it (torch.compile)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    recipe = get_recipe(a.recipe)
    sets = list(a.set)
    if a.random_sources:
        sets = [f"{k}=" for k in SOURCE_FIELDS if hasattr(recipe, k)] + sets
    if a.batch:
        sets.append(f"batch_size={a.batch}")
    res = profile_recipe(apply_overrides(recipe, sets), a.pack, device=a.device, steps=a.steps, warmup=a.warmup,
                         mixed_precision=a.mixed_precision, count_kernels=not a.no_kernels, compile=a.compile)
    ph = "  ".join(f"{k} {v:.1f}" for k, v in res["phases_ms"].items())
    print(f"{res['recipe']} on {res['device']} ({res['mixed_precision']}, batch {res['batch']}, "
          f"{res['params_m']} M params, {res['threads']} threads{', compiled' if res['compiled'] else ''}; "
          f"{res['warmup']} warm-up steps {res['warmup_s']} s)")
    print(f"  synced phases (ms): {ph}  = {res['synced_step_ms']:.1f}")
    print(f"  trainer's step: {res['step_ms']:.1f} ms = {res['it_per_s']} it/s = {res['samples_per_s']} samples/s")
    if res["kernels_per_step"]:
        print(f"  {res['kernels_per_step']} {res['kernel_kind']} per step (x 5 us = {res['launch_floor_ms_at_5us']} ms)")
    print(json.dumps(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0
