"""SRDiff: x4 super-resolution by a DDPM on the residual between the HR image and the bicubic-upsampled LR.

The pipeline is the official `GaussianDiffusion.sample` (LeiaLi/SRDiff, `models/diffusion.py`) with the
inputs its data loader builds (`tasks/srdiff_df2k.py`): the LR image in [0, 1] goes to [-1, 1] for the
RRDB encoder; up(LR) is MATLAB bicubic x4 of the LR, mapped to [-1, 1] (the official loader resizes
`lr_uint8 / 256`, so the released model sees up(LR) scaled by 255/256: config `lr_up_gain`); the RRDB
features are projected once to the HR conditioning map; sampling starts from x_T ~ N(0, I) in residual
space and runs the ancestral chain of `sr_core.diffusion.ddpm` (100 steps, or fewer by respacing);
the result is up(LR) + clamp(x_0, -1, 1) / 2 (paper Sec. 3.2: residual r = (x_H - up(x_L)) * 2).
`SRDiff(variant)` serves the official DIV2K x4 checkpoint ("official": `model_ckpt_steps_400000.ckpt`
of the v1.0.0 release, a legacy-serialised `{'state_dict': {'model': ...}}`) and the project's mini
("mini": `assets/weights/srdiff-mini/` = config.json + model.safetensors holding both `denoise_fn.*`
and a copy of the frozen rrdb-mini encoder as `rrdb.*`, so the bundle is self-contained and has the
official key layout) through this one class.  All noise comes from `RunContext.randn` (per-request
fields, shared by overlapping tiles).  For `sr_core.studio`, `prepare(lr, ctx)` returns an
`SRDiffSession` that can diffuse a residual to step t (q(x_t | x_0)) and run the reverse chain from any
step, the operations behind the paper's latent interpolation and content fusion (Sec. 4.6).  The code is ours.
"""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import numpy as np
import torch

from .. import imaging, tiling
from .. import weights as W
from ..diffusion import ddpm
from ..nets.srdiff_unet import OFFICIAL_SCHEDULE_BUFFERS, SRDiffModel, official_div2k_config, unet_size_multiple
from ..types import Availability, InputError, MethodInfo, RunContext, StepsSpec, WeightSpec, WeightsUnavailable

__all__ = ["SRDiff", "SRDiffSession", "make_session", "SRDIFF_VARIANTS", "RELEASE_PAGE", "OFFICIAL_SPEC", "read_bundle_config",
           "load_srdiff_state_dict", "write_bundle", "DEFAULT_TILE"]

SRDIFF_VARIANTS = ("official", "mini")
RELEASE_PAGE = "https://github.com/LeiaLi/SRDiff/releases/tag/v1.0.0"
ENV = "SRDIFF_WEIGHTS"  # explicit path (file, or a folder holding it) of the official checkpoint
OFFICIAL_LICENCE = "no licence stated by the authors (research use)"
MINI_LICENCE = "code MIT; weights trained by this project, research use (training images are research-only)"
DEFAULT_TILE = 128  # LR px: 512x512 HR tiles; on a CPU one 64-wide UNet call at that size takes about a second
DTYPES = ("auto", "fp32", "fp16", "bf16")

# The release page lists `srdiff_pretrained_div2k/model_ckpt_steps_400000.ckpt`; its direct asset address
# could not be checked from here, so the file is not downloaded automatically (see `availability`).
OFFICIAL_SPEC = WeightSpec(key="model", filename="model_ckpt_steps_400000.ckpt", url=None, env=ENV, size_mb=150.0,
                           licence=OFFICIAL_LICENCE)


def _mini_specs(method_id: str) -> tuple[WeightSpec, WeightSpec]:
    def spec(key: str, base: str) -> WeightSpec:
        return WeightSpec(key=key, filename=f"{method_id}_{base}", bundled=f"{method_id}/{base}", licence=MINI_LICENCE)

    return spec("config", "config.json"), spec("model", "model.safetensors")


def read_bundle_config(path) -> dict:
    """The network config of a bundle's config.json: either `{unet, rrdb, diffusion}` itself or the
    training kit's export format, which holds it under "config"."""
    with open(path, "r", encoding="utf-8") as f:
        cfg = json.load(f)
    if isinstance(cfg.get("config"), dict) and "unet" in cfg["config"]:
        cfg = cfg["config"]
    missing = [k for k in ("unet", "rrdb") if k not in cfg]
    if missing:
        raise WeightsUnavailable(f"{path} is not an SRDiff bundle config (missing {', '.join(missing)})")
    cfg = dict(cfg)
    cfg.setdefault("diffusion", {})
    return cfg


