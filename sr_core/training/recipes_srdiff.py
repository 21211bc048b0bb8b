"""Training recipe of `srdiff-mini`: SRDiff's denoiser trained on top of the frozen rrdb-mini encoder.

The objective is the official one (LeiaLi/SRDiff `models/diffusion.py`, `GaussianDiffusion.forward` /
`p_losses` with configs/diffsr_base.yaml; paper eq. 8): residual x_0 = clamp((x_H - up(x_L)) * 2, -1, 1)
with up() the MATLAB bicubic x4, a timestep t ~ U{0..T-1} (T = 100, cosine schedule), x_t from
q(x_t | x_0), and the L1 distance between the UNet's noise prediction and the noise; the RRDB encoder
is frozen (`fix_rrdb: true`) and only the UNet learns (Adam, lr 2e-4 as official).  The encoder is
the project's rrdb-mini (`assets/weights/rrdb-mini/model.safetensors`, read when the model is built;
`model.rrdb_weights=` with an empty value builds a random encoder of size rrdb_nf / rrdb_nb / rrdb_gc,
which only the smoke test does).  Unlike the official loader, up(LR) divides by 255 (`lr_up_gain` 1).
The exported bundle (`python -m sr_core.training export runs/srdiff-mini`) holds `denoise_fn.*` and the
encoder copy `rrdb.*` in one model.safetensors, with config.json carrying the network config, so
`SRDiff("mini")` (sr_core/methods/srdiff.py) loads it like the official checkpoint.  The code is ours.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import imaging, tiling
from ..diffusion import ddpm
from .degradations import DegradationMix
from .recipes import Recipe

__all__ = ["SRDiffRecipe", "SRDIFF_MINI", "DEFAULT_RRDB_WEIGHTS"]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_RRDB_WEIGHTS = "assets/weights/rrdb-mini/model.safetensors"  # relative to the repository root

_DEFAULTS = dict(dim=32, dim_mults=[1, 2, 3, 4], timesteps=100, beta_s=0.008, res_rescale=2.0, clip_input=True,
                 default_steps=20, rrdb_weights=DEFAULT_RRDB_WEIGHTS, rrdb_nf=32, rrdb_nb=8, rrdb_gc=16)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # DDP / accelerate wrappers


@dataclass(frozen=True)
class SRDiffRecipe(Recipe):
    """SRDiff residual DDPM, eps prediction with L1, frozen RRDB encoder.  `model_config` keys: dim,
    dim_mults, timesteps, beta_s, res_rescale, clip_input, default_steps (the method's default number
    of sampling steps, also used by `infer`), rrdb_weights (path, '' = random), rrdb_nf/nb/gc."""

    model_config: dict = field(default_factory=lambda: dict(_DEFAULTS))

    def _cfg(self) -> dict:
        cfg = dict(_DEFAULTS)
        cfg.update(self.model_config)
        return cfg

    def build_model(self) -> nn.Module:
        from ..methods.rrdb import _strip_rrdb_prefix, rrdb_config_from_state_dict
        from ..nets.srdiff_unet import SRDiffModel
        from ..weights import load_into, load_state_dict

        cfg = self._cfg()
        sd = None
        if cfg["rrdb_weights"]:
            path = Path(cfg["rrdb_weights"])
            path = path if path.is_absolute() else REPO_ROOT / path
            if not path.is_file():
                raise FileNotFoundError(
                    f"the frozen encoder {path} does not exist: train and export rrdb-mini first "
                    f"(python -m sr_core.training rrdb-mini; ... export runs/rrdb-mini), or pass "
                    f"--set model.rrdb_weights=/path/to/an/RRDBNet.safetensors")
            sd = _strip_rrdb_prefix(load_state_dict(path))
            rrdb = rrdb_config_from_state_dict(sd)
        else:
            rrdb = dict(in_nc=3, out_nc=3, nf=int(cfg["rrdb_nf"]), nb=int(cfg["rrdb_nb"]), gc=int(cfg["rrdb_gc"]),
                        scale=self.scale)
        if rrdb["scale"] != self.scale:
            raise ValueError(f"the encoder is x{rrdb['scale']}, the recipe x{self.scale}")
        model = SRDiffModel(
            unet=dict(dim=int(cfg["dim"]), out_dim=3, dim_mults=[int(m) for m in cfg["dim_mults"]], cond_dim=rrdb["nf"],
                      rrdb_num_block=rrdb["nb"], sr_scale=self.scale),
            rrdb=rrdb,
            diffusion=dict(timesteps=int(cfg["timesteps"]), beta_schedule="cosine", beta_s=float(cfg["beta_s"]),
                           res_rescale=float(cfg["res_rescale"]), clip_input=bool(cfg["clip_input"]), loss_type="l1",
                           lr_up_gain=1.0, default_steps=int(cfg["default_steps"])))
        if sd is not None:
            load_into(model.rrdb, sd)
        model.rrdb.requires_grad_(False).eval()
        return model

    def _schedule(self, model: nn.Module) -> ddpm.DDPMSchedule:
        d = _unwrap(model).diffusion
        return ddpm.make_schedule(int(d["timesteps"]), "cosine", float(d["beta_s"]))

    def loss(self, model: nn.Module, batch: dict) -> torch.Tensor:
        """L1(eps, eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t, RRDB(LR))), t ~ U{0..T-1}."""
        inner = _unwrap(model)
        d = inner.diffusion
        hr, lr = batch["hr"].float(), batch["lr"].float()
        inner.rrdb.eval()  # frozen encoder: inference behaviour even while the UNet trains
        with torch.no_grad():
            up = imaging.imresize(lr, float(self.scale)) * 2 - 1
            x0 = ((hr * 2 - 1) - up) * float(d["res_rescale"])
            if d.get("clip_input", True):
                x0 = x0.clamp(-1, 1)
        sch = self._schedule(model)
        t = torch.randint(0, sch.N, (hr.shape[0],), device=hr.device)
        noise = torch.randn_like(x0)
        x_t = ddpm.q_sample(x0, sch, t, noise)
        eps = model(x_t, t, lr * 2 - 1)
        return (eps.float() - noise).abs().mean()

    def card(self, config: dict) -> dict:
        cfg = self._cfg()
        return {"architecture": (f"SRDiff (`sr_core/nets/srdiff_unet.py`: denoiser UNet `denoise_fn.*` dim {cfg['dim']}, "
                                 f"mults {list(cfg['dim_mults'])}, conditioned on the frozen RRDBNet encoder `rrdb.*`; "
                                 f"the official SRDiff parameter names), config `{json.dumps(config)}`"),
                "method": "`sr_core/methods/srdiff.py`, SRDiff(\"mini\")",
                "objective": (f"the official SRDiff objective: L1 between the noise and the UNet's prediction on the "
                              f"residual x_0 = (HR - up(LR)) * {cfg['res_rescale']:g} (cosine schedule, T = "
                              f"{cfg['timesteps']}); only the UNet learns, Adam (betas {list(self.betas)}); the "
                              f"figures below sample with {cfg['default_steps']} respaced steps, seed 0"),
                "values": "LR in [-1, 1] in, SR in [-1, 1] out (SRDiff's convention)"}

    @torch.no_grad()
    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """A full sampling run with `default_steps` (respaced) and a fixed seed (0), as `SRDiff("mini")`."""
        from ..methods.srdiff import make_session
        from ..nets.srdiff_unet import unet_size_multiple

        inner = _unwrap(model)
        d = inner.diffusion
        unet = inner.denoise_fn
        padded, (h, w) = tiling.pad_to_multiple(lr.float(), unet_size_multiple(unet.dim_mults, unet.sr_scale))
        sch = ddpm.respace(self._schedule(model), int(d.get("default_steps", d["timesteps"])))
        sess = make_session(inner, padded, sch)
        g = torch.Generator().manual_seed(0)
        shape = sess.shape
        r = sess.sample(lambda k: torch.randn(shape, generator=g))
        return tiling.crop_to(sess.image(r), h * self.scale, w * self.scale)


SRDIFF_MINI = SRDiffRecipe(
    name="srdiff-mini",
    description=("SRDiff's denoiser (UNet dim 32, mults 1,2,3,4; the official architecture at half width) trained "
                 "with the official L1-on-noise objective on MATLAB-bicubic x4 pairs, conditioned on the frozen "
                 "rrdb-mini encoder; cosine schedule, T = 100."),
    model_config=dict(_DEFAULTS),
    # The official run: batch 64, HR patches 160, 400k steps on a GPU.  Sized here for the project's CPU:
    # batch 8 of 96 px HR patches took ~1 s per step (1 thread, bf16 autocast, dim 32) on the 2-core box.
    scale=4, batch_size=8, patch_lr=24, max_steps=8000,
    lr=2e-4, lr_min=1e-5, warmup_steps=200, betas=(0.9, 0.999), grad_clip=10.0, ema_decay=0.999,
    degradation=DegradationMix(bicubic=1.0, realesrgan=0.0),
    ckpt_every=250, log_every=20, val_every=0, val_limit=2,
    export_id="srdiff-mini", method_id="srdiff-mini",
    smoke=("model.dim=8", "model.dim_mults=[1,2]", "model.rrdb_weights=", "model.rrdb_nf=8", "model.rrdb_nb=2",
           "model.rrdb_gc=4", "model.default_steps=3", "batch_size=4", "patch_lr=12", "lr=2e-3", "warmup_steps=0",
           "lr_min=1e-3", "ema_decay=0.9", "log_every=1", "ckpt_every=0", "val_every=0", "grad_clip=1.0"),
)
