"""Carry trained runs off a lent GPU machine and back into `runs/` here, within that machine's limits.

A lent device returns at most 8 files of at most 16 MiB each (64 MiB together) from `$OUT`, while a run's
`ckpt/last.pt` holds the whole training module (frozen priors, LPIPS, a fake-score copy), its EMA and the
optimiser state: 16-200 MB per run here.  So the device writes a *handoff* instead and this machine
rebuilds the run folder from it:

    python -m sr_core.training handoff runs/vqf4-mini runs/resshift-mini ... --out $OUT      (on the device)
    python -m sr_core.training adopt FILES_AT --runs runs                                     (here)

A handoff of run R is `R.NN-of-MM.safetensors` shards (each under `max_mib`), holding the EMA tensors that
training changed -- every parameter that is trainable in a freshly built model of the run's recipe, plus
any tensor that differs from that fresh build -- in fp16 by default (what the bundles store; fp32 on
request; a tensor with values past fp16's range, such as vqf4-mini's code-hit counter, travels in fp32),
and in the first shard's metadata the run's recipe, step, wall time, train_info.json, log.csv and terms.csv.
Everything else (frozen networks, LPIPS) is rebuilt by `recipe.build_model()` from the same sources as in training, so `adopt` needs those sources
here under the same paths (the recipes name them relative to the repository: adopt the runs in the order
they were trained, e.g. vqf4-mini before resshift-mini).  The adopted `ckpt/last.pt` holds model = ema =
the carried weights and no optimiser state: `export`, the scripts' export/eval stages and the methods
read it as any run; `--resume` from it starts a fresh optimiser (the trainer says so).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable, Optional

import torch

__all__ = ["write_handoff", "adopt_handoff", "handoff_files", "handoff_seq", "MAX_FILES"]

MAX_FILES = 8  # what a lent device returns from $OUT: 8 files, 16 MiB each, 64 MiB together
MAX_TOTAL_MIB = 64.0
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}
_SHARD = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+?)\.(?P<i>\d{2})-of-(?P<n>\d{2})\.safetensors$")


def _fresh(recipe) -> torch.nn.Module:
    torch.manual_seed(recipe.seed)  # the trainer seeds the same way before building
    return recipe.build_model()


def _carried_names(recipe, trained: dict) -> list[str]:
    fresh = _fresh(recipe)
    own = fresh.state_dict()
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    missing = sorted(set(own) - set(trained))
    if missing:
        raise ValueError(f"the checkpoint lacks {len(missing)} tensors of a fresh {recipe.name} model "
                         f"(e.g. {missing[:3]}): not a run of this recipe")
    return [n for n, v in own.items()
            if n in trainable or v.shape != trained[n].shape or not torch.equal(v, trained[n].to(v.dtype))]


def write_handoff(run_dir, out_dir, *, name: Optional[str] = None, max_mib: float = 15.0, seq: int = 0,
                  dtype: str = "fp16") -> list[Path]:
    """Write the handoff shards of the run folder `run_dir` into `out_dir`; returns their paths.  `seq`: the
    run's place in its pipeline (`adopt` rebuilds runs in that order, their sources first).  `dtype`: fp16
    (half the size; exporting the adopted run to an fp16 bundle gives the same file as exporting the
    original) or fp32 (exact)."""
    from safetensors.torch import save_file

    from .export import recipe_from_dict

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    ck = torch.load(run_dir / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    recipe = recipe_from_dict(ck["recipe"])
    ema = ck.get("ema") or ck["model"]
    names = _carried_names(recipe, ema)
    name = name or run_dir.name
    if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name):
        raise ValueError(f"handoff name {name!r}: letters, digits, '.', '_' and '-' only (the device's rule)")
    info_p, log_p = run_dir / "train_info.json", run_dir / "log.csv"
    meta = {"format": "sr_core-handoff-1", "recipe": json.dumps(ck["recipe"]), "step": str(int(ck["step"])),
            "elapsed": repr(float(ck.get("elapsed", 0.0))), "mixed_precision": str(ck.get("mixed_precision", "?")),
            "train_info": info_p.read_text() if info_p.is_file() else "{}",
            "log_csv": log_p.read_text() if log_p.is_file() else "", "names": json.dumps(names), "seq": str(int(seq))}
    terms_p = run_dir / "terms.csv"
    if terms_p.is_file():
        meta["terms_csv"] = terms_p.read_text()
    limit = int(max_mib * 2**20) - 4096
    # bytes of a shard: its tensors, a header entry per tensor (name, dtype, shape, offsets) and, in the
    # first shard, the metadata (JSON-escaped: up to twice its length)
    size = 2 * sum(len(k) + len(v) + 8 for k, v in meta.items())
    shards: list[dict] = [{}]
    dt = DTYPES[dtype]
    for n in names:
        src = ema[n].detach()
        t = src.to(dt).contiguous() if src.is_floating_point() else src.contiguous()
        if t.is_floating_point() and not torch.isfinite(t).all() and torch.isfinite(src).all():
            # a value past fp16's range (a running counter such as vqf4-mini's code_hits): this tensor travels
            # in fp32, so one statistic does not cost the call its whole handoff
            t = src.to(torch.float32).contiguous()
        b = t.numel() * t.element_size() + len(n) + 96
        if b > limit:
            raise ValueError(f"{run_dir}: tensor {n} alone is {b / 2**20:.1f} MiB > {max_mib} MiB")
        if size + b > limit and shards[-1]:
            shards.append({})
            size = 0
        shards[-1][n] = t
        size += b
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(shards):
        p = out_dir / f"{name}.{i:02d}-of-{len(shards):02d}.safetensors"
        save_file(part, str(p), metadata=meta if i == 0 else {"format": "sr_core-handoff-1"})
        paths.append(p)
    return paths


def handoff_files(folder) -> dict[str, list[Path]]:
    """The complete handoffs in `folder`: name -> its shards in order."""
    found: dict[str, dict[int, Path]] = {}
    counts: dict[str, int] = {}
    for p in sorted(Path(folder).glob("*.safetensors")):
        m = _SHARD.match(p.name)
        if m:
            found.setdefault(m["name"], {})[int(m["i"])] = p
            counts[m["name"]] = int(m["n"])
    out = {}
    for name, parts in found.items():
        n = counts[name]
        if sorted(parts) != list(range(n)):
            raise ValueError(f"handoff {name} in {folder}: shards {sorted(parts)} of {n} (some did not come back)")
        out[name] = [parts[i] for i in range(n)]
    return out


def _meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def handoff_seq(shards) -> int:
    """The pipeline place recorded in a handoff's first shard."""
    return int(_meta(list(shards)[0]).get("seq", 0))


