"""Preflight of a device run: every recipe of the chains an issue trains, at its smoke size, for a few steps
on the target device (mixed precision as the real run chooses it), chained as the real run chains them
(vqf4-mini -> resshift-mini -> sinsr-mini -> their decoders, ...), then a handoff of the results.

A lent GPU machine gives a session minutes, and the recipes have only ever run on a CPU here: a fault that
only the GPU path shows (a tensor left on the CPU, a dtype autocast does not cover) would otherwise surface
minutes into a stage, after the earlier stages' budget is spent.  The preflight takes seconds and fails the
call at once, naming the recipe:

    python -m sr_core.training preflight resshift sd --device cuda [--pack FILE]
"""

from __future__ import annotations

import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable, Iterable, Optional

from .recipes import apply_overrides, get_recipe

__all__ = ["CHAINS", "preflight"]

# the stages of each device issue, in training order, with the `--set` that points a stage at its source
# run (`{name}` = that run's folder in the preflight's work folder) and, where a recipe runs twice, the run's
# own name; the smoke sizes of the recipes keep the networks consistent along a chain
CHAINS: dict[str, list[tuple]] = {
    "resshift": [("vqf4-mini", ()), ("resshift-mini", ("ae_from={vqf4-mini}",)),
                 ("sinsr-mini", ("teacher_from={resshift-mini}",)),
                 ("vqf4-mini", ("train=decoder_sr", "init_from={resshift-mini}"), "dec-resshift-mini"),
                 ("vqf4-mini", ("train=decoder_sr", "init_from={sinsr-mini}"), "dec-sinsr-mini")],
    "sd": [("mini-sd-vae", ()), ("mini-sd", ("vae_from={mini-sd-vae}",)),
           ("osediff-mini", ("prior_from={mini-sd}",))],
    "stablesr": [("stablesr-mini", ()), ("stablesr-cfw-mini", ())],
}


def preflight(chains: Iterable[str], pack, *, device: str = "cuda", steps: int = 2, workdir=None,
              mixed_precision: str = "auto", log: Callable[[str], None] = print) -> dict:
    """Train each chain's recipes (smoke size) for `steps` steps on `device`, then hand them off.

    Returns {run: seconds} (a run is named after its recipe unless CHAINS names it); raises RuntimeError naming
    the first recipe (or the handoff) that failed.
    """
    from .handoff import write_handoff
    from .trainer import train

    chains = list(chains)
    unknown = [c for c in chains if c not in CHAINS]
    if unknown:
        raise ValueError(f"unknown chain(s) {unknown}; known: {', '.join(CHAINS)}")
    own = workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="preflight-") if own else None
    root = Path(tmp.name if own else workdir)
    times: dict[str, float] = {}
    try:
        for chain in chains:
            runs: dict[str, Path] = {}
            for name, extra, *label in CHAINS[chain]:
                run = label[0] if label else name
                recipe = get_recipe(name)
                sets = list(recipe.smoke) + [e.format(**{k: str(v) for k, v in runs.items()}) for e in extra]
                out = root / chain / run
                t0 = time.time()
                try:
                    train(apply_overrides(recipe, sets), pack_path=pack, out=out, max_steps=steps, device=device,
                          mixed_precision=mixed_precision, val_dir=None, log=lambda s: None)
                except Exception as e:  # the whole traceback: the point is to see a device fault at once
                    what = name if run == name else f"{name} (run {run})"
                    raise RuntimeError(f"preflight: recipe {what} failed on {device}:\n"
                                       f"{traceback.format_exc()}") from e
                times[run] = round(time.time() - t0, 2)
                runs[run] = out
                log(f"preflight {run} on {device}: {steps} steps in {times[run]} s")
            try:
                for i, r in enumerate(runs.values()):
                    write_handoff(r, root / chain / "handoff", seq=i)
            except Exception as e:
                raise RuntimeError(f"preflight: the handoff of chain {chain} failed:\n{traceback.format_exc()}") from e
            log(f"preflight {chain}: handoff ok")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return times


def main(argv: Optional[list[str]] = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m sr_core.training preflight", description=__doc__.split("\n\n")[0])
    ap.add_argument("chains", nargs="+", choices=sorted(CHAINS))
    ap.add_argument("--pack", required=True, help="a training pack (its crops feed the smoke runs)")
    ap.add_argument("--device", default="cuda", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--steps", type=int, default=2)
    a = ap.parse_args(argv)
    try:
        times = preflight(a.chains, a.pack, device=a.device, steps=a.steps, log=lambda s: print(s, flush=True))
    except RuntimeError as e:
        print(str(e), file=sys.stderr)
        return 1
    print(f"preflight ok: {len(times)} recipes in {sum(times.values()):.1f} s")
    return 0
