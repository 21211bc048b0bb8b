"""`rrdb-mini`: the RRDBNet regression model (SRDiff's LR encoder) trained by this project, x4.

The network is `sr_core.nets.rrdbnet.RRDBNet`, parameter-compatible with the `rrdb.*` part of the
official SRDiff checkpoint (LeiaLi/SRDiff `models/diffsr_modules.py`) and used with its value
convention: LR in [-1, 1] in, SR in [-1, 1] out.  The bundled weights (`assets/weights/rrdb-mini/`)
were trained here with L1 on MATLAB-bicubic x4 pairs (recipe `rrdb-mini` in
`sr_core/training/recipes.py`; see the model card).  The network size (nf, nb, gc, scale) is read
from the weights themselves, so an explicit path may also point at another RRDBNet state dict --
including an official SRDiff checkpoint, whose `rrdb.` prefix is stripped.  One loaded network is
cached per device.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Mapping, Optional

import torch

from .. import weights as W
from ..nets.rrdbnet import RRDBNet
from ..types import Availability, MethodInfo, RunContext, WeightSpec, WeightsUnavailable

__all__ = ["RRDBMini", "rrdb_config_from_state_dict", "build_rrdb_from_state_dict"]

WEIGHT_SPEC = WeightSpec(
    key="model",
    filename="model.safetensors",
    bundled="rrdb-mini/model.safetensors",
    env="SR_RRDB_MINI_WEIGHTS",
    licence="research use (training images are research-only)",
)


def _strip_rrdb_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep an official SRDiff checkpoint's `rrdb.*` entries (prefix removed); plain dicts pass through."""
    if any(k.startswith("rrdb.") for k in sd):
        return {k[5:]: v for k, v in sd.items() if k.startswith("rrdb.")}
    return dict(sd)


def rrdb_config_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict:
    """RRDBNet constructor arguments implied by the shapes and names of a state dict."""
    try:
        w_first = sd["conv_first.weight"]
        w_last = sd["conv_last.weight"]
        gc = int(sd["RRDB_trunk.0.RDB1.conv1.weight"].shape[0])
    except KeyError as e:
        raise WeightsUnavailable(f"not an RRDBNet state dict (no {e.args[0]})") from None
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r"RRDB_trunk\.(\d+)\.", k)] if m}
    n_up = sum(1 for i in range(1, 4) if f"upconv{i}.weight" in sd)
    return dict(in_nc=int(w_first.shape[1]), out_nc=int(w_last.shape[0]), nf=int(w_first.shape[0]),
                nb=max(blocks) + 1, gc=gc, scale=2 ** n_up)


def build_rrdb_from_state_dict(sd: Mapping[str, torch.Tensor]) -> RRDBNet:
    sd = _strip_rrdb_prefix(sd)
    net = RRDBNet(**rrdb_config_from_state_dict(sd))
    W.load_into(net, sd)
    return net.eval().requires_grad_(False)


class RRDBMini:
    """SRMethod for `rrdb-mini` (and any RRDBNet state dict given as an explicit path)."""

    info = MethodInfo(
        id="rrdb-mini",
        label="RRDB mini (regression, x4)",
        description=("RRDBNet (32 features, 8 blocks) trained by this project with L1 on bicubic x4: sharp, "
                     "deterministic, fast; the frozen LR encoder of SRDiff."),
        scales=(4,),
        default_scale=4,
        uses_seed=False,
        tiling_space="pixel",
        default_tile=256,
        size_multiple=1,
        default_color_fix="none",
        licence="code MIT; weights: research use (training images are research-only)",
        weights=(WEIGHT_SPEC,),
        family="regression",
    )

    def __init__(self, weights_path: Optional[str] = None):
        self.weights_path = weights_path
        self._nets: dict[str, RRDBNet] = {}
        self._lock = threading.Lock()

    def availability(self) -> Availability:
        try:
            W.resolve(WEIGHT_SPEC, self.weights_path, download=False)
        except WeightsUnavailable as e:
            return Availability(False, str(e))
        return Availability(True)

    def net(self, device: torch.device) -> RRDBNet:
        key = str(device)
        with self._lock:
            if key not in self._nets:
                path = W.resolve(WEIGHT_SPEC, self.weights_path)
                net = build_rrdb_from_state_dict(W.load_state_dict(Path(path)))
                self._nets[key] = net.to(device)
            return self._nets[key]

    @torch.inference_mode()
    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        net = self.net(ctx.device)
        if ctx.settings.scale != net.scale:
            raise WeightsUnavailable(f"these RRDBNet weights are x{net.scale}, not x{ctx.settings.scale}")
        ctx.report(0.0, "rrdb-mini")
        out = net(lr.to(ctx.device, torch.float32) * 2 - 1)
        ctx.report(1.0, "rrdb-mini")
        return ((out + 1) / 2).clamp(0, 1)