def adopt_handoff(shards: Iterable, run_dir) -> dict:
    """Rebuild the run folder `run_dir` (ckpt/last.pt, train_info.json, log.csv) from one handoff's shards."""
    from safetensors.torch import load_file

    from .export import recipe_from_dict
    from .trainer import _atomic_save

    shards = [Path(p) for p in shards]
    meta = _meta(shards[0])
    if meta.get("format") != "sr_core-handoff-1" or "recipe" not in meta:
        raise ValueError(f"{shards[0]} is not the first shard of an sr_core handoff")
    carried: dict[str, torch.Tensor] = {}
    for p in shards:
        carried.update(load_file(str(p)))
    names = json.loads(meta["names"])
    if sorted(carried) != sorted(names):
        raise ValueError(f"{shards[0].name}: the shards hold {len(carried)} tensors, the handoff lists {len(names)}")
    rec = json.loads(meta["recipe"])
    recipe = recipe_from_dict(rec)
    state = _fresh(recipe).state_dict()
    for n, v in carried.items():
        if n not in state or state[n].shape != v.shape:
            raise ValueError(f"{n}: {tuple(v.shape)} does not fit a fresh {recipe.name} model here "
                             f"({tuple(state[n].shape) if n in state else 'absent'})")
        state[n] = v.to(state[n].dtype)  # fp16 shards -> the model's fp32
    run_dir = Path(run_dir)
    step = int(meta["step"])
    _atomic_save({"model": state, "ema": state, "step": step, "elapsed": float(meta["elapsed"]), "recipe": rec,
                  "mixed_precision": meta.get("mixed_precision", "?"), "adopted_from": [p.name for p in shards]},
                 run_dir / "ckpt" / "last.pt")
    (run_dir / "train_info.json").write_text(meta.get("train_info") or "{}")
    if meta.get("log_csv"):
        (run_dir / "log.csv").write_text(meta["log_csv"])
    if meta.get("terms_csv"):
        (run_dir / "terms.csv").write_text(meta["terms_csv"])
    return {"run": str(run_dir), "recipe": recipe.name, "step": step, "tensors": len(carried)}
