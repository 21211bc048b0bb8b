"""Generic training loop on Hugging Face accelerate: one CPU, one GPU, or many GPUs/nodes
(`accelerate launch -m sr_core.training RECIPE ...`).

Per step: a seeded batch from the pack (`data.PackSource`, a pure function of seed/step/rank), the
recipe's degradation on the device, the recipe's loss under autocast (bf16 on GPUs that support it,
else fp16 with loss scaling; bf16 on CPUs with native bf16 support), gradient clipping, an Adam step
with the recipe's warm-up + cosine learning rate, and an EMA of the weights.  Every `ckpt_every`
steps `OUT/ckpt/last.pt` holds model, EMA, optimiser, step, elapsed time and RNG states so that
`--resume` continues where it stopped; `OUT/log.csv` gets (step, loss, lr, seconds) rows,
`OUT/terms.csv` the means of the loss's named parts over the same steps (`Recipe.loss_terms`), and
`OUT/val.csv` the Set5 x4 validation of the EMA weights through `sr_core.evaluate.evaluate_fn` (the
same numbers as `sr_core eval`).  `OUT/train_info.json` records what the model card needs.  The
structure follows common accelerate training scripts; the code is ours.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from .data import PackSource, load_pack, pack_summary
from .recipes import Recipe

REPO_ROOT = Path(__file__).resolve().parents[2]
SET5_HR = REPO_ROOT.parent / "shared" / "data" / "eval" / "Set5" / "HR"


def cpu_bf16_supported() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # pragma: no cover - older builds
        return False


def choose_mixed_precision(mode: str, device_type: str) -> str:
    """'auto' -> bf16 on GPUs that support it, fp16 on other GPUs, bf16 on CPUs with native bf16, else no."""
    if mode != "auto":
        return mode
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_bf16_supported() else "no"


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- lerp(ema, model, 1 - decay) for the parameters, a copy for the buffers: a few fused (foreach)
    kernels rather than two per tensor -- the minis have 100s of tensors, and on a GPU each launch costs
    about as much as the arithmetic."""
    pairs = [(e, p.detach()) for e, p in zip(ema.parameters(), model.parameters())]
    same = [(e, p) for e, p in pairs if e.dtype == p.dtype and e.device == p.device]
    if same:
        torch._foreach_lerp_([e for e, _ in same], [p for _, p in same], 1.0 - decay)
    for e, p in pairs:
        if e.dtype != p.dtype or e.device != p.device:
            e.lerp_(p.to(e), 1.0 - decay)
    bufs = [(e, b) for e, b in zip(ema.buffers(), model.buffers())]
    if bufs:
        torch._foreach_copy_([e for e, _ in bufs], [b for _, b in bufs])


INIT_BATCH = 32  # crops handed to Recipe.init_from_data (every process gets rank 0's)


