"""Training recipes as code: one frozen `Recipe` per bundled model (network config, loss, optimiser,
schedule, batch, patch size, degradation, export id).

A recipe says *what* to train; `trainer.py` says *how* (accelerate, EMA, checkpoints, logs).  Each
method issue adds its recipe here by subclassing `Recipe` (`build_model`, `loss`, `infer`) and
registering an instance in `RECIPES`.  `rrdb-mini` is the RRDBNet LR encoder of SRDiff (official
`tasks/rrdb.py` trains it with L1 on images in [-1, 1] with Adam; the official SRDiff encoder
config is nf 32, nb 8, gc 16), trained here on the benchmark's bicubic degradation.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .degradations import DegradationMix

__all__ = ["Recipe", "RRDBRecipe", "RECIPES", "get_recipe", "apply_overrides"]


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one training run except the data pack and the output folder."""

    name: str  # recipe id, also the default export id
    description: str = ""
    model_config: dict = field(default_factory=dict)  # network constructor arguments
    scale: int = 4  # upscaling factor of the LR made from HR
    batch_size: int = 16  # global batch (split across processes)
    patch_lr: int = 32  # LR patch side; HR patch = patch_lr * scale
    max_steps: int = 10000  # optimiser steps
    lr: float = 2e-4  # peak learning rate (Adam)
    lr_min: float = 1e-6  # learning rate at the end of the cosine decay
    warmup_steps: int = 0  # linear warm-up from 0 ...
    warmup_frac: float = 0.05  # ... which also ends once this fraction of the run (progress) has passed
    betas: tuple = (0.9, 0.99)  # Adam betas
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max global gradient norm; 0 disables clipping
    ema_decay: float = 0.999  # EMA of weights; validation and export use the EMA copy
    degradation: DegradationMix = field(default_factory=DegradationMix)  # how LR is made from HR
    seed: int = 0
    ckpt_every: int = 500  # steps between checkpoints
    log_every: int = 20  # steps between rows of log.csv
    val_every: int = 0  # steps between Set5 validations (0: only at the end)
    val_limit: int = 0  # images of Set5 to validate on (0: all)
    export_id: str = ""  # assets/weights/<export_id>/ ('' = name)
    method_id: str = ""  # registry id of the method that serves the exported weights
    smoke: tuple = ()  # `key=value` overrides for the CPU smoke test (tiny net, few steps)

    # -- what a subclass provides -----------------------------------------------------------
    def build_model(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """Training loss for a batch {'hr': (N,3,H,W), 'lr': (N,3,h,w)} in [0, 1].  A subclass provides this
        or `loss_terms` (then this is its "loss")."""
        if type(self).loss_terms is Recipe.loss_terms:
            raise NotImplementedError
        return self.loss_terms(model, batch)["loss"]

    def init_from_data(self, model: nn.Module, batch: dict) -> str:
        """A fresh run's data-dependent initialisation of `model` (not on --resume; before the EMA copy and
        the optimiser): `batch` = {'hr', 'lr'} of the pack's first crops (the same on every process).
        Returns a line for the log ('' = nothing was done, the default)."""
        return ""

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        """The training loss (key "loss", what is optimised) and its named parts, for the trainer's
        `terms.csv` (scalars; the parts are logged, never back-propagated).  Default: the loss alone."""
        return {"loss": self.loss(model, batch)}

    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """SR image in [0, 1] for an LR float tensor (1, 3, h, w) in [0, 1]."""
        raise NotImplementedError

    def card(self, config: dict) -> dict:
        """What the exported model card says about the network and the objective (export.py):
        `architecture` (one line, with the source file), `method` (the serving module), `objective`
        (loss and optimiser, one sentence), `values` (the input/output value convention)."""
        return {"architecture": f"{type(self).__name__} network, config `{json.dumps(config)}`",
                "method": "see the registry", "objective": "see the recipe", "values": "see config.json"}

    # -- generic ------------------------------------------------------------------------------
    def lr_at(self, step: int, progress: float) -> float:
        """Linear warm-up, then cosine from `lr` to `lr_min` over progress in [0, 1].

        The warm-up ends after `warmup_steps` steps or `warmup_frac` of the run's progress, whichever comes
        first: a time-budgeted run makes however many steps its device allows, and a step count sized for
        a long run (500) once took 500 of a GPU run's 534 steps, which then annealed at once."""
        p = min(max(progress, 0.0), 1.0)
        if self.warmup_steps and step < self.warmup_steps:
            w = (step + 1) / self.warmup_steps
            if self.warmup_frac > 0:
                w = max(w, p / self.warmup_frac)
            if w < 1:
                return self.lr * w
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1 + math.cos(math.pi * p))

    def warmup_text(self) -> str:
        """The warm-up as the model cards state it."""
        if self.warmup_frac and self.warmup_steps:
            return f"{self.warmup_steps} warm-up steps (or the first {self.warmup_frac:.0%} of the run, if sooner)"
        return f"{self.warmup_steps} warm-up steps"

    def to_dict(self) -> dict:
        d = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, DegradationMix):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            d[f.name] = v
        d["class"] = type(self).__name__
        return json.loads(json.dumps(d))


