"""The explicit table of methods.

Each entry is a factory that builds the method object (cheap: networks load lazily on first run).
A duplicate id raises; an unknown id raises an error listing the valid ids.  Methods are listed
in the order they are registered, which is the order the UI shows them.
"""

from __future__ import annotations

from typing import Callable, Iterator, Optional

from .types import InputError, MethodInfo, SRMethod

Factory = Callable[[], SRMethod]


class Registry:
    def __init__(self) -> None:
        self._factories: dict[str, Factory] = {}
        self._instances: dict[str, SRMethod] = {}

    def register(self, method_id: str, factory: Factory) -> None:
        if method_id in self._factories:
            raise ValueError(f"method id {method_id!r} is registered twice")
        self._factories[method_id] = factory

    def add(self, method: SRMethod) -> None:
        """Register an already built method object (tests use this with fakes)."""
        self.register(method.info.id, lambda m=method: m)

    def ids(self) -> list[str]:
        return list(self._factories)

    def __contains__(self, method_id: object) -> bool:
        return method_id in self._factories

    def get(self, method_id: str) -> SRMethod:
        if method_id not in self._factories:
            raise InputError(f"unknown method {method_id!r}; valid ids: {', '.join(self.ids())}")
        if method_id not in self._instances:
            method = self._factories[method_id]()
            if method.info.id != method_id:
                raise ValueError(f"factory for {method_id!r} built a method with id {method.info.id!r}")
            self._instances[method_id] = method
        return self._instances[method_id]

    def infos(self) -> list[MethodInfo]:
        return [self.get(i).info for i in self.ids()]

    def __iter__(self) -> Iterator[SRMethod]:
        return (self.get(i) for i in self.ids())


def _build_default() -> Registry:
    from .methods.baselines import Bicubic, Lanczos
    from .methods.osediff import OSEDiff
    from .methods.resshift import ResShift
    from .methods.rrdb import RRDBMini
    from .methods.sinsr import SinSR
    from .methods.srdiff import SRDiff
    from .methods.stablesr import StableSR

    reg = Registry()
    reg.register("bicubic", Bicubic)
    reg.register("lanczos", Lanczos)
    # Bundled minis, trained by this project (assets/weights/<id>/, each with a model card):
    reg.register("rrdb-mini", RRDBMini)
    # Minis whose training needs a GPU appear once their bundle has been exported (see their recipes):
    from . import weights

    for mini_id, factory, marker in (("resshift-mini", lambda: ResShift("mini"), "resshift-mini/config.json"),
                                     # sinsr-mini's teacher map (what it was distilled on), beside the student
                                     ("resshift-mini-det", lambda: ResShift("mini", sampler="deterministic"),
                                      "resshift-mini/config.json"),
                                     ("sinsr-mini", lambda: SinSR("mini"), "sinsr-mini/config.json"),
                                     ("srdiff-mini", lambda: SRDiff("mini"), "srdiff-mini/config.json"),
                                     # the mini-sd prior + LoRA; a mini-sd folder alone is not a method
                                     ("osediff-mini", lambda: OSEDiff("mini", merge=True),
                                      "osediff-mini/osediff.safetensors"),
                                     ("stablesr-mini", lambda: StableSR("mini"), "stablesr-mini/stablesr.safetensors")):
        if (weights.ASSETS_WEIGHTS / marker).is_file():
            reg.register(mini_id, factory)
    # Official checkpoints (downloaded on first use, or from SR_WEIGHTS_DIR / the env vars):
    reg.register("sinsr", lambda: SinSR("v1"))  # one step; the official demo's checkpoint
    reg.register("sinsr-v2", lambda: SinSR("v2"))  # one step; RealSR-tuned
    reg.register("resshift", lambda: ResShift("v3"))  # 4 steps; the official quick start
    reg.register("resshift-v1", lambda: ResShift("v1"))  # 15 steps; the paper model, SinSR's teacher
    reg.register("resshift-v1-det", lambda: ResShift("v1", sampler="deterministic"))  # SinSR's teacher map
    reg.register("resshift-v2", lambda: ResShift("v2"))  # 15 steps
    reg.register("resshift-bicsr", lambda: ResShift("bicsr"))  # 4 steps; bicubic degradation (benchmarks)
    reg.register("srdiff", lambda: SRDiff("official"))  # DIV2K x4, 100 steps (respaced 1..100)
    reg.register("osediff", lambda: OSEDiff("official"))  # 1 step on SD-2.1-base + the official LoRA
    reg.register("stablesr", lambda: StableSR("official"))  # 200 steps, fidelity w (Iceclear/StableSR)
    reg.register("stablesr-turbo", lambda: StableSR("turbo"))  # 4 steps, fidelity w
    return reg


_DEFAULT: Optional[Registry] = None


def default_registry() -> Registry:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = _build_default()
    return _DEFAULT