def train_step(recipe: Recipe, acc, model, ema, opt, source, step: int, batch_size: int, rank: int = 0,
               mark: Optional[Callable[[str], None]] = None, fwd: Optional[torch.nn.Module] = None,
               terms: Optional[dict] = None) -> torch.Tensor:
    """One optimiser step of the trainer (batch, degradation, loss, backward, clipping, Adam, EMA); returns
    the loss (on the device).  `mark(phase)` is called after each phase: `profile` times them with it.
    `fwd`: what computes the loss, when not `model` itself (its `torch.compile`d wrapper: same parameters).
    `terms`: filled with the loss's named scalar parts (detached, on the device)."""
    mark = mark or (lambda phase: None)
    dev = acc.device
    b = source.batch(step, batch_size, rank)
    mark("batch")
    hr = b["hr"].to(dev, non_blocking=True)
    lr_img = recipe.degradation.apply(hr, b["lr"].to(dev, non_blocking=True), b["generator"], recipe.scale)
    # the rest of the batch as the source gave it: its generator (CPU) and a derived pack's extras
    rest = {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items() if k not in ("hr", "lr")}
    mark("to_device")
    with acc.autocast():
        out = recipe.loss_terms(model if fwd is None else fwd, {**rest, "hr": hr, "lr": lr_img})
    loss = out["loss"]
    if terms is not None:
        terms.update({k: v.detach().float().reshape(()) for k, v in out.items()
                      if k != "loss" and torch.is_tensor(v) and v.numel() == 1})
    mark("forward")
    acc.backward(loss)
    mark("backward")
    if recipe.grad_clip and acc.sync_gradients:
        acc.clip_grad_norm_(model.parameters(), recipe.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    mark("optimizer")
    ema_update(ema, acc.unwrap_model(model), min(recipe.ema_decay, (2.0 + step) / (11.0 + step)))
    mark("ema")
    return loss.detach()


def compile_for_training(model: torch.nn.Module) -> torch.nn.Module:
    """`torch.compile(model)` for the loss of the training step (static shapes: the batches of a run have one
    size).  Measured on this project's CPU (`profile resshift-mini --batch 8 --threads 2`, bf16): 1.83 ->
    1.09 s a step, after ~1 min of compiling (inductor's cache warm; ~4 min cold); on a GPU, where the eager
    step is bound by ~3e4 kernel launches, fusing is the point.  The wrapper shares the module's parameters."""
    return torch.compile(model, dynamic=False)


def _load_resumable(net: torch.nn.Module, state: dict, where) -> list[str]:
    """Load a checkpoint's state into `net` for --resume: every trainable parameter must be there with its
    shape; frozen tensors the checkpoint holds but this build lacks (an LPIPS net turned off) are skipped,
    and frozen ones this build has but the checkpoint lacks keep their built values (the same sources).
    Returns the skipped names."""
    own = net.state_dict()
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    missing = sorted(trainable - set(state))
    bad = sorted(n for n in trainable & set(state) if tuple(state[n].shape) != tuple(own[n].shape))
    if missing or bad:
        raise ValueError(f"{where} does not fit this recipe's trainable parameters: missing {missing[:5]}, "
                         f"other shapes {bad[:5]}")
    skipped = sorted(set(state) - set(own))
    net.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return skipped


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def validate(recipe: Recipe, model: torch.nn.Module, device: torch.device, hr_dir=SET5_HR,
             limit: Optional[int] = None, scale: Optional[int] = None) -> dict:
    """x4 benchmark figures of `model` (fp32, eval mode) on `hr_dir` via sr_core.evaluate.evaluate_fn."""
    from ..evaluate import evaluate_fn

    was = model.training
    model.eval()
    try:
        res = evaluate_fn(lambda x: recipe.infer(model, x.to(device)).cpu(), hr_dir,
                          scale=scale or recipe.scale, limit=limit or None, method=recipe.name)
    finally:
        model.train(was)
    return res


def train(recipe: Recipe, *, pack_path, out, max_steps: Optional[int] = None, resume: bool = False,
          device: str = "auto", mixed_precision: str = "auto", time_budget_min: Optional[float] = None,
          val_dir=SET5_HR, threads: Optional[int] = None, log: Callable[[str], None] = print,
          compile: bool = False) -> dict:
    """Train `recipe` on the pack at `pack_path`, writing into `out`; returns the train_info dict.

    `compile`: the loss is computed through `torch.compile(model)` (inductor: fused kernels, far fewer
    launches; the first step compiles, inside the time budget).  Checkpoints, EMA, validation and export
    use the module itself, so a compiled run's files are a plain run's."""
    from accelerate import Accelerator

    if threads:
        torch.set_num_threads(int(threads))
    out = Path(out)
    steps_total = int(max_steps or recipe.max_steps)
    want_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    dev_type = "cpu" if want_cpu else "cuda"
    mp = choose_mixed_precision(mixed_precision, dev_type)
    acc = Accelerator(cpu=want_cpu, mixed_precision=mp)
    main = acc.is_main_process
    world, rank = acc.num_processes, acc.process_index
    if recipe.batch_size % world:
        raise ValueError(f"batch size {recipe.batch_size} is not divisible by {world} processes")
    per_proc = recipe.batch_size // world

    pack = load_pack(pack_path)
    source = PackSource(pack, recipe.patch_lr, recipe.scale, recipe.seed)

    torch.manual_seed(recipe.seed)
    model = recipe.build_model()
    ckpt_path = out / "ckpt" / "last.pt"
    if type(recipe).init_from_data is not Recipe.init_from_data and not (resume and ckpt_path.exists()):
        # a fresh run of a recipe with a data-dependent init
        b0 = source.batch(0, INIT_BATCH, 0)
        b0 = {"hr": b0["hr"].float(), "lr": recipe.degradation.apply(b0["hr"].float(), b0["lr"].float(),
                                                                     b0["generator"], recipe.scale)}
        note = recipe.init_from_data(model, b0)
        if note and main:
            log(note)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    # only what trains: frozen priors, teachers and the LPIPS net stay out of Adam (and so out of its state)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=recipe.lr, betas=tuple(recipe.betas),
                           weight_decay=recipe.weight_decay)

    step, elapsed_before = 0, 0.0
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        if ck.get("recipe", {}).get("name") != recipe.name:
            raise ValueError(f"{ckpt_path} belongs to recipe {ck.get('recipe', {}).get('name')!r}, not {recipe.name!r}")
        skipped = _load_resumable(model, ck["model"], ckpt_path)
        _load_resumable(ema, ck["ema"], ckpt_path)
        if skipped and main:
            log(f"{ckpt_path}: {len(skipped)} frozen tensors it holds are not in this build (e.g. "
                f"{skipped[0]}: another lambda_lpips?); ignored")
        if "optimizer" in ck:
            try:
                opt.load_state_dict(ck["optimizer"])
            except ValueError as e:  # saved before frozen tensors left Adam, or another set of trainable ones
                if main:
                    log(f"{ckpt_path}: its optimiser state does not fit ({e}): Adam starts afresh")
        elif main:  # a run adopted from a device handoff (sr_core/training/handoff.py) carries no optimiser
            log(f"{ckpt_path} has no optimiser state (an adopted handoff): Adam starts afresh")
        step, elapsed_before = int(ck["step"]), float(ck.get("elapsed", 0.0))
        if "rng_cpu" in ck:
            torch.set_rng_state(ck["rng_cpu"])
        if main:
            log(f"resumed from {ckpt_path} at step {step}")
    elif resume and main:
        log(f"no checkpoint at {ckpt_path}; starting from scratch")

    model, opt = acc.prepare(model, opt)
    ema.to(acc.device)
    dev = acc.device
    n_params = sum(p.numel() for p in acc.unwrap_model(model).parameters())
    fwd = compile_for_training(model) if compile else None
    compiled_ok = False  # set after the first compiled step went through

    log_path, val_path, terms_path = out / "log.csv", out / "val.csv", out / "terms.csv"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_csv(log_path, ["step", "loss", "lr", "seconds"], step)
        _truncate_csv(terms_path, None, step)  # its columns are the recipe's terms, written with the first row
        _truncate_csv(val_path, ["step", "psnr_y", "ssim_y", "lr_psnr", "seconds"], step)
        log(f"recipe {recipe.name}: {n_params / 1e6:.3f} M params, batch {recipe.batch_size} "
            f"({world} x {per_proc}), LR patch {recipe.patch_lr}, steps {step}->{steps_total}, device {dev}, "
            f"mixed precision {mp}, pack {pack_summary(pack.meta)}")

    t_start = time.time()
    budget_s = time_budget_min * 60.0 if time_budget_min else None

    def elapsed() -> float:
        return elapsed_before + time.time() - t_start

    def progress() -> float:
        p = step / max(steps_total, 1)
        if budget_s:
            p = max(p, elapsed() / budget_s)
        return p

    def save_ckpt() -> None:
        if main:
            _atomic_save({
                "model": acc.unwrap_model(model).state_dict(), "ema": ema.state_dict(),
                "optimizer": opt.state_dict(), "step": step, "elapsed": elapsed(),
                "recipe": recipe.to_dict(), "rng_cpu": torch.get_rng_state(),
                "mixed_precision": mp, "world": world,
            }, ckpt_path)
        acc.wait_for_everyone()

    def run_val() -> Optional[dict]:
        res = None
        if main and val_dir and Path(val_dir).exists():
            t0 = time.time()
            res = validate(recipe, ema, dev, val_dir, recipe.val_limit or None)
            with open(val_path, "a", newline="") as f:
                csv.writer(f).writerow([step, f"{res['psnr_y']:.4f}", f"{res['ssim_y']:.5f}",
                                        f"{res['lr_psnr']:.3f}", f"{elapsed():.1f}"])
            log(f"step {step}: Set5 x{recipe.scale} (EMA) PSNR-Y {res['psnr_y']:.3f} dB, SSIM-Y "
                f"{res['ssim_y']:.4f} ({time.time() - t0:.1f} s)")
        acc.wait_for_everyone()
        return res

    model.train()
    loss_acc, loss_n, last_log = 0.0, 0, time.time()
    terms_acc: dict = {}
    terms_cols = _csv_header(terms_path) if main else None
    stopped_early = False
    while step < steps_total:
        if budget_s and elapsed() >= budget_s:
            stopped_early = True
            if main:
                log(f"time budget of {time_budget_min} min reached at step {step}")
            break
        lr_now = recipe.lr_at(step, progress())
        for g in opt.param_groups:
            g["lr"] = lr_now
        terms: dict = {}
        try:
            loss = train_step(recipe, acc, model, ema, opt, source, step, per_proc, rank, fwd=fwd, terms=terms)
        except Exception as e:  # a compiler that fails on this machine: the run goes on eagerly, not lost
            if fwd is None or compiled_ok:
                raise
            if main:
                log(f"torch.compile failed at the first step ({type(e).__name__}: {str(e).strip()[:300]}); "
                    "training eagerly")
            fwd = None
            opt.zero_grad(set_to_none=True)
            terms = {}
            loss = train_step(recipe, acc, model, ema, opt, source, step, per_proc, rank, terms=terms)
        compiled_ok = fwd is not None
        step += 1
        # summed on the device: a float() here would make the host wait for the GPU every step
        loss_acc = loss_acc + loss.float()
        for k, v in terms.items():
            terms_acc[k] = terms_acc[k] + v if k in terms_acc else v
        loss_n += 1
        if step % recipe.log_every == 0 or step == steps_total:
            names = sorted(terms_acc)  # the same on every process (one recipe)
            stacked = torch.stack([torch.as_tensor(loss_acc, device=dev).float().reshape(()),
                                   *[terms_acc[k].to(dev) for k in names]]) / max(loss_n, 1)
            means = acc.reduce(stacked, "mean").tolist()  # one host sync for the loss and its parts
            mean, term_means = means[0], dict(zip(names, means[1:]))
            if main:
                with open(log_path, "a", newline="") as f:
                    csv.writer(f).writerow([step, f"{mean:.6f}", f"{lr_now:.3e}", f"{elapsed():.1f}"])
                if term_means:
                    if terms_cols is None:
                        terms_cols = ["step", *names]
                        with open(terms_path, "w", newline="") as f:
                            csv.writer(f).writerow(terms_cols)
                    with open(terms_path, "a", newline="") as f:
                        csv.writer(f).writerow([step, *(f"{term_means[c]:.6f}" if c in term_means else ""
                                                        for c in terms_cols[1:])])
                rate = loss_n / max(time.time() - last_log, 1e-9)
                parts = "".join(f" {k} {v:.4g}" for k, v in term_means.items())
                log(f"step {step}/{steps_total} loss {mean:.5f}{' (' + parts.strip() + ')' if parts else ''} "
                    f"lr {lr_now:.2e} {rate:.2f} it/s elapsed {elapsed() / 60:.1f} min progress {100 * progress():.1f}%")
            loss_acc, loss_n, last_log = 0.0, 0, time.time()
            terms_acc = {}
        if recipe.ckpt_every and step % recipe.ckpt_every == 0:
            save_ckpt()
        if recipe.val_every and step % recipe.val_every == 0 and step < steps_total:
            run_val()
    save_ckpt()
    val = run_val()
    info = {
        "recipe": recipe.to_dict(), "steps": step, "max_steps": steps_total, "stopped_by_time_budget": stopped_early,
        "time_budget_min": time_budget_min, "wall_seconds": round(elapsed(), 1), "compiled": fwd is not None,
        "device": _device_name(dev), "mixed_precision": mp, "processes": world,
        "torch": torch.__version__, "params": n_params, "pack": str(pack_path), "pack_meta": {
            k: v for k, v in pack.meta.items() if k != "files"},
        "final_val_set5": ({k: v for k, v in val.items() if k != "images"} if val else None),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if main:
        (out / "train_info.json").write_text(json.dumps(info, indent=2))
        log(f"done: {step} steps in {elapsed() / 60:.1f} min -> {out}")
    return info


def _truncate_csv(path: Path, header: Optional[list[str]], keep_upto: int) -> None:
    """(Re)start a CSV log: keep the header and rows with step <= keep_upto (for --resume).  `header`
    None: the file's own (terms.csv); a file without one is removed (its first row writes it)."""
    rows, old = [], None
    if path.exists():
        with open(path, newline="") as f:
            r = csv.reader(f)
            old = next(r, None)
            if keep_upto > 0:
                rows = [row for row in r if row and int(row[0]) <= keep_upto]
    header = header or (old if rows else None)
    if header is None:
        path.unlink(missing_ok=True)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _csv_header(path: Path) -> Optional[list[str]]:
    if not path.is_file():
        return None
    with open(path, newline="") as f:
        return next(csv.reader(f), None)