@dataclass(frozen=True)
class RRDBRecipe(Recipe):
    """RRDBNet regression with L1 in SRDiff's [-1, 1] convention."""

    def build_model(self) -> nn.Module:
        from ..nets.rrdbnet import RRDBNet

        cfg = dict(in_nc=3, out_nc=3, nf=32, nb=8, gc=16, scale=self.scale)
        cfg.update(self.model_config)
        return RRDBNet(**cfg)

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        sr = model(batch["lr"] * 2 - 1, clamp=False)  # no clamp in training: every pixel gets a gradient
        return F.l1_loss(sr.float(), batch["hr"] * 2 - 1)

    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        return (model(lr * 2 - 1).float() + 1) / 2

    def card(self, config: dict) -> dict:
        return {"architecture": (f"RRDBNet `{json.dumps(config)}` (`sr_core/nets/rrdbnet.py`, parameter names of "
                                 f"the official SRDiff `rrdb.*` checkpoint)"),
                "method": "`sr_core/methods/rrdb.py`",
                "objective": f"L1 loss on images in [-1, 1], Adam (betas {list(self.betas)})",
                "values": "LR in [-1, 1] in, SR in [-1, 1] out (SRDiff's convention)"}


RECIPES: dict[str, Recipe] = {
    "rrdb-mini": RRDBRecipe(
        name="rrdb-mini",
        description=("SRDiff's LR encoder (RRDBNet nf 32, nb 8, gc 16) trained alone with L1 on MATLAB-bicubic "
                     "x4 pairs: a regression baseline and the frozen encoder of srdiff-mini."),
        model_config=dict(nf=32, nb=8, gc=16),
        scale=4, batch_size=16, patch_lr=32, max_steps=12000,
        lr=1e-3, lr_min=1e-5, warmup_steps=200, betas=(0.9, 0.99), grad_clip=1.0, ema_decay=0.999,
        degradation=DegradationMix(bicubic=1.0, realesrgan=0.0),
        ckpt_every=250, log_every=20, val_every=2000, val_limit=0,
        export_id="rrdb-mini", method_id="rrdb-mini",
        smoke=("model.nf=8", "model.nb=1", "model.gc=4", "batch_size=4", "patch_lr=12", "lr=2e-3",
               "warmup_steps=0", "lr_min=1e-3", "ema_decay=0.9", "log_every=1", "ckpt_every=0", "val_every=0"),
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def _parse(v: str, like: Any) -> Any:
    if isinstance(like, bool):
        return v.lower() in ("1", "true", "yes", "on")
    if isinstance(like, int) and not isinstance(like, bool):
        return int(float(v))
    if isinstance(like, float):
        return float(v)
    if isinstance(like, tuple):
        return tuple(float(x) for x in v.split(","))
    try:
        return json.loads(v)
    except ValueError:
        return v


def apply_overrides(recipe: Recipe, sets: list[str]) -> Recipe:
    """`key=value` overrides: recipe fields (`lr=5e-4`), `model.nf=16` for the network config, and
    `degradation.realesrgan=0.5` / `degradation.bicubic=...` for the mix.  Unknown keys are errors."""
    changes: dict = {}
    model_cfg = dict(recipe.model_config)
    deg = recipe.degradation
    names = {f.name for f in dataclasses.fields(recipe)}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key.startswith("model."):
            k = key[6:]
            model_cfg[k] = _parse(value, model_cfg.get(k, 0))
        elif key.startswith("degradation."):
            k = key[12:]
            if k not in ("bicubic", "realesrgan"):
                raise ValueError(f"unknown degradation field {k!r} (bicubic, realesrgan)")
            deg = dataclasses.replace(deg, **{k: float(value)})
        elif key in names and key not in ("degradation", "model_config"):
            changes[key] = _parse(value, getattr(recipe, key))
        else:
            raise ValueError(f"unknown recipe field {key!r}; fields: {', '.join(sorted(names))}")
    return dataclasses.replace(recipe, model_config=model_cfg, degradation=deg, **changes)


# Method recipes live in their own modules and add themselves here; imported last because they
# import `Recipe` from this module.
from . import recipes_resshift as _recipes_resshift  # noqa: E402,F401  (vqf4-mini, resshift-mini, sinsr-mini)
from .recipes_srdiff import SRDIFF_MINI  # noqa: E402

RECIPES.setdefault("srdiff-mini", SRDIFF_MINI)
from .recipes_sd import SD_RECIPES  # noqa: E402  (mini-sd-vae, mini-sd, osediff-mini)

for _name, _recipe in SD_RECIPES.items():
    RECIPES.setdefault(_name, _recipe)
from .recipes_stablesr import STABLESR_RECIPES  # noqa: E402  (stablesr-mini, stablesr-cfw-mini)

for _name, _recipe in STABLESR_RECIPES.items():
    RECIPES.setdefault(_name, _recipe)