def write_bundle(folder, model: SRDiffModel, *, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write config.json + model.safetensors (the layout `SRDiff("mini", bundle_dir=folder)` reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"config": model.config(), **dict(extra or {})}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    save_file(sd, str(folder / "model.safetensors"))
    return folder


def load_srdiff_state_dict(model: SRDiffModel, sd: Mapping[str, torch.Tensor]) -> None:
    """Copy an SRDiff state dict (official checkpoint or bundle) into `model` strictly.

    The official file also holds the float32 schedule buffers of `GaussianDiffusion` (`betas`, ...);
    they are not parameters, so they are checked against the schedule this model will use (same
    cosine schedule: max difference 1e-6) and then left out.
    """
    betas = sd.get("betas")
    if betas is not None:
        d = model.diffusion
        ours = ddpm.make_schedule(int(d.get("timesteps", 100)), d.get("beta_schedule", "cosine"),
                                  float(d.get("beta_s", 0.008))).betas
        if tuple(betas.shape) != ours.shape or float(np.abs(betas.double().numpy() - ours).max()) > 1e-6:
            raise WeightsUnavailable("the checkpoint's diffusion schedule (betas) is not the cosine schedule with "
                                     f"T={len(ours)}; it was trained with another process")
    W.load_into(model, sd, key_map=lambda k: None if k in OFFICIAL_SCHEDULE_BUFFERS else k)


@dataclass
class SRDiffSession:
    """Everything one LR input (tile) needs to sample: the model, up(LR), the conditioning, the schedule.

    Residual space: x_0 = clamp((x_H - up) * res_rescale, -1, 1) with images in [-1, 1]; `image`
    maps a residual back to an image in [0, 1].  `noise(ctx)` returns the keyed noise function of
    a request (x_T is key N; the step at index k gets key k); `sample`, `diffuse` and `reverse`
    are the DDPM operations on this input.
    """

    model: SRDiffModel
    schedule: ddpm.DDPMSchedule
    img_lr_up: torch.Tensor  # (1, 3, H, W) in [-1, 1] (the padded tile's size times the scale)
    cond_hr: torch.Tensor  # (1, dim, H, W)
    res_rescale: float
    clip_input: bool
    scale: int
    autocast: Callable[[], Any]
    progress: Optional[Callable[[float, str], None]] = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return tuple(self.img_lr_up.shape)  # type: ignore[return-value]

    @property
    def steps(self) -> int:
        return self.schedule.N

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        cond = self.cond_hr if x_t.shape[0] == 1 else self.cond_hr.expand(x_t.shape[0], -1, -1, -1)
        with self.autocast():
            return self.model.denoise_fn(x_t, t, cond_hr=cond).float()

    def noise(self, ctx: RunContext, key: str = "srdiff") -> Callable[[int], torch.Tensor]:
        """Keyed noise from the request's fields: key N -> x_T, key k -> the noise of the step at index k
        (cut per original timestep, so all step counts share fields where their timesteps agree)."""
        _, c, h, w = self.shape
        dev = self.img_lr_up.device
        N = self.schedule.N

        def fn(k: int) -> torch.Tensor:
            name = (key, "x_T") if k == N else (key, "z", int(self.schedule.timesteps[k]))
            return ctx.randn(name, c, h, w, self.scale).to(dev)

        return fn

    def residual(self, hr: torch.Tensor) -> torch.Tensor:
        """x_0 of an HR image (1, 3, H, W) in [0, 1] (official `img2res`)."""
        r = ((hr.to(self.img_lr_up) * 2 - 1) - self.img_lr_up) * self.res_rescale
        return r.clamp(-1, 1) if self.clip_input else r

    def image(self, residual: torch.Tensor) -> torch.Tensor:
        """The image in [0, 1] of a residual (official `res2img`, then to [0, 1])."""
        r = residual.clamp(-1, 1) if self.clip_input else residual
        return ((r / self.res_rescale + self.img_lr_up) + 1) / 2

    def diffuse(self, x0: torch.Tensor, k: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t at schedule index k: sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps (paper eq. 4)."""
        return ddpm.q_sample(x0, self.schedule, int(k), noise.to(x0))

    def reverse(self, x: torch.Tensor, start: int, end: int = 0, noise=None, *, report: bool = True) -> torch.Tensor:
        """The ancestral steps start .. end from x (see `ddpm.reverse_chain`)."""
        n = start - end + 1
        cb = None
        if report and self.progress is not None:
            def cb(info: dict) -> None:
                self.progress((info["i"] + 1) / n, f"step {info['i'] + 1}/{n}")
        return ddpm.reverse_chain(self.denoise, x, self.schedule, start=start, end=end, noise=noise, callback=cb)

    def sample(self, noise) -> torch.Tensor:
        """The residual x_0 of a full run from x_T (noise: a keyed function or a sequence, as in ddpm)."""
        x_T = ddpm.NoiseSource(noise, None, self.schedule.N)(self.schedule.N, self.img_lr_up)
        return self.reverse(x_T, self.schedule.N - 1, 0, noise)


def make_session(model: SRDiffModel, lr: torch.Tensor, schedule: ddpm.DDPMSchedule, *,
                 autocast: Optional[Callable[[], Any]] = None,
                 progress: Optional[Callable[[float, str], None]] = None) -> SRDiffSession:
    """An `SRDiffSession` for an LR tensor (1, 3, h, w) in [0, 1] on the model's device (sides already a
    multiple of the UNet's size multiple): up(LR) and the projected RRDB features are computed here."""
    d = model.diffusion
    s = model.scale
    lr = lr.to(next(model.parameters()).device, torch.float32)
    gain = float(d.get("lr_up_gain", 1.0))
    img_lr_up = imaging.imresize(lr * gain if gain != 1.0 else lr, float(s)) * 2 - 1
    autocast = autocast or contextlib.nullcontext
    with autocast():
        _, cond_hr = model.encode(lr * 2 - 1)
    return SRDiffSession(model=model, schedule=schedule, img_lr_up=img_lr_up, cond_hr=cond_hr.float(),
                         res_rescale=float(d.get("res_rescale", 2.0)), clip_input=bool(d.get("clip_input", True)),
                         scale=s, autocast=autocast, progress=progress)


class SRDiff:
    """SRMethod for SRDiff: `SRDiff("official")` (the DIV2K x4 release) or `SRDiff("mini")` (our bundle).

    `paths` maps weight keys ("model"; for the mini also "config") to explicit files or folders;
    `bundle_dir` points the mini at another bundle folder (tests, user-trained minis).  Steps are
    1..T (T = 100); fewer steps respace the schedule.  Networks are loaded lazily and strictly, once
    per device.  `dtype`: "auto" (fp32 on the CPU, fp16 autocast for the UNet on CUDA), "fp32",
    "fp16", "bf16" (half types only on CUDA).  Memory: the request keeps one noise field per step at the
    output size (`RunContext.randn`), 12 bytes per output pixel and step: 100 steps at a 1024x1024
    output hold 1.2 GB of noise (fewer steps, fewer fields).
    """

    def __init__(self, variant: str = "official", *, method_id: Optional[str] = None,
                 paths: Optional[Mapping[str, Any]] = None, bundle_dir=None, dtype: str = "auto"):
        if variant not in SRDIFF_VARIANTS:
            raise ValueError(f"unknown SRDiff variant {variant!r}; valid: {', '.join(SRDIFF_VARIANTS)}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.variant, self.dtype = variant, dtype
        self._lock = threading.Lock()
        self._models: dict[str, SRDiffModel] = {}
        self._schedules: dict[int, ddpm.DDPMSchedule] = {}
        explicit = {k: str(v) for k, v in dict(paths or {}).items() if v}
        if variant == "official":
            self.method_id = method_id or "srdiff"
            self.specs = {"model": OFFICIAL_SPEC}
            self.config: Optional[dict] = official_div2k_config()
        else:
            self.method_id = method_id or "srdiff-mini"
            specs = _mini_specs("srdiff-mini")
            self.specs = {s.key: s for s in specs}
            if bundle_dir is not None:
                for s in specs:
                    explicit.setdefault(s.key, str(Path(bundle_dir) / Path(s.bundled).name))
            self.config = None
        self.explicit = explicit
        if self.config is None:
            p = W.locate(self.specs["config"], self.explicit.get("config"))
            self.config = read_bundle_config(p) if p is not None else None
        self._set_info()

    # ------------------------------------------------------------------ capabilities and weights

    def _set_info(self) -> None:
        cfg = self.config or {"unet": {"dim_mults": [1, 2, 3, 4], "sr_scale": 4}, "diffusion": {}}
        d = cfg.get("diffusion", {})
        T = int(d.get("timesteps", 100))
        default = int(d.get("default_steps", T if self.variant == "official" else min(T, 50)))
        scale = int(cfg["unet"].get("sr_scale", 4))
        if self.variant == "official":
            label, desc = "SRDiff (official DIV2K ×4)", (
                "The authors' DIV2K ×4 checkpoint: a DDPM on the residual to the bicubic upscale, conditioned "
                "on RRDB features; 100 steps, fewer by respacing (faster, softer).")
            licence = OFFICIAL_LICENCE
        else:
            label, desc = "SRDiff mini", (
                "SRDiff's architecture at a small width, trained by this project on top of the frozen rrdb-mini "
                f"encoder; {T} steps, fewer by respacing.")
            licence = MINI_LICENCE
        self.info = MethodInfo(
            id=self.method_id, label=label, description=desc, scales=(scale,), default_scale=scale,
            steps=StepsSpec(1, T, max(1, min(default, T))), supports_fidelity=False, uses_seed=True,
            tiling_space="pixel", default_tile=DEFAULT_TILE,
            size_multiple=unet_size_multiple(cfg["unet"].get("dim_mults", [1, 2, 3, 4]), scale),
            default_color_fix="none",  # the official code applies none
            licence=licence, weights=tuple(self.specs.values()), family="diffusion", supports_interpolation=True,
        )

    def availability(self) -> Availability:
        for spec in self.specs.values():
            explicit = self.explicit.get(spec.key)
            if W.locate(spec, explicit) is None:
                why = f"{explicit} does not exist" if explicit else ""
                msg = W.missing_message(spec, explicit, why)
                if self.variant == "official":
                    msg += (f" The official checkpoint is listed on {RELEASE_PAGE} "
                            f"(srdiff_pretrained_div2k/model_ckpt_steps_400000.ckpt).")
                else:
                    msg += " Train it with `python -m sr_core.training srdiff-mini` and export the run."
                return Availability(False, msg)
        return Availability(True)

    def _resolved_config(self) -> dict:
        if "config" in self.specs:
            self.config = read_bundle_config(W.resolve(self.specs["config"], self.explicit.get("config")))
            self._set_info()
        if self.config is None:
            raise WeightsUnavailable(f"{self.method_id}: no config")
        return self.config

    def model(self, device: torch.device) -> SRDiffModel:
        """The network on `device`, loaded once per device (fp32 parameters)."""
        key = str(device)
        with self._lock:
            if key not in self._models:
                cfg = self._resolved_config()
                model = SRDiffModel.from_config(cfg)
                path = W.resolve(self.specs["model"], self.explicit.get("model"))
                load_srdiff_state_dict(model, W.load_state_dict(path))
                self._models[key] = model.eval().requires_grad_(False).to(device)
            return self._models[key]

    def schedule(self, steps: Optional[int] = None) -> ddpm.DDPMSchedule:
        cfg = self.config or self._resolved_config()
        d = cfg.get("diffusion", {})
        T = int(d.get("timesteps", 100))
        n = int(steps or self.info.steps.default)
        if not 1 <= n <= T:
            raise InputError(f"{self.method_id} takes 1..{T} steps, not {n}")
        with self._lock:
            if 0 not in self._schedules:
                self._schedules[0] = ddpm.make_schedule(T, d.get("beta_schedule", "cosine"), float(d.get("beta_s", 0.008)))
            if n not in self._schedules:
                self._schedules[n] = ddpm.respace(self._schedules[0], n)
            return self._schedules[n]

    def _autocast(self, device: torch.device):
        if device.type != "cuda" or self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    # ------------------------------------------------------------------ running

    def prepare(self, lr: torch.Tensor, ctx: RunContext) -> SRDiffSession:
        """A session for the LR tensor (1, 3, h, w) in [0, 1] (already padded to the size multiple)."""
        device = ctx.device
        model = self.model(device)
        if int(ctx.settings.scale) != model.scale:
            raise InputError(f"{self.method_id} upscales x{model.scale}, not x{ctx.settings.scale}")
        if lr.shape[-2] % self.info.size_multiple or lr.shape[-1] % self.info.size_multiple:
            raise InputError(f"{self.method_id} needs LR sides that are multiples of {self.info.size_multiple}")
        return make_session(model, lr, self.schedule(ctx.settings.steps), autocast=lambda: self._autocast(device),
                            progress=lambda f, m: ctx.report(0.05 + 0.95 * f, f"{self.method_id}: {m}"))

    @torch.inference_mode()
    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        padded, (h, w) = tiling.pad_to_multiple(lr, self.info.size_multiple)  # a no-op behind the facade
        ctx.report(0.0, f"{self.method_id}: encoding")
        sess = self.prepare(padded, ctx)
        out = sess.image(sess.sample(sess.noise(ctx)))
        return tiling.crop_to(out, h * sess.scale, w * sess.scale)

    @torch.inference_mode()
    def diffuse(self, residual: torch.Tensor, t_index: int, noise: torch.Tensor, steps: Optional[int] = None) -> torch.Tensor:
        """q(x_t | x_0) of a residual at index t of the (respaced) schedule with `steps` steps."""
        return ddpm.q_sample(residual, self.schedule(steps), int(t_index), noise.to(residual))

    @torch.inference_mode()
    def reverse_from(self, x_t: torch.Tensor, t_index: int, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        """The image in [0, 1] the reverse chain gives from x_t (residual space) at index t, conditioned on
        `lr` (padded to the size multiple), with the step noise of `ctx`."""
        sess = self.prepare(lr, ctx)
        return sess.image(sess.reverse(x_t.to(sess.img_lr_up), int(t_index), 0, sess.noise(ctx)))
