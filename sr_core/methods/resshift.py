"""ResShift: x4 super-resolution by residual shifting in the latent space of a VQ-f4 autoencoder.

The pipeline is the official `ResShiftSampler.sample_func` + `GaussianDiffusion.p_sample_loop`
(zsyOAOA/ResShift, `sampler.py`, `models/gaussian_diffusion.py`): the LR image in [0, 1] goes to
[-1, 1] ((x - 0.5) / 0.5), is reflect-padded to the UNet's size multiple (64 LR px for the released
configs), bicubic-upsampled x4 with torch's `F.interpolate(mode="bicubic")` (what the official code
uses, not MATLAB's resize), encoded by the VQ-f4 encoder (pre-quantisation latent, at the LR's size),
sampled with `sr_core.diffusion.resshift` (T network calls; the UNet gets x_t / sqrt(kappa^2 eta_t + 1),
the 0-based step index and the LR image in [-1, 1] concatenated at the latent's size), decoded
(quantised first), clamped to [-1, 1] and mapped back to [0, 1].  `ResShift(version)` serves the
released weights (v1, v2: 15 steps; v3, bicsr: 4 steps) and the project's bundled mini
(`assets/weights/resshift-mini/`: config.json + model.safetensors + autoencoder.safetensors) through
this one class; only config and weights differ.  `ResShiftPipeline` is the shared machinery that
`sr_core.methods.sinsr` reuses with SinSR's one-step sampler.  The code is ours.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from .. import tiling
from .. import weights as W
from ..diffusion import resshift as rs
from ..nets.resshift_configs import CONFIGS, get_config, mini_config
from ..types import (COLOR_FIXES, Availability, InputError, MethodInfo, RunContext, StepsSpec, WeightSpec,
                     WeightsUnavailable)

__all__ = ["ResShift", "ResShiftPipeline", "write_bundle", "read_bundle_config", "unet_size_multiple",
           "RESSHIFT_VERSIONS", "DTYPES"]

RESSHIFT_VERSIONS: dict[str, Optional[str]] = {
    "v1": "resshift_realsrx4_s15_v1",
    "v2": "resshift_realsrx4_s15_v2",
    "v3": "resshift_realsrx4_s4_v3",
    "bicsr": "resshift_bicsrx4_s4",
    "mini": None,  # the bundled project mini
}
DTYPES = ("auto", "fp32", "fp16", "bf16")
AUTOENCODER_ENV = "RESSHIFT_AUTOENCODER"  # explicit path (file or folder) of autoencoder_vq_f4.pth
DEFAULT_TILE = 256  # LR px: the official `--chop_size 256` (SinSR's demo default); overlap from Settings

# approximate file sizes (fp32 parameters + Swin buffers) shown before a download
_UNET_MB = 480.0
_AE_MB = 225.0


def unet_size_multiple(unet_cfg: Mapping[str, Any]) -> int:
    """The multiple the latent (= LR) sides must have for a `ResShiftUNet` config.

    Every level l (size H / 2^l) with Swin attention must split into whole windows, where a level at
    or below the window size uses one window of its own size (as upstream); the middle block always
    has Swin attention.  For the released configs this is 64, the official `padding_offset`.
    """
    image_size = int(unet_cfg["image_size"])
    window = int(unet_cfg.get("window_size", 8))
    levels = len(unet_cfg["channel_mult"])
    attn = set(int(a) for a in unet_cfg.get("attention_resolutions", ()))
    mult = 2 ** (levels - 1)
    for level in range(levels):
        ds = image_size // 2 ** level
        if ds in attn or level == levels - 1:
            mult = max(mult, 2 ** level * min(window, ds))
    return mult


def read_bundle_config(path: os.PathLike | str) -> dict[str, Any]:
    """Read a bundle's config.json (a `mini_config`-shaped dict) and check its top-level keys."""
    with open(path, "r", encoding="utf-8") as f:
        cfg = json.load(f)
    missing = [k for k in ("unet", "autoencoder", "diffusion") if k not in cfg]
    if missing:
        raise WeightsUnavailable(f"{path} is not a ResShift/SinSR bundle config (missing {', '.join(missing)})")
    return cfg


