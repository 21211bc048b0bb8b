"""StableSR: x4 super-resolution with a frozen Stable Diffusion prior steered by the LR latent.

This is the inference path of the official `scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py`
(IceClear/StableSR) and the paper's method: the LR image in [0, 1] is upsampled x4 with PyTorch's
bicubic (as the script) and mapped to [-1, 1]; the SD VAE encoder gives the LR latent z_lr (a
posterior sample, times the VAE scaling factor 0.18215); sampling starts from z_lr noised to
t = 999 (not from pure noise); at every respaced step the SFT-modulated SD UNet predicts eps (or v)
on Gaussian-weighted latent tiles (progressive patch aggregation, `sr_core.diffusion.stablesr.
canvas_sample`), its SFT layers fed by the time-aware encoder on the matching tile of z_lr at the
same timestep; the text context is the empty prompt (the checkpoint's own OpenCLIP text tower,
computed once and cached on disk); the CFW decoder turns the latent into the image, its fusion
layers adding w times the LR's encoder features (w = 0: the plain SD decoder, realism; w = 1:
fidelity).  The official files are Lightning pickles with LDM names, read by the restricted
unpickler of `sr_core.ckpt` and converted with explicit key maps (`convert_ldm_unet`,
`convert_ldm_vae`); `StableSR("mini")` runs the project's mini (the `mini-sd` prior plus trained
time-aware encoder, SFT and CFW layers) through the same class.  Noise is a pure function of the
seed and the latent position (`RunContext.randn`), so tiles agree where they overlap.  Differences
from the script, on purpose: the posterior noise comes from `RunContext.randn` (the script uses the
global RNG); the VAE encode/decode is tiled with Gaussian blending on latent tiles instead of
cutting the image into 1280 px pieces that each run the whole sampler; the final resize of an input
first upsampled to 512 px on the short side (`min_side`) is antialiased; the colour fix (default adain,
as the paper) is applied once by the facade.  The code is ours.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn.functional as F

from .. import tiling
from .. import weights as W
from ..diffusion import stablesr as sd
from .osediff import DTYPES, compute_dtype  # the same dtype choices for the SD-based methods
from ..types import Availability, InputError, MethodInfo, RunContext, StepsSpec, WeightSpec, WeightsUnavailable

__all__ = ["StableSR", "StableSRModel", "make_model_fn", "sample", "load_official", "load_mini", "save_mini_weights", "MINI_WEIGHTS_FILE",
           "VARIANTS"]

HF_REPO = "Iceclear/StableSR"
LICENCE = "S-Lab License 1.0 (StableSR code and weights); SD-2.1 weights: CreativeML Open RAIL++-M"
CFW_ENV = "STABLESR_CFW_WEIGHTS"
UNET_PREFIXES = ("model.diffusion_model.", "structcond_stage_model.")
FIRST_STAGE = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
SCALE_FACTOR = 0.18215  # v2-finetune_text_T_512.yaml scale_factor
DEFAULT_LATENT_TILE = 64  # latent px (512 output px): the script's input_size / 8
OFFICIAL_MIN_SIDE = 512  # the script upsamples inputs whose short side x upscale is below 512 px to 512
DEFAULT_LATENT_OVERLAP = 32  # latent px, the script's tile_overlap
CPU_VAE_TILE = 96  # latent px per VAE decode tile on the CPU (memory); CUDA: 160 (1280 px, as the script)
MINI_WEIGHTS_FILE = "stablesr.safetensors"

# variant -> (checkpoint file, default steps, size in MB); both 512-px models predict eps
VARIANTS: dict[str, tuple[str, int, int]] = {
    "official": ("stablesr_000117.ckpt", 200, 6500),  # the paper's model; README: 200 steps, dec_w 0.5
    "turbo": ("stablesr_turbo.ckpt", 4, 6500),  # README: 4 steps
}


# --------------------------------------------------------------------------------------------
# the loaded networks


class StableSRModel(torch.nn.Module):
    """The networks of one StableSR model: `denoiser` (StableSRUNet), `cfw` (CFWAutoencoder with fusion,
    also the LR encoder when its encoder equals the first stage's), optional `first_stage` (a separate
    plain SD VAE encoder for the init latent), the fixed text `context`, and the schedule facts."""

    def __init__(self, denoiser, cfw, context: torch.Tensor, *, first_stage=None, scale_factor: float = SCALE_FACTOR,
                 parameterization: str = "eps", schedule: Optional[Mapping[str, Any]] = None):
        super().__init__()
        if parameterization not in ("eps", "v"):
            raise ValueError(f"parameterization must be eps or v, not {parameterization!r}")
        self.denoiser, self.cfw, self.first_stage = denoiser, cfw, first_stage
        self.register_buffer("context", context.detach().float().clone(), persistent=False)
        self.scale_factor = float(scale_factor)
        self.parameterization = parameterization
        sched = dict(timesteps=1000, linear_start=0.00085, linear_end=0.012)
        sched.update(schedule or {})
        self.schedule_cfg = sched

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    def encode_lr(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, list]:
        """x (1,3,H,W) in [-1,1] -> (scaled init latent = posterior mean + std * noise, CFW encoder features)."""
        cfw_z, feats = self.cfw.encode(x)
        enc = self.first_stage if self.first_stage is not None else self.cfw
        h = enc.vae.encoder(x)
        moments = enc.vae.quant_conv(h) if enc.vae.quant_conv is not None else h
        mean, logvar = torch.chunk(moments, 2, dim=1)
        z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise.to(mean.device, mean.dtype)
        return z * self.scale_factor, feats

    def encode_lr_tiled(self, x: torch.Tensor, noise: torch.Tensor, tile_px: int, overlap_px: int):
        """`encode_lr` with the VAE run on Gaussian-blended pixel tiles (bounded memory)."""
        H, W_ = x.shape[-2:]
        if H <= tile_px and W_ <= tile_px:
            return self.encode_lr(x, noise)
        enc = self.first_stage if self.first_stage is not None else self.cfw
        # the posterior's mean and log-variance, tiled, through the same blending as the features
        mean_logvar = _tiled_moments(enc, x, tile_px, overlap_px)
        mean, logvar = torch.chunk(mean_logvar, 2, dim=1)
        z = mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise.to(mean.device, mean.dtype)
        _, feats = self.cfw.encode_tiled(x, tile_px, overlap_px)
        return z * self.scale_factor, feats


def _tiled_moments(enc, x: torch.Tensor, tile_px: int, overlap_px: int) -> torch.Tensor:
    """The posterior moments (mean | logvar) of `x`, the encoder run on Gaussian-blended tiles laid out
    on the latent grid (a latent box times 8 is the pixel tile it encodes)."""
    lat = x.new_zeros(x.shape[0], 1, x.shape[-2] // 8, x.shape[-1] // 8)

    def on_latent(t, box, i, n):
        y0, x0, y1, x1 = box
        h = enc.vae.encoder(x[:, :, y0 * 8:y1 * 8, x0 * 8:x1 * 8])
        return enc.vae.quant_conv(h) if enc.vae.quant_conv is not None else h

    return tiling.run_tiled(on_latent, lat, scale=1, tile=max(tile_px // 8, 1), overlap=max(overlap_px // 8, 0),
                            with_box=True)


# --------------------------------------------------------------------------------------------
# loading: official Lightning checkpoints and the project's mini


def _empty_context_cached(sd_main: Mapping[str, torch.Tensor], ckpt: Path) -> torch.Tensor:
    """The empty-prompt context of the checkpoint's own OpenCLIP text tower, cached on disk per file."""
    from safetensors.torch import load_file, save_file

    st = ckpt.stat()
    h = hashlib.sha256(f"{ckpt.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = W.cache_dir() / "stablesr" / f"empty_prompt_{ckpt.stem}_{h}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["context"]
    from ..nets.openclip_text import empty_prompt_embedding

    ctx = empty_prompt_embedding(sd_main, prefix=TEXT_PREFIX)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({"context": ctx.contiguous()}, str(cache))
    except OSError:
        pass  # a read-only cache only costs recomputation
    return ctx


def _same_encoder(a, b) -> bool:
    sa = {k: v for k, v in a.state_dict().items() if k.startswith(("vae.encoder.", "vae.quant_conv."))}
    sb = {k: v for k, v in b.state_dict().items() if k.startswith(("vae.encoder.", "vae.quant_conv."))}
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def load_official(main_ckpt: os.PathLike | str, cfw_ckpt: os.PathLike | str, *, unet_variant: str = "sd21",
                  parameterization: str = "eps") -> StableSRModel:
    """Build the StableSR networks from the official files (fp32, CPU): the diffusion checkpoint
    (`model.diffusion_model.*` + `structcond_stage_model.*` -> StableSRUNet, `first_stage_model.*` -> the
    SD VAE that encodes the init latent, `cond_stage_model.model.*` -> the empty-prompt context) and
    the CFW autoencoder checkpoint (`vqgan_cfw_00011.ckpt`)."""
    from ..nets.stablesr_unet import build_stablesr_unet, convert_ldm_unet
    from ..nets.stablesr_vae import load_cfw_autoencoder

    main_ckpt, cfw_ckpt = Path(main_ckpt), Path(cfw_ckpt)
    sd_main = W.load_state_dict(main_ckpt)
    unet_sd = convert_ldm_unet({k: v for k, v in sd_main.items() if k.startswith(UNET_PREFIXES)}, unet_variant)
    denoiser = build_stablesr_unet(unet_variant, device="meta")
    denoiser.load_state_dict({k: v.float() for k, v in unet_sd.items()}, strict=True, assign=True)
    first = load_cfw_autoencoder({k: v.float() for k, v in sd_main.items() if k.startswith(FIRST_STAGE)},
                                 prefix=FIRST_STAGE)
    cfw = load_cfw_autoencoder({k: v.float() for k, v in W.load_state_dict(cfw_ckpt).items()})
    if not cfw.has_fusion:
        raise WeightsUnavailable(f"{cfw_ckpt} has no CFW fusion layers (decoder.fusion_layer_*): it is not "
                                 f"vqgan_cfw_00011.ckpt")
    context = _empty_context_cached(sd_main, main_ckpt)
    shared = _same_encoder(first, cfw)
    return StableSRModel(denoiser.eval(), cfw.eval(), context, first_stage=None if shared else first.eval(),
                         scale_factor=SCALE_FACTOR, parameterization=parameterization)


def save_mini_weights(path: os.PathLike | str, model: StableSRModel, config: Mapping[str, Any],
                      dtype: torch.dtype = torch.float16) -> Path:
    """Write the trained parts of a mini (time-aware encoder `denoiser.structcond.*`, SFT layers
    `denoiser.sft.*`, CFW fusion `cfw.fusion.*`) to one safetensors file with `config` (JSON) in its
    metadata; the frozen prior (UNet, VAE, context) stays in the `mini-sd` folder."""
    from ..weights import save_safetensors

    out = {}
    for k, v in model.denoiser.state_dict().items():
        if k.startswith(("structcond.", "sft.")):
            out["denoiser." + k] = v.detach().to(dtype).contiguous()
    for k, v in model.cfw.state_dict().items():
        if k.startswith("fusion."):
            out["cfw." + k] = v.detach().to(dtype).contiguous()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(out, path, metadata={"format": "pt", "config": json.dumps(dict(config))})
    return path


def _prior_folder(bundle: Path, cfg: Mapping[str, Any]) -> Path:
    p = Path(str(cfg.get("prior", "../mini-sd")))
    return p if p.is_absolute() else (bundle / p).resolve()


def build_mini(prior: Path, cfg: Mapping[str, Any]) -> StableSRModel:
    """A mini's networks on the `mini-sd` prior folder with freshly initialised trainable parts
    (time-aware encoder, SFT, CFW fusion); `cfg` keys: encoder (TimeAwareEncoder config), semb_channels,
    fusion (CFW fusion config), parameterization."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    from ..nets.stablesr_unet import StableSRUNet
    from ..nets.stablesr_vae import CFWAutoencoder

    unet = UNet2DConditionModel.from_pretrained(str(prior), subfolder="unet")
    vae = AutoencoderKL.from_pretrained(str(prior), subfolder="vae")
    denoiser = StableSRUNet(dict(unet.config), dict(cfg["encoder"]), int(cfg["semb_channels"]))
    denoiser.unet.load_state_dict(unet.state_dict(), strict=True)
    cfw = CFWAutoencoder(dict(vae.config), dict(cfg.get("fusion") or {}), fusion=True)
    cfw.vae.load_state_dict(vae.state_dict(), strict=True)
    emb = prior / "empty_prompt_embeds.safetensors"
    if not emb.is_file():
        raise WeightsUnavailable(f"the prior folder {prior} lacks empty_prompt_embeds.safetensors")
    context = load_file(str(emb))["prompt_embeds"]
    return StableSRModel(denoiser, cfw, context, scale_factor=float(vae.config.scaling_factor),
                         parameterization=str(cfg.get("parameterization", "eps")))


def load_mini(bundle: os.PathLike | str) -> StableSRModel:
    """A bundled mini: `<bundle>/config.json` (prior folder, encoder/SFT/fusion configs) +
    `<bundle>/stablesr.safetensors` (the trained parts), loaded strictly onto the prior."""
    from safetensors.torch import load_file

    bundle = Path(bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    prior = _prior_folder(bundle, cfg)
    for sub in ("unet", "vae"):
        if not (prior / sub).is_dir():
            raise WeightsUnavailable(f"{bundle.name}: its prior folder {prior} lacks {sub}/ (export mini-sd first)")
    model = build_mini(prior, cfg)
    sd_ = load_file(str(bundle / MINI_WEIGHTS_FILE))
    want = {"denoiser." + k for k in model.denoiser.state_dict() if k.startswith(("structcond.", "sft."))}
    want |= {"cfw." + k for k in model.cfw.state_dict() if k.startswith("fusion.")}
    missing, unexpected = sorted(want - set(sd_)), sorted(set(sd_) - want)
    if missing or unexpected:
        raise WeightsUnavailable(f"{bundle / MINI_WEIGHTS_FILE} does not fit its config: missing "
                                 f"{missing[:8]}, unexpected {unexpected[:8]}")
    _load_partial(model.denoiser, sd_, "denoiser.")
    _load_partial(model.cfw, sd_, "cfw.")
    return model.eval()


def _load_partial(module: torch.nn.Module, sd_: Mapping[str, torch.Tensor], prefix: str) -> None:
    own = module.state_dict()
    part = {k[len(prefix):]: v for k, v in sd_.items() if k.startswith(prefix)}
    for k, v in part.items():
        if tuple(own[k].shape) != tuple(v.shape):
            raise WeightsUnavailable(f"{prefix}{k}: shape {tuple(v.shape)} in the file, {tuple(own[k].shape)} "
                                     f"in the network")
        own[k].copy_(v.to(own[k].dtype))


# --------------------------------------------------------------------------------------------
# the method


def make_model_fn(denoiser, z_lr: torch.Tensor, context: torch.Tensor):
    """The denoiser the aggregation sampler calls per latent tile (official `p_mean_variance_canvas`):
    the time-aware encoder on the same crop of the clean LR latent at the same timestep feeds the SFT
    layers of the UNet, which predicts eps (or v) for the tile with the fixed text context."""

    def model_fn(x_tile: torch.Tensor, t_model, box) -> torch.Tensor:
        z_tile = box.crop(z_lr) if box is not None else z_lr
        struct = denoiser.encode_struct(z_tile, t_model)
        return denoiser(x_tile, t_model, context.expand(x_tile.shape[0], -1, -1), struct)

    return model_fn


def torch_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """x`scale` with PyTorch's bicubic (align_corners False), clamped to [0, 1]: the official script's
    `F.interpolate(mode="bicubic")` upsampling of the LR."""
    return F.interpolate(lr.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class _LatentCache:
    """The sampled latents of recent runs, keyed by everything but w (the LR's bytes, steps, seed, tiles,
    device, dtype), bounded in bytes (CPU copies).  Moving the fidelity slider then re-runs only the
    encoder and the CFW decoder: w enters nowhere else, and the same key gives the same latent."""

    def __init__(self, max_bytes: int = 64 * 2**20):
        from collections import OrderedDict

        self.max_bytes, self._d, self._lock = int(max_bytes), OrderedDict(), threading.Lock()

    @staticmethod
    def key(lr: torch.Tensor, *parts) -> str:
        h = hashlib.blake2b(digest_size=16)
        x = lr.detach().to("cpu", torch.float32).contiguous()
        h.update(repr((tuple(x.shape), *parts)).encode())
        h.update(x.numpy().tobytes())
        return h.hexdigest()

    def get(self, key: str) -> Optional[torch.Tensor]:
        with self._lock:
            z = self._d.get(key)
            if z is not None:
                self._d.move_to_end(key)
            return z

    def put(self, key: str, z: torch.Tensor) -> None:
        z = z.detach().to("cpu").clone()
        if z.numel() * z.element_size() > self.max_bytes:
            return
        with self._lock:
            self._d[key] = z
            self._d.move_to_end(key)
            while sum(v.numel() * v.element_size() for v in self._d.values()) > self.max_bytes:
                self._d.popitem(last=False)

    def __len__(self) -> int:
        return len(self._d)


class StableSR:
    """SRMethod for StableSR: `StableSR("official")` (stablesr_000117.ckpt, 200 steps by default),
    `StableSR("turbo")` (stablesr_turbo.ckpt, 4 steps), both with vqgan_cfw_00011.ckpt, or
    `StableSR("mini")` (the bundle in assets/weights/stablesr-mini on the mini-sd prior).

    `weights` / `cfw_weights`: explicit files (otherwise $STABLESR_WEIGHTS / $STABLESR_CFW_WEIGHTS,
    $SR_WEIGHTS_DIR, the download cache, or the Hugging Face repo Iceclear/StableSR).  Settings.fidelity is
    the CFW weight w; Settings.steps the respaced steps (1..1000); Settings.tile / tile_overlap are in LR
    pixels like every method's, the sampler's latent tiles are half that (1 latent px = 2 LR px = 8
    output px; default 128 LR px = 64 latent px as the script).  `dtype` "auto" is fp16 on CUDA.
    `min_side` upsamples inputs whose short output side is below it to that side and scales the result
    back down; default (None): 512 for the official checkpoints, as the script always does
    (`upsample_scale = max(512 / short LR side, upscale)`: SD-2.1 works at 512 px), 0 (off) for the mini.
    `unet_variant` names the UNet layout of the official files ("sd21"; "tiny" in tests).
    The sampled latent of recent inputs is kept (`latent_cache_mb`, 0 = off): a run that differs from an
    earlier one only in w skips the diffusion steps and gives what a full run would.
    """

    def __init__(self, variant: str = "official", *, weights: Optional[os.PathLike | str] = None,
                 cfw_weights: Optional[os.PathLike | str] = None, bundle_dir: Optional[os.PathLike | str] = None,
                 method_id: Optional[str] = None, dtype: str = "auto", min_side: Optional[int] = None,
                 unet_variant: str = "sd21", latent_cache_mb: int = 64):
        if variant not in (*VARIANTS, "mini"):
            raise ValueError(f"unknown StableSR variant {variant!r}; valid: {', '.join((*VARIANTS, 'mini'))}")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if min_side is None:  # the script's rule for the SD-2.1 checkpoints; the mini prior was trained small
            min_side = 0 if variant == "mini" else OFFICIAL_MIN_SIDE
        self.variant, self.dtype, self.min_side = variant, dtype, int(min_side)
        self.unet_variant = unet_variant  # "sd21" for the released files; "tiny" for tests
        self._models: dict[tuple[str, str], StableSRModel] = {}
        self._lock = threading.Lock()
        self.latents = _LatentCache(int(latent_cache_mb) * 2**20) if latent_cache_mb else None
        if variant == "mini":
            mid = method_id or "stablesr-mini"
            self.bundle = Path(bundle_dir) if bundle_dir is not None else W.ASSETS_WEIGHTS / mid
            self.spec = WeightSpec(key="stablesr", filename=f"{mid}_{MINI_WEIGHTS_FILE}",
                                   bundled=f"{mid}/{MINI_WEIGHTS_FILE}",
                                   licence="weights trained by this project (see the model card)")
            self.cfw_spec = None
            self.weights_explicit = weights or (self.bundle / MINI_WEIGHTS_FILE)
            self.cfw_explicit = None
            cfg_path = self.bundle / "config.json"
            cfg = json.loads(cfg_path.read_text()) if cfg_path.is_file() else {}
            default_steps, max_steps = int(cfg.get("default_steps", 20)), int(cfg.get("timesteps", 1000))
            # a bundle whose realism end is not usable yet opens at w = 1 (written by the export from its sweep)
            default_w = float(cfg.get("default_fidelity", 0.5))
            specs: tuple[WeightSpec, ...] = (self.spec,)
            label = "StableSR mini (fidelity w)"
            desc = ("StableSR's time-aware encoder, SFT and CFW decoder on the project's small latent diffusion "
                    "prior (mini-sd); same code as the official model.")
            if default_w == 1.0:
                desc += " Opens at w = 1: this bundle's realism end (w near 0) is not usable yet (see its model card)."
            licence = "code MIT; weights trained by this project (see the model card)"
        else:
            fname, default_steps, size = VARIANTS[variant]
            mid = method_id or ("stablesr" if variant == "official" else "stablesr-turbo")
            self.bundle = None
            self.spec = WeightSpec(key="stablesr", filename=fname, hf_repo=HF_REPO, env="STABLESR_WEIGHTS",
                                   size_mb=size, licence=LICENCE)
            self.cfw_spec = WeightSpec(key="cfw", filename="vqgan_cfw_00011.ckpt", hf_repo=HF_REPO, env=CFW_ENV,
                                       size_mb=960, licence=LICENCE)
            self.weights_explicit, self.cfw_explicit = weights, cfw_weights
            max_steps, default_w = 1000, 0.5  # the official scripts' --dec_w 0.5
            specs = (self.spec, self.cfw_spec)
            label = "StableSR (SD-2.1, fidelity w)" if variant == "official" else "StableSR turbo (4 steps)"
            desc = ("Stable Diffusion 2.1 steered by the LR (Wang et al. 2023): time-aware encoder + SFT, "
                    "aggregation sampling over latent tiles, CFW decoder with the fidelity-realism weight w.")
            if self.min_side:
                desc += (f" Outputs under {self.min_side} px on the short side are computed at {self.min_side} "
                         "px and resized down, as the official script does.")
            licence = LICENCE
        self.info = MethodInfo(
            id=mid, label=label, description=desc, scales=(4,), default_scale=4,
            steps=StepsSpec(1, max_steps, default_steps), supports_fidelity=True, default_fidelity=default_w,
            uses_seed=True, tiling_space="latent", default_tile=2 * DEFAULT_LATENT_TILE, size_multiple=8,
            default_color_fix="adain", licence=licence, weights=specs, family="diffusion")

    # ---- resolution

    def _paths(self, download: bool) -> tuple[Path, Optional[Path]]:
        main = W.resolve(self.spec, self.weights_explicit, download=download)
        cfw = W.resolve(self.cfw_spec, self.cfw_explicit, download=download) if self.cfw_spec else None
        return main, cfw

    def availability(self) -> Availability:
        try:
            if self.variant == "mini":
                if not (self.bundle / "config.json").is_file():
                    raise WeightsUnavailable(f"{self.info.label}: {self.bundle}/config.json is missing (train and "
                                             f"export stablesr-mini: scripts/train_sd_minis.sh)")
                cfg = json.loads((self.bundle / "config.json").read_text())
                prior = _prior_folder(self.bundle, cfg)
                if not (prior / "unet").is_dir() or not (prior / "vae").is_dir():
                    raise WeightsUnavailable(f"{self.info.label}: the prior folder {prior} lacks unet/ or vae/")
            self._paths(download=False)
        except WeightsUnavailable as e:
            return Availability(False, str(e))
        return Availability(True)

    def model(self, device: torch.device | str = "cpu") -> StableSRModel:
        """The loaded networks for `device` (loaded once per device)."""
        device = torch.device(device)
        key = (str(device), self.dtype)
        with self._lock:
            if key not in self._models:
                main, cfw = self._paths(download=True)
                m = (load_mini(self.bundle) if self.variant == "mini" else
                     load_official(main, cfw, unet_variant=self.unet_variant))
                self._models[key] = m.to(device=device, dtype=compute_dtype(device, self.dtype)).eval().requires_grad_(False)
            return self._models[key]

    # ---- running

    @torch.inference_mode()
    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        st = ctx.settings
        s = int(st.scale)
        if s != 4:
            raise InputError(f"{self.info.id} upscales x4, not x{s}")
        w = float(st.fidelity)
        if not 0.0 <= w <= 1.0:
            raise InputError(f"the fidelity weight w must be in [0, 1], got {w}")
        steps = int(st.steps or self.info.steps.default)
        ctx.report(0.0, f"{self.info.id}: loading")
        m = self.model(ctx.device)
        tile = max(int(st.tile or self.info.default_tile) // 16 * 8, 8)  # LR px -> latent px, a multiple of 8
        overlap = tiling.request_overlap(tile, int(st.tile_overlap) // 2)
        key = None
        whole = ctx.tile_box is None or (int(ctx.tile_count) <= 1 and tuple(ctx.tile_box[:2]) == (0, 0))
        if self.latents is not None and whole:  # (the noise depends on the tile's position)
            key = _LatentCache.key(lr, steps, int(st.seed), tile, overlap, self.min_side, s, str(ctx.device),
                                   str(m.dtype))
        cached = self.latents.get(key) if key else None
        keep = (lambda z: self.latents.put(key, z)) if key else None
        return sample(m, lr, ctx, steps=steps, w=w, scale=s, tile=tile, overlap=overlap, min_side=self.min_side,
                      label=self.info.id, latent=cached, on_latent=keep)


@torch.inference_mode()
def sample(m: StableSRModel, lr: torch.Tensor, ctx: RunContext, *, steps: int, w: float, scale: int = 4,
           tile: int = DEFAULT_LATENT_TILE, overlap: int = DEFAULT_LATENT_OVERLAP, min_side: int = 0,
           label: str = "stablesr", latent: Optional[torch.Tensor] = None, on_latent=None) -> torch.Tensor:
    """One StableSR run of the networks `m` on `lr` (1, 3, h, w) in [0, 1] -> (1, 3, h*scale, w*scale):
    upsample, encode (posterior noise from `ctx.randn`), x_T = z_lr noised to t = T-1, `steps` respaced
    aggregation-sampling steps over `tile`-px latent tiles (`overlap` px), CFW decode with weight `w`.
    `StableSR.run` and the training recipes' validation both call this.  `latent`: the sampled latent of
    an earlier run on the same input and settings (the steps are skipped); `on_latent(z)` receives it."""
    dev, dt = ctx.device, m.dtype
    h0, w0 = lr.shape[-2:]
    out_hw = up_hw = (h0 * scale, w0 * scale)
    if min_side and min(h0, w0) * scale < min_side:  # the script's "at least 512 px" upsampling:
        s = min_side / min(h0, w0)  # upsample_scale = max(512 / short LR side, upscale), sizes int(side * s)
        up_hw = (int(h0 * s + 1e-6), int(w0 * s + 1e-6))
    if up_hw == out_hw:
        x = torch_bicubic(lr, scale)
    else:
        x = F.interpolate(lr.float(), size=up_hw, mode="bicubic", align_corners=False).clamp(0, 1)
    x = _pad_to(x, 64)  # latent a multiple of 8: the UNet's three downsamplings (the script pads to 32)
    x = (x * 2 - 1).to(dev, dt)
    lh, lw = x.shape[-2] // 8, x.shape[-1] // 8
    vae_tile = CPU_VAE_TILE if dev.type != "cuda" else 160

    ctx.report(0.02, f"{label}: encoding")
    zc = int(m.denoiser.unet.config.in_channels)  # latent channels: 4 for SD, the mini prior's own otherwise
    post_noise = ctx.randn(("stablesr", "posterior"), zc, lh, lw).to(dev, dt)
    z_lr, feats = m.encode_lr_tiled(x, post_noise, vae_tile * 8, 16 * 8)
    T, lo, hi = int(m.schedule_cfg["timesteps"]), float(m.schedule_cfg["linear_start"]), float(m.schedule_cfg["linear_end"])
    base = sd.sd_schedule(T, lo, hi)
    sched = sd.respace(sd.sd_betas(T, lo, hi), steps)
    x_T = sd.q_sample(z_lr, base, base.N - 1, ctx.randn(("stablesr", "x_T"), zc, lh, lw).to(dev, dt))
    model_fn = make_model_fn(m.denoiser, z_lr, m.context.to(dev, dt))

    def noise_fn(k: int, shape) -> torch.Tensor:
        return ctx.randn(("stablesr", "step", int(k)), int(shape[1]), int(shape[-2]), int(shape[-1])).to(dev, dt)

    def callback(info: Mapping[str, Any]) -> None:
        done = steps - int(info["k"])
        ctx.report(0.05 + 0.85 * done / steps, f"{label}: step {done}/{steps}")

    if latent is not None and tuple(latent.shape) == tuple(x_T.shape):
        ctx.report(0.9, f"{label}: the sampled latent of this input is cached (only w changed)")
        z = latent.to(dev, dt)
    else:
        z = sd.canvas_sample(model_fn, x_T, sched, tile=tile, overlap=overlap, noise_fn=noise_fn,
                             parameterization=m.parameterization, callback=callback)
        if on_latent is not None:
            on_latent(z)
    ctx.report(0.92, f"{label}: decoding (w = {w:g})")
    out = m.cfw.decode_tiled(z / m.scale_factor, feats, w, vae_tile, 16)
    out = ((out.float() + 1) / 2).clamp(0, 1)
    if up_hw != out_hw:  # back to x`scale` of the input (the script's final bicubic resize; antialiased
        out = out[:, :, :up_hw[0], :up_hw[1]]  # here, which the script's is not)
        out = F.interpolate(out, size=out_hw, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    ctx.report(1.0, f"{label}: done")
    return out[:, :, :h0 * scale, :w0 * scale]


def _pad_to(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Reflect-pad bottom/right to a multiple (the script pads the upsampled LR to 32)."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if ph or pw:
        mode = "reflect" if ph < x.shape[-2] and pw < x.shape[-1] else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x
