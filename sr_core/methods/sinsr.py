"""SinSR: ResShift distilled into one network call (Wang et al., CVPR 2024).

Same autoencoder, UNet architecture and pipeline as `sr_core.methods.resshift` (official
wyf0912/SinSR `sampler.py` `Sampler.sample_func` with `--one_step`, `models/gaussian_diffusion.py`
`p_sample_loop(one_step=True)`): x_T = y + kappa sqrt(eta_T) eps on the 15-step ResShift-v1
schedule, then the student's x0 prediction at the last index t = T-1 is decoded.  The seed still
matters (eps).  `SinSR(version)` serves the released `SinSR_v1.pth` / `SinSR_v2.pth` (with ResShift's
`autoencoder_vq_f4.pth`) and the bundled project mini (`assets/weights/sinsr-mini/`) through this one
class.  Steps are fixed at 1: SinSR's multi-step path runs the *teacher* (ResShift v1 weights) with
the deterministic sampler, which is `ResShift("v1", sampler="deterministic")`, not these weights.
The code is ours.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Optional

from ..nets.resshift_configs import get_config, mini_config
from ..types import StepsSpec
from .resshift import ResShiftPipeline, _bundle_explicit, _mini_specs, _official_specs

__all__ = ["SinSR", "SINSR_VERSIONS"]

SINSR_VERSIONS: dict[str, Optional[str]] = {
    "v1": "SinSR_v1",  # the official demo's and README quick start's checkpoint
    "v2": "SinSR_v2",  # the checkpoint SinSR reports on RealSR
    "mini": None,  # the bundled project mini
}


class SinSR(ResShiftPipeline):
    """SRMethod for SinSR: `SinSR("v1")`, `SinSR("v2")`, `SinSR("mini")`; one UNet call per tile.

    `paths` / `bundle_dir` / `dtype` as in `ResShift`.
    """

    sampler_name = "one_step"
    schedule_start_cap = math.sqrt(0.001)  # SinSR's copy of the schedule (does not bind for its config)

    def __init__(self, version: str = "v1", *, method_id: Optional[str] = None,
                 paths: Optional[Mapping[str, Any]] = None, bundle_dir: Optional[os.PathLike | str] = None,
                 dtype: str = "auto"):
        if version not in SINSR_VERSIONS:
            raise ValueError(f"unknown SinSR version {version!r}; valid: {', '.join(SINSR_VERSIONS)}")
        self.version = version
        if version == "mini":
            mid = method_id or "sinsr-mini"
            licence = "code MIT; weights trained by this project (see the model card)"
            specs = _mini_specs("sinsr-mini", licence)
            super().__init__(config=None, specs=specs, explicit=_bundle_explicit(specs, bundle_dir, paths),
                             dtype=dtype)
            self.config = self._locate_config() or mini_config("SinSR_v1")
            label = "SinSR mini (1 step)"
            desc = "SinSR's one-step student at a small width, trained by this project; "
        else:
            cfg = get_config(SINSR_VERSIONS[version])
            mid = method_id or ("sinsr" if version == "v1" else f"sinsr-{version}")
            specs = _official_specs(cfg, "SINSR_WEIGHTS")
            licence = cfg["licence"]
            super().__init__(config=cfg, specs=specs, explicit=paths or {}, dtype=dtype)
            label = f"SinSR {version} (1 step)"
            desc = f"Official SinSR weights {cfg['filename']}: {cfg.get('notes', '')} "
        desc += "one UNet call from x_T = LR latent + noise (its ResShift teacher makes 15)."
        self._set_info(mid, label, desc, self.config, licence)

    def _steps_spec(self, cfg: Mapping[str, Any]) -> StepsSpec:
        return StepsSpec(1, 1, 1)