def write_bundle(folder: os.PathLike | str, config: Mapping[str, Any], unet: torch.nn.Module,
                 autoencoder: torch.nn.Module) -> Path:
    """Write a mini bundle: config.json, model.safetensors (UNet), autoencoder.safetensors (VQ-f4).

    This is the layout `ResShift("mini")` / `SinSR("mini")` read from `assets/weights/<id>/`.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(dict(config), f, indent=2, sort_keys=True)
    for name, net in (("model.safetensors", unet), ("autoencoder.safetensors", autoencoder)):
        sd = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
        save_file(sd, str(folder / name))
    return folder


def _mini_specs(method_id: str, licence: str) -> tuple[WeightSpec, WeightSpec, WeightSpec]:
    def spec(key: str, base: str) -> WeightSpec:
        # unique `filename` (also the name looked for in $SR_WEIGHTS_DIR), plain names in the bundle
        return WeightSpec(key=key, filename=f"{method_id}_{base}", bundled=f"{method_id}/{base}", licence=licence)

    return spec("config", "config.json"), spec("model", "model.safetensors"), spec("autoencoder", "autoencoder.safetensors")


def _official_specs(cfg: Mapping[str, Any], env: str) -> tuple[WeightSpec, WeightSpec]:
    ae = CONFIGS[cfg.get("autoencoder_name", "autoencoder_vq_f4")]
    model = WeightSpec(key="model", filename=cfg["filename"], url=cfg["url"], env=env, size_mb=_UNET_MB,
                       licence=cfg.get("licence", ""))
    auto = WeightSpec(key="autoencoder", filename=ae["filename"], url=ae["url"], env=AUTOENCODER_ENV,
                      size_mb=_AE_MB, licence=ae.get("licence", ""))
    return model, auto


class ResShiftPipeline:
    """LR -> [-1, 1] -> bicubic x4 -> VQ encode -> latent sampler with the UNet -> VQ decode -> [0, 1].

    Shared by `ResShift` and `SinSR`: subclasses fill `info`, the weight specs, the config and the
    sampler (`_sample`).  Networks are loaded lazily, strictly (sr_core.weights), once per device and
    dtype.  `dtype`: "auto" (fp16 autocast on CUDA, fp32 on CPU), "fp32", "fp16", "bf16" (the half
    types only on CUDA; the CPU always runs fp32).  Randomness comes only from `ctx.generator`
    (noise drawn on the CPU, then moved), so a seed gives the same image on any device; the facade
    runs pixel tiles one after another with that one generator, so a tiled result is reproducible
    but differs from an untiled one (each tile draws its own noise).
    """

    info: MethodInfo
    sampler_name: str = "stochastic"  # "stochastic" (ResShift), "deterministic" (SinSR DDIM), "one_step"
    schedule_start_cap: Optional[float] = None  # SinSR's copy of the schedule caps sqrt(eta_1) at sqrt(0.001)

    def __init__(self, *, config: Optional[dict], specs: tuple[WeightSpec, ...], explicit: Mapping[str, Any],
                 dtype: str = "auto"):
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.dtype = dtype
        self.specs = {s.key: s for s in specs}
        self.explicit = {k: v for k, v in dict(explicit).items() if v}
        self.config = config  # None for a bundle whose config.json is not readable yet
        self._nets: dict[tuple[str, str], tuple[torch.nn.Module, torch.nn.Module]] = {}
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- weights and config

    def _locate_config(self) -> Optional[dict]:
        spec = self.specs.get("config")
        if spec is None:
            return self.config
        p = W.locate(spec, self.explicit.get("config"))
        return read_bundle_config(p) if p is not None else None

    def availability(self) -> Availability:
        for spec in self.specs.values():
            explicit = self.explicit.get(spec.key)
            if W.locate(spec, explicit) is not None:
                continue
            if explicit or not (spec.url or spec.hf_repo):
                return Availability(False, W.missing_message(spec, explicit, f"{explicit} does not exist" if explicit else ""))
            if W.offline():
                return Availability(False, W.missing_message(spec, explicit, "offline mode"))
            # downloadable: fetched on first use
        return Availability(True)

    def _steps_spec(self, cfg: Mapping[str, Any]) -> StepsSpec:
        T = int(cfg["diffusion"]["steps"])
        return StepsSpec(T, T, T)

    def _set_info(self, method_id: str, label: str, description: str, cfg: dict, licence: str) -> None:
        self.info = _info(method_id, label, description, cfg, steps=self._steps_spec(cfg),
                          specs=tuple(self.specs.values()), licence=licence)

    def _resolved_config(self) -> dict:
        if "config" in self.specs:  # a bundle: read its config.json now (it may have changed since construction)
            cfg = read_bundle_config(W.resolve(self.specs["config"], self.explicit.get("config")))
            self.config = cfg
            i = self.info
            self._set_info(i.id, i.label, i.description, cfg, i.licence)
        if self.config is None:
            raise WeightsUnavailable(f"{self.info.id}: no config")
        return self.config

    def nets(self, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(unet, autoencoder) on `device`, loaded once per device."""
        from ..nets.resshift_unet import ResShiftUNet
        from ..nets.vqgan import VQModel

        key = (str(device), self.dtype)
        with self._lock:
            if key not in self._nets:
                cfg = self._resolved_config()
                unet = ResShiftUNet(**cfg["unet"])
                W.load_into(unet, W.load_state_dict(W.resolve(self.specs["model"], self.explicit.get("model"))))
                ae = VQModel(**cfg["autoencoder"])
                # LDM-style autoencoder checkpoints may carry the training loss (discriminator,
                # LPIPS) under `loss.`; it is not part of the inference model, so it is skipped by name.
                W.load_into(ae, W.load_state_dict(W.resolve(self.specs["autoencoder"],
                                                            self.explicit.get("autoencoder"))),
                            ignore=("loss.",))
                self._nets[key] = tuple(n.eval().requires_grad_(False).to(device) for n in (unet, ae))
            return self._nets[key]

    def schedule(self) -> rs.ResShiftSchedule:
        d = (self.config or self._resolved_config())["diffusion"]
        if d.get("predict_type", "xstart") != "xstart":
            raise ValueError(f"only x0-predicting ResShift models are supported, not {d.get('predict_type')!r}")
        if d.get("normalize_input", True) and not d.get("latent_flag", True):
            raise ValueError("the pixel-space input normalisation (latent_flag=False) is not supported")
        return rs.make_schedule(int(d["steps"]), float(d["kappa"]), float(d["min_noise_level"]),
                                float(d.get("power", 0.3)), float(d.get("etas_end", 0.99)),
                                start_cap=self.schedule_start_cap,
                                normalize_input=bool(d.get("normalize_input", True)))

    # ---------------------------------------------------------------- running

    def _autocast(self, device: torch.device):
        if device.type != "cuda" or self.dtype == "fp32":
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16 if self.dtype == "bf16" else torch.float16)

    def _noise(self, ctx: RunContext, z_y: torch.Tensor, lr_h: int, schedule: rs.ResShiftSchedule) -> list[torch.Tensor]:
        """x_T's eps and (stochastic sampler) one z per step but the last, cut from per-request fields
        that cover the whole image, so overlapping tiles share noise (RunContext.randn)."""
        n = schedule.T if self.sampler_name == "stochastic" else 1
        _, c, hh, ww = z_y.shape
        factor = max(hh // max(lr_h, 1), 1)  # latent pixels per LR pixel (1 for VQ-f4 after x4)
        return [ctx.randn(("resshift", i), c, hh, ww, factor).to(z_y.device, z_y.dtype) for i in range(n)]

    def _sample(self, denoise_fn, z_y: torch.Tensor, schedule: rs.ResShiftSchedule, noise, callback):
        return rs.SAMPLERS[self.sampler_name](denoise_fn, z_y, schedule, noise=noise, callback=callback)

    @torch.inference_mode()
    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        device = ctx.device
        unet, ae = self.nets(device)
        cfg = self.config
        d = cfg["diffusion"]
        sf, scale_factor = int(d.get("sf", 4)), float(d.get("scale_factor", 1.0))
        if int(ctx.settings.scale) != sf:
            raise InputError(f"{self.info.id} upscales x{sf}, not x{ctx.settings.scale}")
        mean, std = float(cfg.get("image_mean", 0.5)), float(cfg.get("image_std", 0.5))
        schedule = self.schedule()
        y0 = (lr.to(device, torch.float32) - mean) / std  # [0, 1] -> [-1, 1]
        y0, (h, w) = tiling.pad_to_multiple(y0, self.info.size_multiple)  # no-op behind the facade
        n_calls = 1 if self.sampler_name == "one_step" else schedule.T
        ctx.report(0.0, f"{self.info.id}: encoding")
        with self._autocast(device):
            up = F.interpolate(y0, scale_factor=sf, mode="bicubic")
            z_y = ae.encode(up).float() * scale_factor

            def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return unet(x_t, t, lq=y0).float()

            def callback(info: dict) -> None:
                ctx.report(0.1 + 0.8 * (info["i"] + 1) / n_calls, f"{self.info.id}: step {info['i'] + 1}/{n_calls}")

            z0 = self._sample(denoise, z_y, schedule, self._noise(ctx, z_y, y0.shape[-2], schedule), callback)
            ctx.report(0.9, f"{self.info.id}: decoding")
            out = ae.decode(z0 / scale_factor).float()
        out = out.clamp(-1.0, 1.0) * std + mean
        ctx.report(1.0, f"{self.info.id}: done")
        return tiling.crop_to(out, h * sf, w * sf)


def _info(method_id: str, label: str, description: str, cfg: dict, *, steps: StepsSpec,
          specs: tuple[WeightSpec, ...], licence: str) -> MethodInfo:
    return MethodInfo(
        id=method_id,
        label=label,
        description=description,
        scales=(int(cfg["diffusion"].get("sf", 4)),),
        default_scale=int(cfg["diffusion"].get("sf", 4)),
        steps=steps,
        supports_fidelity=False,
        uses_seed=True,
        tiling_space="pixel",
        default_tile=DEFAULT_TILE,
        size_multiple=unet_size_multiple(cfg["unet"]),
        default_color_fix=bundle_color_fix(cfg),
        licence=licence,
        weights=specs,
        family="diffusion",
    )


def bundle_color_fix(cfg: Mapping[str, Any]) -> str:
    """The colour fix a config asks for by default: none for the official models (their code applies no
    colour correction); a bundle's config.json may name another (`"color_fix"`; the minis' small autoencoder
    shifts low frequencies, which the wavelet fix restores from the LR -- see their model cards)."""
    cf = cfg.get("color_fix") or "none"
    if cf not in COLOR_FIXES:
        raise ValueError(f"config {cfg.get('name', '?')}: color_fix must be one of {', '.join(COLOR_FIXES)}, "
                         f"not {cf!r}")
    return cf


def _bundle_explicit(specs, bundle_dir, paths) -> dict:
    explicit = dict(paths or {})
    if bundle_dir is not None:
        for s in specs:
            explicit.setdefault(s.key, str(Path(bundle_dir) / Path(s.bundled or s.filename).name))
    return explicit


class ResShift(ResShiftPipeline):
    """SRMethod for ResShift: `ResShift("v3")` (4 steps), "v1"/"v2" (15), "bicsr" (4), "mini".

    `paths` maps weight keys ("model", "autoencoder"; for the mini also "config") to explicit files
    or folders; `bundle_dir` points a mini at another bundle folder (tests, user-trained minis).
    `sampler="deterministic"` swaps in SinSR's deterministic sampler (same weights, same number of
    steps; only x_T is random) -- the teacher map SinSR distils.  Steps are fixed at the config's T.
    """

    def __init__(self, version: str = "v3", *, method_id: Optional[str] = None,
                 paths: Optional[Mapping[str, Any]] = None, bundle_dir: Optional[os.PathLike | str] = None,
                 dtype: str = "auto", sampler: str = "stochastic"):
        if version not in RESSHIFT_VERSIONS:
            raise ValueError(f"unknown ResShift version {version!r}; valid: {', '.join(RESSHIFT_VERSIONS)}")
        if sampler not in ("stochastic", "deterministic"):
            raise ValueError(f"sampler must be 'stochastic' or 'deterministic', not {sampler!r}")
        self.version = version
        self.sampler_name = sampler
        det = sampler == "deterministic"
        if version == "mini":
            mid = method_id or ("resshift-mini-det" if det else "resshift-mini")
            licence = "code MIT; weights trained by this project (see the model card)"
            specs = _mini_specs("resshift-mini", licence)
            explicit = _bundle_explicit(specs, bundle_dir, paths)
            super().__init__(config=None, specs=specs, explicit=explicit, dtype=dtype)
            cfg = self._locate_config() or mini_config("resshift_realsrx4_s15_v1")
            self.config = cfg
            label = "ResShift mini" + (" (deterministic)" if det else "")
            desc = "ResShift's architecture at a small width, trained by this project; "
        else:
            name = RESSHIFT_VERSIONS[version]
            cfg = get_config(name)
            mid = method_id or ("resshift" if version == "v3" else f"resshift-{version}") + ("-det" if det else "")
            specs = _official_specs(cfg, "RESSHIFT_WEIGHTS")
            licence = cfg["licence"]
            super().__init__(config=cfg, specs=specs, explicit=paths or {}, dtype=dtype)
            label = f"ResShift {version} ({cfg['diffusion']['steps']} steps)" + (" deterministic" if det else "")
            desc = f"Official ResShift weights {cfg['filename']}: {cfg.get('notes', '')} "
        T = int(cfg["diffusion"]["steps"])
        desc += (f"{T} network calls; latent diffusion from the LR toward the HR"
                 + (" with SinSR's deterministic sampler (only the start is random)." if det else "."))
        self._set_info(mid, label, desc, cfg, licence)
