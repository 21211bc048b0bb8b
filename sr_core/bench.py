"""Speed and memory per input size, measured in one process (`python -m sr_core bench`).

For each LR size the method runs once on a deterministic natural-looking test image (a smooth
random field plus edges, seeded) after a small warm-up run that loads the weights.  Reported per
size: seconds, the peak resident memory seen while it ran (sampled by a thread), the growth over
the resident memory before it, and on CUDA the peak allocated GPU memory.  Ratios between methods
or sizes are only meaningful between figures of one run on one machine; `compare` (`bench --method A,B`)
times several methods in one process, interleaved, and prints their ratios.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional

import torch

from .types import Settings


def _rss_mb() -> float:
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:  # pragma: no cover - non-Linux
        from .evaluate import peak_rss_mb

        return peak_rss_mb()


class _RssSampler:
    def __init__(self, every: float = 0.02):
        self.every, self.peak, self._stop = every, _rss_mb(), threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_mb())
            self._stop.wait(self.every)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())


def synthetic_image(size: int, seed: int = 0) -> torch.Tensor:
    """A deterministic (1,3,size,size) image in [0,1] with smooth regions, edges and texture."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g)
    base = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    stripes = ((xx // max(size // 16, 1) + yy // max(size // 16, 1)) % 2).float()[None, None] * 0.2
    noise = torch.rand(1, 3, size, size, generator=g) * 0.05
    return (base * 0.75 + stripes + noise).clamp(0, 1)


def bench(method_id: str, sizes=(256, 512, 1024), settings: Optional[Settings] = None, registry=None,
          repeat: int = 1, progress=None) -> dict:
    from .api import check_settings, resolve_device, run_method
    from .registry import default_registry
    from .types import WeightsUnavailable

    reg = registry or default_registry()
    method = reg.get(method_id)
    avail = method.availability()
    if not avail.ok:
        raise WeightsUnavailable(f"{method_id} is not available: {avail.reason}")
    settings = check_settings(method.info, settings or Settings(scale=method.info.default_scale))
    device = resolve_device(settings.device)
    run_method(method, synthetic_image(32), settings)  # warm-up: loads weights, first-call overheads
    rows = []
    for n, size in enumerate(sizes):
        x = synthetic_image(int(size), seed=n)
        times = []
        before = _rss_mb()
        if device.type == "cuda":  # pragma: no cover - needs a GPU
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        with _RssSampler() as sampler:
            for _ in range(max(1, repeat)):
                t0 = time.perf_counter()
                run_method(method, x, settings)
                if device.type == "cuda":  # pragma: no cover
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        row = {"size": int(size), "out_size": int(size) * settings.scale, "seconds": min(times),
               "seconds_all": times, "peak_rss_mb": round(sampler.peak, 1),
               "rss_growth_mb": round(sampler.peak - before, 1)}
        if device.type == "cuda":  # pragma: no cover
            row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        rows.append(row)
        if progress:
            progress((n + 1) / len(sizes), f"{size}px: {row['seconds']:.3f}s")
    return {"method": method_id, "device": str(device), "threads": torch.get_num_threads(),
            "settings": dict(settings.__dict__), "sizes": rows}


def format_bench(res: dict) -> str:
    lines = [f"method {res['method']} on {res['device']} ({res['threads']} threads)",
             f"{'LR size':>8} {'SR size':>8} {'seconds':>9} {'peak RSS MB':>12} {'growth MB':>10}"]
    for r in res["sizes"]:
        extra = f" {r['peak_cuda_mb']:>10.1f} (CUDA MB)" if "peak_cuda_mb" in r else ""
        lines.append(f"{r['size']:>8} {r['out_size']:>8} {r['seconds']:>9.3f} {r['peak_rss_mb']:>12.1f} "
                     f"{r['rss_growth_mb']:>10.1f}{extra}")
    return "\n".join(lines)


def compare(method_ids, sizes=(256,), settings_by_method: Optional[dict] = None, registry=None,
            repeat: int = 1, progress=None) -> dict:
    """Several methods timed in one process, interleaved (A, B, A, B, ... for every size and repeat), so that
    whatever else loads the machine weighs on all of them alike.  Per size: each method's best seconds and
    `x_first` = seconds of the first method / seconds of this one (how many times faster than the first).
    Memory is not reported here (the methods share the process): `bench` one method for that."""
    from .api import check_settings, resolve_device, run_method
    from .registry import default_registry
    from .types import InputError, WeightsUnavailable

    ids = [str(m) for m in method_ids]
    if len(ids) < 2 or len(set(ids)) != len(ids):
        raise InputError(f"compare needs two or more different methods, got {ids}")
    reg = registry or default_registry()
    methods, sets = {}, {}
    for mid in ids:
        m = reg.get(mid)
        avail = m.availability()
        if not avail.ok:
            raise WeightsUnavailable(f"{mid} is not available: {avail.reason}")
        st = (settings_by_method or {}).get(mid) or Settings(scale=m.info.default_scale)
        methods[mid], sets[mid] = m, check_settings(m.info, st)
    scales = {s.scale for s in sets.values()}
    if len(scales) != 1:
        raise InputError(f"the methods upscale by different factors {sorted(scales)}: compare them at one scale")
    scale = scales.pop()
    device = resolve_device(sets[ids[0]].device)
    for mid in ids:  # warm-up: loads weights, first-call overheads
        run_method(methods[mid], synthetic_image(32), sets[mid])
    rows = []
    for n, size in enumerate(sizes):
        x = synthetic_image(int(size), seed=n)
        times: dict[str, list[float]] = {mid: [] for mid in ids}
        for _ in range(max(1, repeat)):
            for mid in ids:
                t0 = time.perf_counter()
                run_method(methods[mid], x, sets[mid])
                if device.type == "cuda":  # pragma: no cover - needs a GPU
                    torch.cuda.synchronize()
                times[mid].append(time.perf_counter() - t0)
        best = {mid: min(t) for mid, t in times.items()}
        rows.append({"size": int(size), "out_size": int(size) * scale,
                     "seconds": best, "seconds_all": times,
                     "x_first": {mid: best[ids[0]] / best[mid] for mid in ids}})
        if progress:
            progress((n + 1) / len(sizes), f"{size}px: " + ", ".join(f"{m} {best[m]:.3f}s" for m in ids))
    return {"methods": ids, "device": str(device), "threads": torch.get_num_threads(),
            "settings": {mid: dict(sets[mid].__dict__) for mid in ids}, "repeat": max(1, repeat), "sizes": rows}


def format_compare(res: dict) -> str:
    ids = res["methods"]
    lines = [f"{', '.join(ids)} on {res['device']} ({res['threads']} threads), interleaved in one process, "
             f"best of {res['repeat']}",
             f"{'LR size':>8} {'SR size':>8} " + " ".join(f"{m + ' s':>16}" for m in ids)
             + " " + " ".join(f"{'x ' + m:>18}" for m in ids[1:])]
    for r in res["sizes"]:
        lines.append(f"{r['size']:>8} {r['out_size']:>8} " + " ".join(f"{r['seconds'][m]:>16.3f}" for m in ids)
                     + " " + " ".join(f"{r['x_first'][m]:>17.2f}x" for m in ids[1:]))
    lines.append(f"(x METHOD = seconds of {ids[0]} / seconds of METHOD: how many times faster than {ids[0]})")
    return "\n".join(lines)
