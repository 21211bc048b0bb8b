"""Training recipes of `mini-sd` (a small Stable-Diffusion-layout latent diffusion prior) and of
`osediff-mini` (OSEDiff's one-step LoRA generator on that prior), in three stages, plus their export.

    mini-sd-vae   stage 1: diffusers AutoencoderKL at mini_sd_config()["vae"] on HR crops
    mini-sd       stage 2: UNet2DConditionModel at mini_sd_config()["unet"], an unconditional latent
                           DDPM (epsilon prediction) in the frozen stage-1 latent space, fixed context
    osediff-mini  stage 3: OSEDiff's objective (one step at t = 999 from the LQ latent, LoRA on the
                           VAE encoder and the UNet + conv_in; MSE + perceptual + VSD) on the frozen prior

    python -m sr_core.training mini-sd-vae  --out runs/mini-sd-vae
    python -m sr_core.training mini-sd      --out runs/mini-sd      --set vae_from=runs/mini-sd-vae
    python -m sr_core.training osediff-mini --out runs/osediff-mini --set prior_from=runs/mini-sd
    python -m sr_core.training export runs/mini-sd        -> assets/weights/mini-sd/ (diffusers layout)
    python -m sr_core.training export runs/osediff-mini   -> assets/weights/osediff-mini/ (+ osediff.safetensors)

Stage 1 is Stable Diffusion's autoencoder objective without the GAN (LDM `LPIPSWithDiscriminator`
with the discriminator off, as described in the LDM paper): L1 reconstruction of [-1, 1] images +
`lambda_lpips` x the perceptual distance (`perceptual.py`, shift-tolerant LPIPS; SD used 1.0, the
default here is 0.1 because the downstream target is PSNR) + `kl_weight` (1e-6, SD's) x the KL of the
posterior to N(0, I), the KL summed over the latent and divided by the number of image values (the
same ratio as LDM's per-image sums).  Decoding uses a posterior sample, as LDM.

Stage 2 (LDM / SD's `LatentDiffusion.p_losses`): z0 = scaling_factor x E(HR) (a posterior sample),
t ~ U{0..999}, z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps, MSE(eps_theta(z_t, t, c), eps), SD's
scaled-linear betas 0.00085 -> 0.012 over T = 1000.  The scaling factor is measured as SD did it
(LDM `scale_by_std`): 1 / std of the first training batch's latents (averaged over processes), kept
in a buffer and written to vae/config.json `scaling_factor` at export.  The context c is a *fixed*
tensor (a decision of ours): (1, 77, 128) name-seeded Gaussian tokens standardised per token (what
a text encoder's final LayerNorm emits), saved as `empty_prompt_embeds.safetensors` ("prompt_embeds").
Fixed rather than learned because the cross-attention key/value projections are learned linear maps
of it and a random 77 x 128 matrix has full row rank, so learning it adds no expressiveness; a fixed
tensor also keeps the prior, the LoRA generator and the fake score on one context by construction.

Stage 3 (OSEDiff paper, sec. 3; METHODS.md): the generator is the prior with LoRA rank 4 (alpha 8)
on exactly the modules the method attaches (`official_lora_targets` / `attach_lora` in
sr_core/methods/osediff.py: VAE encoder + quant_conv; UNet attention, convolutions, projections and
feed-forwards, in the three official adapter groups) plus a trainable `conv_in`.  x_L is upsampled
x4 by `pil_bicubic` (as the method), z_L = scaling_factor x E_lora(x_L) (posterior mean, as the
method serves it), one UNet call at t = 999 with the fixed context, z_H = (z_L - sqrt(1 - abar_999)
eps) / sqrt(abar_999), x_H = D(z_H / scaling_factor) with the frozen decoder (not clamped in training
so every pixel keeps a gradient).  Loss = lambda_l2 MSE(x_H, x_GT) + lambda_lpips LPIPS(x_H, x_GT)
+ lambda_vsd L_VSD + lambda_vsd_lora L_diff.  VSD (variational score distillation in latent space):
a frozen "real" score eps_phi = the mini-sd UNet, and a "fake" score eps_phi' = a copy of it with
LoRA (rank 4, same targets) trained with the diffusion loss L_diff = MSE(eps_phi'(z_t, t), eps) on
the generator's detached latents (t ~ U{0..999}); the generator's gradient is the paper's
E_t,eps[omega(t) (eps_phi' - eps_phi)] dz_H/dtheta, written with x0-predictions:
g = omega (x0_fake - x0_real), x0 = (z_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), with both scores
evaluated without gradient at z_t = sqrt(abar_t) sg(z_H) + sqrt(1 - abar_t) eps.  Choices of ours
(the paper leaves them open and the official code could not be read here): t ~ U{20..979} for VSD;
omega = 1 / mean|z_H - x0_real| per sample (the normalisation of DMD, Yin et al. 2024); the VSD term
is the surrogate 2 <z_H - sg(z_H), sg(g)> / numel, whose gradient is that of MSE(z_H, sg(z_H - g))
and whose value is exactly 0, so the logged loss is MSE + LPIPS + L_diff (VSD acts only through its
gradient); no classifier-free guidance on the real score (with one fixed context there is no
conditional/unconditional pair); generator and fake score are updated in the same optimiser step
from one backward pass of the sum (the two parameter sets receive disjoint gradients: L_diff sees
detached latents and VSD sees the scores without gradient, so this equals the paper's alternating
updates evaluated at the same latents, except that gradient clipping is joint); no EMA in the paper,
the kit's EMA is kept.  Default weights lambda_lpips 0.05 and lambda_vsd 0.025 are 40x below the
paper's (2, 1): the project's target is bicubic-x4 PSNR on BSD100, where perceptual terms cost PSNR.
Measured on the CPU-trained mini (2026-12-01, warm continuations at HR 256): 38 more minutes at 0.2 / 0.1
(peak lr 4e-5) left BSD100 level (25.76 dB), 70 minutes at 0.05 / 0.025 (peak lr 1e-4) took it to 26.09
(bicubic 25.96); the two changes were made together.
`--set lambda_lpips=2 --set lambda_vsd=1` restores the paper's.  Degradation: bicubic (MATLAB
imresize), like srdiff-mini, because the benchmark is bicubic x4; the paper trains on Real-ESRGAN
degradations, which are `--set degradation.realesrgan=1` (or a mix) away.

Every stage trains through `sr_core.training.trainer.train` (accelerate, EMA, checkpoints); the
model handed to the trainer is a wrapper whose forward returns the loss terms (one DDP forward per
step), and whose JSON config travels in a uint8 buffer so a run's checkpoint describes its networks
for the next stage and for export.  The code is ours.
"""

from __future__ import annotations

import copy
import csv
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .degradations import DegradationMix
from .recipes import RECIPES, Recipe
from .recipes_resshift import _HasConfig, _sub, config_from_state

__all__ = [
    "MINI_SD_MODEL", "SMOKE_SD_SETS", "sd_config", "fixed_context", "VAETrainer", "PriorTrainer", "OSEDiffTrainer",
    "SDVAERecipe", "SDPriorRecipe", "OSEDiffRecipe", "SD_RECIPES", "register", "load_vae_source", "load_prior",
    "write_prior_folder", "prior_matches", "vae_recon_psnr", "ldm_heldout_loss", "export_sd_run", "config_from_state",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EVAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "eval"
EVAL_SETS = ("Set5", "Set14", "BSD100")
BICUBIC_X4 = {"Set5": 28.42, "Set14": 26.00, "BSD100": 25.96}
T_GEN = 999  # OSEDiff's one step (sr_core.methods.osediff.TIMESTEP)

# Flat network config (recipe `model_config`, `--set model.KEY=VALUE`); the defaults are mini_sd_config().
MINI_SD_MODEL: dict[str, Any] = {
    # 16 latent channels, not SD's 4 (why: mini_sd_config's docstring)
    "vae_channels": [16, 32, 64, 64], "vae_layers": 1, "latent_channels": 16,
    "unet_channels": [32, 64, 128, 128], "unet_heads": [1, 2, 4, 4], "unet_layers": 1,
    "groups": 8, "cross_dim": 128, "ctx_len": 77,
    "vae_mid_attention": False,  # True: self-attention in the VAE mid blocks (SD has it; quadratic in the area)
}
# Tiny networks for the CPU smoke runs (the same block types and module names; a 2-level UNet, f8 VAE).
SMOKE_SD_SETS = (
    "model.vae_channels=[8,8,16,16]", "model.vae_layers=1", "model.unet_channels=[8,16]",
    "model.unet_heads=[1,2]", "model.unet_layers=1", "model.groups=4", "model.cross_dim=16", "model.ctx_len=8",
)


def sd_config(model_config: Optional[dict] = None) -> dict:
    """The diffusers component configs (unet, vae, scheduler, tokenizer) of `mini_sd_config()` with the
    flat `model_config` keys applied."""
    from ..nets.sd_configs import mini_sd_config

    m = dict(MINI_SD_MODEL)
    m.update(model_config or {})
    cfg = mini_sd_config()
    cfg.pop("text_encoder", None)
    n_u = len(m["unet_channels"])  # SD's block types for n levels: cross-attention everywhere but the deepest
    cfg["unet"].update(down_block_types=["CrossAttnDownBlock2D"] * (n_u - 1) + ["DownBlock2D"],
                       up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n_u - 1),
                       block_out_channels=[int(c) for c in m["unet_channels"]],
                       attention_head_dim=[int(h) for h in m["unet_heads"]], layers_per_block=int(m["unet_layers"]),
                       norm_num_groups=int(m["groups"]), cross_attention_dim=int(m["cross_dim"]),
                       in_channels=int(m["latent_channels"]), out_channels=int(m["latent_channels"]))
    cfg["vae"].update(block_out_channels=[int(c) for c in m["vae_channels"]], layers_per_block=int(m["vae_layers"]),
                      norm_num_groups=int(m["groups"]), latent_channels=int(m["latent_channels"]))
    if not m["vae_mid_attention"]:  # an AutoencoderKL option, kept in vae/config.json for from_pretrained
        cfg["vae"]["mid_block_add_attention"] = False
    cfg["tokenizer"] = {"model_max_length": int(m["ctx_len"])}
    return cfg


def fixed_context(length: int, dim: int) -> torch.Tensor:
    """The fixed empty-prompt context (1, length, dim): name-seeded Gaussian tokens, each standardised
    to mean 0 / std 1 over its `dim` values (a LayerNorm output without affine)."""
    from ..nets.init import deterministic_tensor

    c = deterministic_tensor("mini-sd/empty_prompt_embeds", (1, int(length), int(dim)))
    return ((c - c.mean(-1, keepdim=True)) / c.std(-1, keepdim=True)).contiguous()


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _params(m: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad or not trainable)


def _resolve(path: str) -> Path:
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p


def _schedule_abar(sched_cfg: dict) -> torch.Tensor:
    """alphas_cumprod (float32, 1000) of the scheduler config, from diffusers' DDPMScheduler (the
    values the OSEDiff method reads)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**dict(sched_cfg)).alphas_cumprod.float().clone()


def _up(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """x4 upsampling of the method (`pil_bicubic`, Pillow on 8 bits), in [-1, 1], on lr's device."""
    from ..methods.osediff import pil_bicubic

    return pil_bicubic(lr, scale).to(lr.device) * 2 - 1


def _all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t


def _perceptual(spec: str, weight: float) -> Optional[nn.Module]:
    if not weight:
        return None
    from .perceptual import load_perceptual

    return load_perceptual(spec)


# ------------------------------------------------------------------------------------------------
# the config travels inside the checkpoint


# the run's bundle config travels in the checkpoint as a uint8 buffer (shared with the resshift recipes)
_Configured = _HasConfig


def _build_vae(cfg: dict) -> nn.Module:
    from diffusers import AutoencoderKL

    return AutoencoderKL(**dict(cfg["vae"]))


def _build_unet(cfg: dict) -> nn.Module:
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**dict(cfg["unet"]))


# ------------------------------------------------------------------------------------------------
# stage 1: the autoencoder


class VAETrainer(_Configured):
    """forward(hr in [0, 1]) -> {'loss', 'l1', 'lpips', 'kl'}: SD's VAE objective without the GAN."""

    def __init__(self, vae: nn.Module, config: dict, lpips: Optional[nn.Module], lambda_lpips: float,
                 kl_weight: float):
        super().__init__()
        self.vae = vae
        self.lpips = lpips
        self._set_config(config)
        self.lambda_lpips, self.kl_weight = float(lambda_lpips), float(kl_weight)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def forward(self, hr: torch.Tensor) -> dict:
        x = hr * 2 - 1
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.sample()).sample.float()
        l1 = F.l1_loss(rec, x)
        kl = post.kl().float().mean() / x[0].numel()  # per-image KL sum / values per image
        loss = l1 + self.kl_weight * kl
        terms = {"l1": l1, "kl": kl}
        if self.lpips is not None and self.lambda_lpips:
            p = self.lpips(rec, x).mean()
            terms["lpips"] = p
            loss = loss + self.lambda_lpips * p
        terms["loss"] = loss
        return terms


# ------------------------------------------------------------------------------------------------
# stage 2: the latent diffusion prior


class PriorTrainer(_Configured):
    """forward(hr in [0, 1]) -> {'loss'}: epsilon-prediction MSE in the frozen VAE's scaled latent space.

    `scaling_factor` is 0 until the first training batch sets it to 1 / std(latents) (LDM scale_by_std)."""

    def __init__(self, unet: nn.Module, vae: nn.Module, config: dict, context: torch.Tensor,
                 scaling_factor: float = 0.0):
        super().__init__()
        self.unet = unet
        self.vae = vae.requires_grad_(False).eval()
        self._set_config(config)
        self.register_buffer("context", context.float().clone())
        self.register_buffer("abar", _schedule_abar(config["sd"]["scheduler"]))
        self.register_buffer("scaling_factor", torch.tensor(float(scaling_factor)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def latents(self, hr: torch.Tensor, sample: bool = True) -> torch.Tensor:
        post = self.vae.encode(hr * 2 - 1).latent_dist
        z = (post.sample() if sample else post.mode()).float()
        if float(self.scaling_factor) <= 0:
            var = _all_reduce_mean(z.var().reshape(1).clone())
            self.scaling_factor.fill_(float(1.0 / var.sqrt().clamp_min(1e-8)))
        return z * self.scaling_factor

    def eps(self, z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        ctx = self.context.to(z_t.dtype).expand(z_t.shape[0], -1, -1)
        return self.unet(z_t, t, encoder_hidden_states=ctx).sample

    def forward(self, hr: torch.Tensor) -> dict:
        z0 = self.latents(hr)
        t = torch.randint(0, self.abar.shape[0], (z0.shape[0],), device=z0.device)
        noise = torch.randn_like(z0)
        a = self.abar[t].view(-1, 1, 1, 1)
        z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
        mse = F.mse_loss(self.eps(z_t, t).float(), noise)
        return {"loss": mse, "mse": mse}


# ------------------------------------------------------------------------------------------------
# loading stage outputs


def _load_run(path: Path) -> Optional[dict]:
    ck = path / "ckpt" / "last.pt" if path.is_dir() else path
    if ck.is_file() and ck.suffix == ".pt":
        return torch.load(ck, map_location="cpu", weights_only=True)["ema"]
    return None


def load_vae_source(vae_from: str, model_config: Optional[dict] = None) -> tuple[nn.Module, dict]:
    """(frozen AutoencoderKL, its vae config) from a mini-sd-vae run (EMA weights), a mini-sd run, or a
    mini-sd / osediff-mini folder (vae/); `vae_from=''` gives a seeded random one (smoke runs only)."""
    from ..weights import load_into

    cfg = sd_config(model_config)
    if not vae_from:
        torch.manual_seed(1234)
        return _build_vae(cfg).requires_grad_(False).eval(), cfg["vae"]
    p = _resolve(vae_from)
    sd = _load_run(p)
    if sd is None:
        from ..methods.osediff import mini_prior_folder

        p = mini_prior_folder(p)  # an osediff-mini folder that names its prior
    if sd is not None:
        vcfg = config_from_state(sd)["sd"]["vae"]
        vae = _build_vae({"vae": vcfg})
        load_into(vae, _sub(sd, "vae."))
        return vae.requires_grad_(False).eval(), vcfg
    if (p / "vae" / "config.json").is_file():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(str(p), subfolder="vae").float()
        vcfg = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
        return vae.requires_grad_(False).eval(), vcfg
    raise FileNotFoundError(f"{vae_from}: neither a run folder (ckpt/last.pt) nor a folder with vae/; train "
                            "mini-sd-vae first (python -m sr_core.training mini-sd-vae) or pass --set vae_from=...")


def load_prior(prior_from: str, model_config: Optional[dict] = None) -> dict:
    """The frozen mini-sd prior as {'unet', 'vae', 'context', 'scaling_factor', 'sd'} from a mini-sd
    run (EMA) or a mini-sd / osediff-mini folder; `prior_from=''`: seeded random networks (smoke only)."""
    from ..weights import load_into

    if not prior_from:
        cfg = sd_config(model_config)
        torch.manual_seed(4321)
        unet, vae = _build_unet(cfg), _build_vae(cfg)
        ctx = fixed_context(cfg["tokenizer"]["model_max_length"], cfg["unet"]["cross_attention_dim"])
        return {"unet": unet, "vae": vae, "context": ctx, "scaling_factor": 1.0, "sd": cfg, "source": ""}
    p = _resolve(prior_from)
    sd = _load_run(p)
    if sd is None:
        from ..methods.osediff import mini_prior_folder

        p = mini_prior_folder(p)  # an osediff-mini folder that names its prior
    if sd is not None:
        cfg = config_from_state(sd)
        if "context" not in sd:
            raise ValueError(f"{prior_from} is not a mini-sd run (it has no prior context)")
        unet, vae = _build_unet(cfg["sd"]), _build_vae(cfg["sd"])
        load_into(unet, _sub(sd, "unet."))
        load_into(vae, _sub(sd, "vae."))
        sf = float(sd["scaling_factor"])
        if sf <= 0:
            raise ValueError(f"{prior_from}: the scaling factor was never measured (no training step ran)")
        return {"unet": unet, "vae": vae, "context": sd["context"].float(), "scaling_factor": sf, "sd": cfg["sd"],
                "source": str(prior_from)}
    if (p / "unet" / "config.json").is_file():
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from safetensors.torch import load_file

        from ..methods.osediff import EMPTY_EMBEDS_FILE

        unet = UNet2DConditionModel.from_pretrained(str(p), subfolder="unet").float()
        vae = AutoencoderKL.from_pretrained(str(p), subfolder="vae").float()
        sched = json.loads((p / "scheduler" / "scheduler_config.json").read_text())
        ctx = load_file(str(p / EMPTY_EMBEDS_FILE))["prompt_embeds"].float()
        clean = lambda c: {k: v for k, v in dict(c).items() if not k.startswith("_")}  # noqa: E731
        cfg = {"unet": clean(unet.config), "vae": clean(vae.config), "scheduler": clean(sched),
               "tokenizer": {"model_max_length": int(ctx.shape[1])}}
        return {"unet": unet, "vae": vae, "context": ctx, "scaling_factor": float(vae.config.scaling_factor),
                "sd": cfg, "source": str(prior_from)}
    raise FileNotFoundError(f"{prior_from}: neither a mini-sd run folder (ckpt/last.pt) nor a mini-sd folder "
                            "(unet/, vae/, scheduler/, empty_prompt_embeds.safetensors); train and export mini-sd "
                            "first or pass --set prior_from=...")


# ------------------------------------------------------------------------------------------------
# stage 3: OSEDiff


def _lora_meta(unet: nn.Module, vae: nn.Module, rank: int) -> dict:
    from ..methods.osediff import official_lora_targets

    meta = official_lora_targets(unet, vae)
    meta.update(rank_unet=int(rank), rank_vae=int(rank))
    return meta


def warm_start_osediff(trainer: "OSEDiffTrainer", source: str) -> list[str]:
    """Load `source` into `trainer` (see `OSEDiffRecipe.init_from`); returns the names loaded.  Refused, with
    what to set, when the LoRA ranks or target modules differ (another `lora_rank`, another prior layout)."""
    from ..methods.osediff import _PKL_LISTS, _strict_copy, load_osediff_weights, lora_state_dicts

    p = _resolve(source)
    run = _load_run(p)
    if run is not None:  # a run: every trainable tensor (generator LoRA + conv_in, fake-score LoRA)
        own = dict(trainer.named_parameters())
        names = [n for n, q in own.items() if q.requires_grad]
        missing = [n for n in names if n not in run]
        bad = [n for n in names if n in run and tuple(run[n].shape) != tuple(own[n].shape)]
        if missing or bad:
            raise ValueError(f"{source}: not this recipe's osediff-mini run (missing {missing[:3]}, other shapes "
                             f"{bad[:3]}; another lora_rank?)")
        with torch.no_grad():
            for n in names:
                own[n].copy_(run[n].to(own[n].dtype))
        return names
    f = p / "osediff.safetensors" if p.is_dir() else p
    if not f.is_file():
        raise FileNotFoundError(f"{source}: neither an osediff-mini run (ckpt/last.pt) nor an OSEDiff checkpoint")
    ck = load_osediff_weights(f)
    meta = trainer.meta
    for k in ("rank_unet", "rank_vae"):
        if int(ck[k]) != int(meta[k]):
            raise ValueError(f"{source}: LoRA {k} {ck[k]}, this recipe builds {meta[k]}: set lora_rank={ck[k]}")
    for k in _PKL_LISTS:
        if sorted(ck[k]) != sorted(meta[k]):
            raise ValueError(f"{source}: its {k} are not this prior's (another UNet/VAE layout)")
    su, sv = lora_state_dicts(trainer.gen_unet, trainer.gen_vae)
    _strict_copy(trainer.gen_unet, su, ck["state_dict_unet"], "UNet")
    _strict_copy(trainer.gen_vae, sv, ck["state_dict_vae"], "VAE")
    return [f"gen_unet.{k}" for k in su] + [f"gen_vae.{k}" for k in sv]


def _fake_score(unet: nn.Module, meta: dict, rank: int) -> nn.Module:
    """A copy of the prior UNet with one LoRA adapter ("vsd") on the generator's UNet targets; only
    the LoRA weights train (the fake score of VSD)."""
    from peft import LoraConfig

    from ..methods.osediff import LORA_ALPHA

    fake = copy.deepcopy(unet)
    targets = (list(meta["unet_lora_encoder_modules"]) + list(meta["unet_lora_decoder_modules"])
               + list(meta["unet_lora_others_modules"]))
    fake.add_adapter(LoraConfig(r=int(rank), lora_alpha=LORA_ALPHA, init_lora_weights="gaussian",
                                target_modules=sorted(set(targets))), adapter_name="vsd")
    fake.requires_grad_(False)
    for n, p in fake.named_parameters():
        if "lora_" in n:
            p.requires_grad_(True)
    return fake


class OSEDiffTrainer(_Configured):
    """forward(hr, lr in [0, 1]) -> loss terms of OSEDiff's objective (see the module docstring).

    Holds the generator (`gen_unet`, `gen_vae`: the prior with the method's LoRA adapters, conv_in
    trainable), the frozen real score (`real_unet`), the LoRA fake score (`fake_unet`) and the
    perceptual network."""

    def __init__(self, prior: dict, config: dict, lpips: Optional[nn.Module], *, rank: int = 4,
                 lambdas=(1.0, 0.2, 0.1, 1.0), vsd_t=(20, 980), scale: int = 4):
        super().__init__()
        from ..methods.osediff import attach_lora

        unet, vae = prior["unet"].float(), prior["vae"].float()
        meta = _lora_meta(unet, vae, rank)
        self.real_unet = copy.deepcopy(unet).requires_grad_(False).eval()
        self.fake_unet = _fake_score(unet, meta, rank)
        self.gen_unet, self.gen_vae = copy.deepcopy(unet), copy.deepcopy(vae)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attach_lora(self.gen_unet, self.gen_vae, meta)
        for net in (self.gen_unet, self.gen_vae):
            net.requires_grad_(False)
            for n, p in net.named_parameters():
                if "lora_" in n:
                    p.requires_grad_(True)
        self.gen_unet.conv_in.requires_grad_(True)
        self.lpips = lpips
        cfg = dict(config, lora=meta, scaling_factor=float(prior["scaling_factor"]))
        self._set_config(cfg)
        self.meta = meta
        self.register_buffer("context", prior["context"].float().clone())
        self.register_buffer("abar", _schedule_abar(prior["sd"]["scheduler"]))
        self.scaling_factor = float(prior["scaling_factor"])
        self.l2, self.lp, self.vsd, self.vsd_lora = (float(x) for x in lambdas)
        self.vsd_t = (int(vsd_t[0]), int(vsd_t[1]))
        self.scale = int(scale)

    def train(self, mode: bool = True):
        super().train(mode)
        self.real_unet.eval()
        if self.lpips is not None:
            self.lpips.eval()
        return self

    def _ctx(self, n: int, dtype) -> torch.Tensor:
        return self.context.to(dtype).expand(n, -1, -1)

    def generate(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_H in [-1, 1] unclamped, z_H) for lr in [0, 1] whose sides are even (latent = LR / 2)."""
        x = _up(lr.float(), self.scale)
        z_l = self.gen_vae.encode(x).latent_dist.mode() * self.scaling_factor
        t = torch.full((z_l.shape[0],), T_GEN, device=z_l.device, dtype=torch.long)
        eps = self.gen_unet(z_l, t, encoder_hidden_states=self._ctx(z_l.shape[0], z_l.dtype)).sample
        a = self.abar[T_GEN]
        z_h = (z_l.float() - (1 - a).sqrt() * eps.float()) / a.sqrt()
        return self.gen_vae.decode(z_h / self.scaling_factor).sample.float(), z_h

    def _x0(self, z_t: torch.Tensor, eps: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return (z_t - (1 - a).sqrt() * eps.float()) / a.sqrt()

    def vsd_loss(self, z_h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(surrogate with value 0 and gradient 2 g / numel, rms of g) for the generator's latents."""
        n = z_h.shape[0]
        t = torch.randint(self.vsd_t[0], self.vsd_t[1], (n,), device=z_h.device)
        a = self.abar[t].view(-1, 1, 1, 1)
        with torch.no_grad():
            z = z_h.detach().float()
            z_t = a.sqrt() * z + (1 - a).sqrt() * torch.randn_like(z)
            ctx = self._ctx(n, z_t.dtype)
            x0_real = self._x0(z_t, self.real_unet(z_t, t, encoder_hidden_states=ctx).sample, a)
            x0_fake = self._x0(z_t, self.fake_unet(z_t, t, encoder_hidden_states=ctx).sample, a)
            w = 1.0 / (z - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
            g = (x0_fake - x0_real) * w
        surrogate = ((z_h.float() - z) * g).sum() * 2.0 / z_h.numel()
        return surrogate, g.pow(2).mean().sqrt()

    def diffusion_loss(self, z_h: torch.Tensor) -> torch.Tensor:
        """The fake score's epsilon MSE on the generator's detached latents (t ~ U{0..T-1})."""
        z = z_h.detach().float()
        t = torch.randint(0, self.abar.shape[0], (z.shape[0],), device=z.device)
        a = self.abar[t].view(-1, 1, 1, 1)
        noise = torch.randn_like(z)
        eps = self.fake_unet(a.sqrt() * z + (1 - a).sqrt() * noise, t,
                             encoder_hidden_states=self._ctx(z.shape[0], z.dtype)).sample
        return F.mse_loss(eps.float(), noise)

    def forward(self, hr: torch.Tensor, lr: torch.Tensor) -> dict:
        x_h, z_h = self.generate(lr)
        gt = hr.float() * 2 - 1
        mse = F.mse_loss(x_h, gt)
        loss = self.l2 * mse
        terms = {"mse": mse}
        if self.lpips is not None and self.lp:
            p = self.lpips(x_h, gt).mean()
            loss = loss + self.lp * p
            terms["lpips"] = p
        if self.vsd:
            v, g_rms = self.vsd_loss(z_h)
            loss = loss + self.vsd * v
            terms["vsd_grad_rms"] = g_rms
        if self.vsd_lora:
            d = self.diffusion_loss(z_h)
            loss = loss + self.vsd_lora * d
            terms["diff"] = d
        terms["loss"] = loss
        return terms


# ------------------------------------------------------------------------------------------------
# recipes


def _pad_lr(lr: torch.Tensor, multiple: int = 2):
    from .. import tiling

    return tiling.pad_to_multiple(lr.float(), multiple)


@dataclass(frozen=True)
class SDVAERecipe(Recipe):
    """Stage 1: AutoencoderKL with L1 + lambda_lpips LPIPS + kl_weight KL on HR crops (LR unused)."""

    lambda_lpips: float = 0.1  # SD: 1.0; smaller here because the downstream target is PSNR
    kl_weight: float = 1e-6  # SD's
    lpips_weights: str = "auto"  # 'auto' ($SR_LPIPS_WEIGHTS / stlpips_pytorch), 'seeded' (tests), or a path
    init_from: str = ""  # warm start: the VAE of a mini-sd-vae / mini-sd run or a mini-sd folder ('' = none)

    def build_model(self) -> nn.Module:
        from ..weights import load_into

        cfg = {"stage": "mini-sd-vae", "sd": sd_config(self.model_config)}
        vae = _build_vae(cfg["sd"])
        if self.init_from:
            src, _ = load_vae_source(self.init_from, self.model_config)
            load_into(vae, src.state_dict())  # strict: the same VAE config
            vae.requires_grad_(True).train()
        return VAETrainer(vae, cfg, _perceptual(self.lpips_weights, self.lambda_lpips), self.lambda_lpips,
                          self.kl_weight)

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        return model(batch["hr"])

    @torch.no_grad()
    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """Sanity only: the VAE round trip (posterior mean) of the upsampled LR (about bicubic PSNR)."""
        vae = _unwrap(model).vae
        x, (h, w) = _pad_lr(lr)
        out = vae.decode(vae.encode(_up(x, self.scale)).latent_dist.mode()).sample.float()
        return ((out.clamp(-1, 1) + 1) / 2)[..., :h * self.scale, :w * self.scale]

    def export_run(self, run_dir, **kw) -> dict:
        raise ValueError("mini-sd-vae is not exported on its own: stage 2 reads it (vae_from=RUN) and the "
                         "mini-sd / osediff-mini folders carry it as vae/")


@dataclass(frozen=True)
class SDPriorRecipe(Recipe):
    """Stage 2: the UNet as an unconditional latent DDPM (epsilon MSE) on the frozen stage-1 VAE."""

    vae_from: str = "runs/mini-sd-vae"  # mini-sd-vae run (EMA) or a folder with vae/; '' = random (smoke)
    val_t: int = 250  # validation (SDEdit): noise the LR latent to this t ...
    val_steps: int = 5  # ... and denoise with this many DDIM steps (eta 0)
    init_from: str = ""  # warm start: the UNet of a mini-sd run or folder ('' = none)

    def build_model(self) -> nn.Module:
        from ..weights import load_into

        vae, vcfg = load_vae_source(self.vae_from, self.model_config)
        cfg = {"stage": "mini-sd", "vae_from": self.vae_from, "sd": sd_config(self.model_config)}
        cfg["sd"]["vae"] = vcfg
        u = cfg["sd"]["unet"]
        if int(u["in_channels"]) != int(vcfg["latent_channels"]):
            raise ValueError(f"the UNet takes {u['in_channels']} channels, the VAE gives {vcfg['latent_channels']}")
        ctx = fixed_context(cfg["sd"]["tokenizer"]["model_max_length"], u["cross_attention_dim"])
        unet = _build_unet(cfg["sd"])
        sf = 0.0  # measured by the first training batch
        if self.init_from:
            src = load_prior(self.init_from, self.model_config)
            load_into(unet, src["unet"].state_dict())  # strict
            unet.requires_grad_(True).train()
            sf = float(src["scaling_factor"])  # the UNet's latent scale goes on as it was, not re-measured
        return PriorTrainer(unet, vae, cfg, ctx, scaling_factor=sf)

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        return model(batch["hr"])

    @torch.no_grad()
    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """SDEdit with the prior: E(up(LR)) noised to `val_t` (seed 0), `val_steps` DDIM steps back, decoded.
        Checks that the prior keeps an image's content; it is not an SR method."""
        m = _unwrap(model)
        x, (h, w) = _pad_lr(lr)
        post = m.vae.encode(_up(x, self.scale)).latent_dist
        sf = float(m.scaling_factor) if float(m.scaling_factor) > 0 else 1.0
        z0 = post.mode().float() * sf
        g = torch.Generator().manual_seed(0)
        ts = [int(round(self.val_t * (1 - i / self.val_steps))) for i in range(self.val_steps)]
        a0 = m.abar[ts[0]]
        z = a0.sqrt() * z0 + (1 - a0).sqrt() * torch.randn(z0.shape, generator=g).to(z0.device)
        for i, t in enumerate(ts):
            a = m.abar[t]
            a_prev = m.abar[ts[i + 1]] if i + 1 < len(ts) else torch.ones((), device=z.device)
            eps = m.eps(z, torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)).float()
            x0 = (z - (1 - a).sqrt() * eps) / a.sqrt()
            z = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        out = m.vae.decode(z / sf).sample.float()
        return ((out.clamp(-1, 1) + 1) / 2)[..., :h * self.scale, :w * self.scale]

    def export_run(self, run_dir, **kw) -> dict:
        """Hook for the kit's `export_run`: the diffusers folder + model card (see `export_sd_run`)."""
        return export_sd_run(run_dir, **kw)


@dataclass(frozen=True)
class OSEDiffRecipe(Recipe):
    """Stage 3: OSEDiff's one-step LoRA generator on the frozen mini-sd prior (see the module docstring)."""

    prior_from: str = "runs/mini-sd"  # mini-sd run (EMA) or a mini-sd folder; '' = random (smoke)
    lora_rank: int = 4
    lambda_l2: float = 1.0
    lambda_lpips: float = 0.05  # paper: 2
    lambda_vsd: float = 0.025  # paper: 1
    lambda_vsd_lora: float = 1.0  # the fake score's diffusion loss
    vsd_t_min: int = 20
    vsd_t_max: int = 980
    lpips_weights: str = "auto"
    # warm start: the generator's LoRA + conv_in of an osediff-mini bundle / OSEDiff .safetensors (the fake
    # score starts afresh), or every trainable tensor of an osediff-mini run (EMA) -- '' = none
    init_from: str = ""

    def build_model(self) -> nn.Module:
        prior = load_prior(self.prior_from, self.model_config)
        cfg = {"stage": "osediff-mini", "prior_from": self.prior_from, "sd": prior["sd"]}
        trainer = OSEDiffTrainer(prior, cfg, _perceptual(self.lpips_weights, self.lambda_lpips), rank=self.lora_rank,
                                 lambdas=(self.lambda_l2, self.lambda_lpips, self.lambda_vsd, self.lambda_vsd_lora),
                                 vsd_t=(self.vsd_t_min, self.vsd_t_max), scale=self.scale)
        if self.init_from:
            warm_start_osediff(trainer, self.init_from)
        return trainer

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        return model(batch["hr"], batch["lr"])

    @torch.no_grad()
    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """The generator as `OSEDiff("mini")` runs it (no tiling): one UNet call, clamped output."""
        x, (h, w) = _pad_lr(lr)
        out, _ = _unwrap(model).generate(x)
        return ((out.clamp(-1, 1) + 1) / 2)[..., :h * self.scale, :w * self.scale]

    def export_run(self, run_dir, **kw) -> dict:
        """Hook for the kit's `export_run`: the OSEDiff("mini") folder + model card (see `export_sd_run`)."""
        return export_sd_run(run_dir, **kw)


_BICUBIC = DegradationMix(bicubic=1.0, realesrgan=0.0)
_SMOKE_COMMON = ("log_every=1", "ckpt_every=0", "val_every=0", "warmup_steps=0", "batch_size=4", "patch_lr=8",
                 "ema_decay=0.9", "lr=2e-3", "lr_min=1e-3")

SD_RECIPES: dict[str, Recipe] = {
    "mini-sd-vae": SDVAERecipe(
        name="mini-sd-vae",
        description=("Stage 1 of mini-sd/osediff-mini: a small AutoencoderKL (SD-2.1 layout, 16/32/64/64 ch, f8, "
                     "16 latent channels) trained on HR crops with L1 + 0.1 shift-tolerant LPIPS + 1e-6 KL "
                     "(Stable Diffusion's autoencoder objective without the GAN)."),
        model_config=dict(MINI_SD_MODEL),
        scale=4, batch_size=32, patch_lr=64, max_steps=20000, lr=2e-4, lr_min=1e-5, warmup_steps=500,
        betas=(0.5, 0.9), grad_clip=1.0, ema_decay=0.999, degradation=_BICUBIC, ckpt_every=1000,
        log_every=20, val_every=0, val_limit=0, export_id="", method_id="",
        smoke=_SMOKE_COMMON + SMOKE_SD_SETS + ("lpips_weights=seeded",),
    ),
    "mini-sd": SDPriorRecipe(
        name="mini-sd",
        description=("mini-sd: a small UNet2DConditionModel (SD-2.1 layout, 32/64/128/128 ch, 128-dim cross "
                     "attention on a fixed empty-prompt context) trained as an unconditional epsilon-prediction "
                     "latent DDPM (scaled-linear betas 0.00085-0.012, T = 1000) in the frozen mini-sd-vae latent "
                     "space, latents scaled by a factor measured from the data; the prior of osediff-mini."),
        model_config=dict(MINI_SD_MODEL),
        scale=4, batch_size=64, patch_lr=64, max_steps=30000, lr=1e-4, lr_min=1e-5, warmup_steps=500,
        betas=(0.9, 0.999), grad_clip=1.0, ema_decay=0.999, degradation=_BICUBIC, ckpt_every=1000,
        log_every=20, val_every=0, val_limit=5, export_id="mini-sd", method_id="",
        vae_from="runs/mini-sd-vae",
        smoke=_SMOKE_COMMON + SMOKE_SD_SETS + ("vae_from=", "val_steps=2"),
    ),
    "osediff-mini": OSEDiffRecipe(
        name="osediff-mini",
        description=("OSEDiff on mini-sd: LoRA (rank 4 by default, the official) on the VAE encoder and the UNet (the official target rule) + "
                     "conv_in, one step at t = 999 from the LQ latent, trained with MSE + LPIPS (shift-tolerant) "
                     "+ VSD (frozen mini-sd real score, LoRA fake score trained with the diffusion loss; the weights "
                     "are in the Training section) on "
                     "MATLAB-bicubic x4 pairs (the benchmark's degradation; Real-ESRGAN degradations are "
                     "--set degradation.realesrgan=1 away)."),
        model_config=dict(MINI_SD_MODEL),
        scale=4, batch_size=16, patch_lr=64, max_steps=10000, lr=1e-4, lr_min=5e-6, warmup_steps=200,
        betas=(0.9, 0.999), grad_clip=1.0, ema_decay=0.999, degradation=_BICUBIC, ckpt_every=1000,
        log_every=20, val_every=2000, val_limit=0, export_id="osediff-mini", method_id="osediff-mini",
        prior_from="runs/mini-sd",
        smoke=_SMOKE_COMMON + SMOKE_SD_SETS + ("prior_from=", "lpips_weights=seeded", "lambda_vsd_lora=0.1"),
    ),
}


def register(recipes: Optional[dict] = None) -> dict:
    """Add the three recipes to `recipes` (the kit's RECIPES by default); idempotent."""
    target = RECIPES if recipes is None else recipes
    for k, r in SD_RECIPES.items():
        target.setdefault(k, r)
    return target


# ------------------------------------------------------------------------------------------------
# export


def write_prior_folder(dest: Path, sd_cfg: dict, unet: nn.Module, vae: nn.Module, context: torch.Tensor,
                       scaling_factor: float, unet_dtype: str = "fp16", vae_dtype: str = "fp32") -> list[str]:
    """Write unet/, vae/ (with `scaling_factor`), scheduler/ and empty_prompt_embeds.safetensors; returns
    the written weight files (relative)."""
    from diffusers import DDPMScheduler
    from safetensors.torch import save_file

    from ..methods.osediff import EMPTY_EMBEDS_FILE

    dt = {"fp16": torch.float16, "fp32": torch.float32}
    dest.mkdir(parents=True, exist_ok=True)
    # nn.Module.to: a plain cast (ModelMixin.to warns about fp32-kept modules, which these models have none of)
    u = nn.Module.to(copy.deepcopy(unet), dt[unet_dtype])
    u.save_pretrained(str(dest / "unet"))
    v = nn.Module.to(copy.deepcopy(vae), dt[vae_dtype])
    v.register_to_config(scaling_factor=float(scaling_factor))
    v.save_pretrained(str(dest / "vae"))
    DDPMScheduler(**dict(sd_cfg["scheduler"])).save_pretrained(str(dest / "scheduler"))
    ctx = context.detach().float().cpu().reshape(1, *context.shape[-2:]).contiguous()
    save_file({"prompt_embeds": ctx}, str(dest / EMPTY_EMBEDS_FILE))
    return ["unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", EMPTY_EMBEDS_FILE]


def prior_matches(folder: Path, unet: nn.Module, vae: nn.Module, context: torch.Tensor, scaling_factor: float,
                  unet_dtype: str = "fp16") -> bool:
    """Whether `folder` is an exported mini-sd holding exactly this prior: the UNet as `write_prior_folder`
    stores it (`unet_dtype`), the VAE (fp32), the context and the scaling factor -- so a mini trained on
    it can name the folder instead of carrying a copy."""
    from safetensors.torch import load_file

    from ..methods.osediff import EMPTY_EMBEDS_FILE

    dt = {"fp16": torch.float16, "fp32": torch.float32}[unet_dtype]
    try:
        stored_u = load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
        stored_v = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
        stored_c = load_file(str(folder / EMPTY_EMBEDS_FILE))["prompt_embeds"]
        stored_sf = float(json.loads((folder / "vae" / "config.json").read_text())["scaling_factor"])
    except (OSError, ValueError, KeyError):
        return False

    def same(stored: dict, module: nn.Module, dtype: Optional[torch.dtype]) -> bool:
        ours = module.state_dict()
        return set(stored) == set(ours) and all(
            torch.equal(stored[k], ours[k].detach().cpu().to(dtype or stored[k].dtype)) for k in ours)

    ctx = context.detach().float().cpu().reshape(stored_c.shape) if context.numel() == stored_c.numel() else None
    return (ctx is not None and torch.equal(ctx, stored_c.float()) and abs(stored_sf - float(scaling_factor)) < 1e-9
            and same(stored_u, unet, dt) and same(stored_v, vae, torch.float32))


def _center_crops(hr_dir: Path, crop: int, limit: Optional[int]) -> list[torch.Tensor]:
    import numpy as np

    from .. import imaging
    from ..evaluate import list_images

    out = []
    for p in list_images(Path(hr_dir))[: limit or None]:
        a = np.array(imaging.load_image(p))
        if a.ndim == 2:
            a = np.repeat(a[..., None], 3, axis=2)
        a = a[..., :3]
        h, w = a.shape[:2]
        s = min(crop, h // 8 * 8, w // 8 * 8)
        y, x = (h - s) // 2, (w - s) // 2
        out.append(torch.from_numpy(np.ascontiguousarray(a[y:y + s, x:x + s])).permute(2, 0, 1)[None].float() / 255)
    return out


@torch.no_grad()
def vae_recon_psnr(vae: nn.Module, hr_dir, crop: Optional[int] = None, limit: Optional[int] = None,
                   device: str = "cpu") -> dict:
    """Mean Y-PSNR and RGB PSNR (dB, uint8) of the VAE round trip E -> mean -> D.

    Whole images by default, under the `sr_core eval` protocol (mod-cropped to 4, reflect-padded to a
    multiple of 8 for the VAE and cut back, Y-PSNR with a 4-px border), so the figure sits beside the
    benchmark's bicubic and SR figures: what an SR method decoding through this VAE scores with a perfect
    latent prediction.  Not a hard ceiling (a latent the encoder does not give can decode closer to the
    image).  `crop` > 0: centre crops of that size instead, no border."""
    import numpy as np

    from .. import imaging, metrics, tiling
    from ..evaluate import list_images

    vae = vae.to(device).eval()
    ys, rgbs = [], []
    if crop:
        images, border = [(x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
                          for x in _center_crops(Path(hr_dir), crop, limit)], 0
    else:
        images, border = [], 4
        for p in list_images(Path(hr_dir))[: limit or None]:
            a = np.array(imaging.load_image(p, max_pixels=1 << 30))
            a = np.repeat(a[..., None], 3, axis=2) if a.ndim == 2 else a[..., :3]
            images.append(imaging.mod_crop(a, 4))
    for a in images:
        x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float() / 127.5 - 1
        xp, (h, w) = tiling.pad_to_multiple(x, 8)
        rec = vae.decode(vae.encode(xp.to(device)).latent_dist.mode()).sample.float().clamp(-1, 1)[..., :h, :w]
        b = ((rec[0].cpu() + 1) * 127.5).round().permute(1, 2, 0).numpy().astype("uint8")
        ys.append(metrics.psnr_y(b, a, border))
        rgbs.append(metrics.psnr(b[border:h - border, border:w - border] if border else b,
                                 a[border:h - border, border:w - border] if border else a))
    n = len(ys)
    return {"psnr_y": float(sum(ys) / max(n, 1)), "psnr_rgb": float(sum(rgbs) / max(n, 1)), "n": n,
            "crop": int(crop or 0), "border": border}


@torch.no_grad()
def ldm_heldout_loss(unet: nn.Module, vae: nn.Module, context: torch.Tensor, scaling_factor: float,
                     sched_cfg: dict, hr_dir, crop: int = 256, limit: Optional[int] = None,
                     ts=(50, 200, 400, 600, 800, 950), seed: int = 0, device: str = "cpu") -> dict:
    """The prior's epsilon MSE on held-out centre crops at fixed timesteps (seeded noise), per t and mean."""
    abar = _schedule_abar(sched_cfg).to(device)
    unet, vae = unet.to(device).eval(), vae.to(device).eval()
    g = torch.Generator().manual_seed(seed)
    per_t = {int(t): [] for t in ts}
    for x in _center_crops(Path(hr_dir), crop, limit):
        z0 = vae.encode(x.to(device) * 2 - 1).latent_dist.mode().float() * scaling_factor
        ctx = context.to(device).float().expand(1, -1, -1)
        for t in ts:
            noise = torch.randn(z0.shape, generator=g).to(device)
            a = abar[int(t)]
            z_t = a.sqrt() * z0 + (1 - a).sqrt() * noise
            eps = unet(z_t, torch.tensor([int(t)], device=device), encoder_hidden_states=ctx).sample.float()
            per_t[int(t)].append(float(F.mse_loss(eps, noise)))
    means = {t: float(sum(v) / max(len(v), 1)) for t, v in per_t.items()}
    return {"mean": float(sum(means.values()) / max(len(means), 1)), "per_t": means,
            "n": len(next(iter(per_t.values()), []))}


def _train_tail(run_dir: Path, n: int = 100) -> Optional[float]:
    p = run_dir / "log.csv"
    if not p.exists():
        return None
    with open(p) as f:
        rows = [float(r["loss"]) for r in csv.DictReader(f)]
    return float(sum(rows[-n:]) / len(rows[-n:])) if rows else None


def _info(run_dir: Path, ck: dict) -> dict:
    p = run_dir / "train_info.json"
    info = json.loads(p.read_text()) if p.exists() else {}
    if int(info.get("steps", -1)) != int(ck["step"]):
        info = dict(info, steps=int(ck["step"]), wall_seconds=float(ck.get("elapsed", 0.0)), partial=True)
    return info


def _run_line(info: dict, recipe: Recipe) -> str:
    partial = " (stopped early; exported from the last checkpoint)" if info.get("partial") else ""
    budget = f", time budget {info['time_budget_min']} min" if info.get("time_budget_min") else ""
    warm = f", warm-started from `{recipe.init_from}`" if getattr(recipe, "init_from", "") else ""
    return (f"{info.get('steps')} steps (planned {info.get('max_steps', recipe.max_steps)}{budget}){partial}{warm}, batch "
            f"{recipe.batch_size}, HR patch {recipe.patch_lr * recipe.scale} px; device {info.get('device', 'unknown')}, "
            f"mixed precision {info.get('mixed_precision', '?')}, wall {float(info.get('wall_seconds') or 0) / 60:.1f} min")


def _stage_info(path: str, depth: int = 0) -> dict:
    """train_info.json of a run folder or an exported folder (`init_from`, `vae_from`); {} when there is none.
    A run's own warm start is followed too (as `init_stage`, when the file does not already hold it)."""
    if not path or depth > 8:
        return {}
    f = _resolve(path) / "train_info.json"
    if not f.is_file():
        return {}
    info = json.loads(f.read_text())
    parent = (info.get("recipe") or {}).get("init_from") or ""
    if parent and "init_stage" not in info:
        up = _stage_info(parent, depth + 1)
        if up:
            info["init_stage"] = up
    return info


def _stage_key(info: dict) -> tuple:
    return tuple(info.get(k) for k in ("steps", "wall_seconds", "finished"))


def _dedupe_lineage(info: dict) -> dict:
    """`info` with each run once in its `init_stage` chain.  A warm start named by a folder that has been
    exported over since (`init_from=assets/weights/osediff-mini`, then a later run -- or this one -- exported
    there) reads that folder's newer chain, which holds runs already in this one: those are skipped, the
    chain going on from the first run not seen yet."""
    chain, seen, cur = [], set(), info
    while cur:
        if _stage_key(cur) not in seen:
            seen.add(_stage_key(cur))
            chain.append({k: v for k, v in cur.items() if k != "init_stage"})
        cur = cur.get("init_stage") or {}
    out: dict = {}
    for stage in reversed(chain):
        out = {**stage, "init_stage": out} if out else stage
    return out


def _lineage_lines(info: dict) -> str:
    """Card lines for the runs a warm start built on (`init_stage`, nested), and the total; '' for none."""
    from .export import recipe_from_dict

    lines, steps, wall, cur = [], int(info.get("steps") or 0), float(info.get("wall_seconds") or 0), info
    while cur.get("init_stage"):
        cur = cur["init_stage"]
        try:
            line = _run_line(cur, recipe_from_dict(cur["recipe"]))
        except Exception:  # an older or foreign train_info: what it says
            line = f"{cur.get('steps')} steps, device {cur.get('device', 'unknown')}"
        lines.append(f"- Built on (warm start): `{(cur.get('recipe') or {}).get('name', '?')}`, {line}.")
        steps += int(cur.get("steps") or 0)
        wall += float(cur.get("wall_seconds") or 0)
    if lines:
        lines.append(f"- In all: {steps} steps, {wall / 60:.1f} min of training.")
    return "\n".join(lines) + ("\n" if lines else "")


def _data_line(info: dict) -> str:
    pm = info.get("pack_meta") or {}
    folders = ", ".join(f"train/{k} ({v} crops)" for k, v in (pm.get("crops_per_folder") or {}).items()) or "n/a"
    return (f"pack `{Path(str(info.get('pack', 'n/a'))).name}` -- {pm.get('n', '?')} crops of {pm.get('hr_size', '?')} "
            f"px from {folders} in `../shared/data/`. No eval/ image was used for training.")


def _device(device: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def export_sd_run(run_dir, *, model_id: Optional[str] = None, assets_dir=None, dtype: str = "fp16",
                  which: str = "ema", evaluate: bool = True, eval_limit: Optional[int] = None,
                  eval_sets=EVAL_SETS, eval_root: Path = EVAL_ROOT, notes: str = "", device: str = "auto") -> dict:
    """Write a mini-sd run as `<assets>/mini-sd/` (unet/ in `dtype`, vae/ fp32 with its scaling factor,
    scheduler/, empty_prompt_embeds.safetensors, MODEL_CARD.md, config.json, SHA256SUMS) or an
    osediff-mini run as `<assets>/osediff-mini/` (the same prior content + osediff.safetensors, the
    folder `OSEDiff("mini")` loads).  Figures: for the prior, the VAE round trip's PSNR on the whole BSD100
    HR images and the held-out LDM loss on their centre crops; for osediff-mini, `sr_core eval` on Set5/Set14/BSD100 through
    the method on the written folder."""
    from ..methods.osediff import EMPTY_EMBEDS_FILE, save_osediff_weights
    from ..weights import load_into, sha256_file
    from .export import recipe_from_dict

    run_dir = Path(run_dir)
    ck = torch.load(run_dir / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    recipe = recipe_from_dict(ck["recipe"])
    if not isinstance(recipe, (SDPriorRecipe, OSEDiffRecipe)):
        raise ValueError(f"{run_dir} is a {recipe.name} run; only mini-sd and osediff-mini runs are exported")
    sd = ck[which]
    cfg = config_from_state(sd)
    info = _info(run_dir, ck)
    # the warm start's own training, read before `dest` (possibly that very folder) is rewritten
    # (a re-export over this run's own earlier export reads this run there: the dedupe skips it too)
    init_info = _stage_info(getattr(recipe, "init_from", ""))
    if init_info:
        info = _dedupe_lineage({**info, "init_stage": init_info})
    model_id = model_id or recipe.export_id or recipe.name
    dest = (Path(assets_dir) if assets_dir else REPO_ROOT / "assets" / "weights") / model_id
    dest.mkdir(parents=True, exist_ok=True)
    dev = _device(device)
    eval_root = Path(eval_root)
    figures: dict[str, Any] = {}

    if isinstance(recipe, SDPriorRecipe):
        unet, vae = _build_unet(cfg["sd"]), _build_vae(cfg["sd"])
        load_into(unet, _sub(sd, "unet."))
        load_into(vae, _sub(sd, "vae."))
        sf, ctx = float(sd["scaling_factor"]), sd["context"]
        files = write_prior_folder(dest, cfg["sd"], unet, vae, ctx, sf, unet_dtype=dtype)
        if evaluate and (eval_root / "BSD100" / "HR").is_dir():
            hr = eval_root / "BSD100" / "HR"
            figures["vae_recon_bsd100"] = vae_recon_psnr(vae, hr, limit=eval_limit, device=dev)
            figures["ldm_loss_bsd100"] = ldm_heldout_loss(unet, vae, ctx, sf, cfg["sd"]["scheduler"], hr,
                                                          limit=eval_limit, device=dev)
        figures["train_loss_last100"] = _train_tail(run_dir)
        prior_info = {"unet_params": _params(unet), "vae_params": _params(vae), "scaling_factor": sf,
                      "vae_from": cfg.get("vae_from")}
        # the VAE's training: a mini-sd-vae run's own, or the one an exported mini-sd folder keeps
        vi = _stage_info(cfg.get("vae_from") or "")
        vae_info = vi if (vi.get("recipe") or {}).get("name") == "mini-sd-vae" else (vi.get("vae_stage") or {})
        if vae_info:
            info = {**info, "vae_stage": vae_info}
        lora = None
    else:
        from ..methods.osediff import attach_lora

        scfg = cfg["sd"]
        meta = cfg["lora"]
        real = _build_unet(scfg)
        load_into(real, _sub(sd, "real_unet."))
        gen_unet, gen_vae = _build_unet(scfg), _build_vae(scfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attach_lora(gen_unet, gen_vae, meta)
        load_into(gen_unet, _sub(sd, "gen_unet."))
        load_into(gen_vae, _sub(sd, "gen_vae."))
        base_vae = _build_vae(scfg)  # the prior's VAE = the generator's without its LoRA
        load_into(base_vae, {k.replace(".base_layer.", "."): v for k, v in _sub(sd, "gen_vae.").items()
                             if "lora_" not in k})
        sf, ctx = float(cfg["scaling_factor"]), sd["context"]
        shared = dest.parent / "mini-sd"  # the exported prior beside it: referenced, not copied, when identical
        if model_id != "mini-sd" and prior_matches(shared, real, base_vae, ctx, sf, unet_dtype=dtype):
            for sub in ("unet", "vae", "scheduler", "text_encoder", "tokenizer"):  # a previous full export
                shutil.rmtree(dest / sub, ignore_errors=True)
            (dest / EMPTY_EMBEDS_FILE).unlink(missing_ok=True)
            files, prior_folder = [], "../mini-sd"
        else:
            files, prior_folder = write_prior_folder(dest, scfg, real, base_vae, ctx, sf, unet_dtype=dtype), None
        save_osediff_weights(dest / "osediff.safetensors", gen_unet, gen_vae, meta)
        files.append("osediff.safetensors")
        # what the method reads to find its prior (completed with the figures below)
        (dest / "config.json").write_text(json.dumps({"prior_folder": prior_folder} if prior_folder else {}) + "\n")
        if evaluate:
            figures.update(_eval_osediff(dest, model_id, eval_sets, eval_root, eval_limit, dev))
        lora = {"unet_lora_conv_in": sum(v.numel() for k, v in _sub(sd, "gen_unet.").items()
                                         if "lora_" in k or "conv_in" in k),
                "vae_lora": sum(v.numel() for k, v in _sub(sd, "gen_vae.").items() if "lora_" in k),
                "rank": meta["rank_unet"], "targets_unet": sum(len(meta[k]) for k in (
                    "unet_lora_encoder_modules", "unet_lora_decoder_modules", "unet_lora_others_modules")),
                "targets_vae": len(meta["vae_lora_encoder_modules"])}
        prior_info = {"unet_params": _params(real), "vae_params": _params(base_vae), "scaling_factor": sf,
                      "prior_from": cfg.get("prior_from")}
        vae_info = {}
    if isinstance(recipe, SDPriorRecipe):
        prior_folder = None

    sums = {f: sha256_file(dest / f) for f in files}
    size_mb = sum((dest / f).stat().st_size for f in files) / 1e6
    meta_out = {"id": model_id, "recipe": recipe.to_dict(), "steps": info.get("steps"), "unet_dtype": dtype,
                "which": which, "figures": figures, "prior": prior_info, "lora": lora, "size_mb": round(size_mb, 2),
                **({"prior_folder": prior_folder} if prior_folder else {}),
                "sha256": sums, "exported": time.strftime("%Y-%m-%d %H:%M:%S")}
    (dest / "config.json").write_text(json.dumps(meta_out, indent=2) + "\n")
    (dest / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    (dest / "SHA256SUMS").write_text("".join(f"{h}  {f}\n" for f, h in sums.items()))
    (dest / "MODEL_CARD.md").write_text(_card(model_id, recipe, info, cfg, meta_out, vae_info, eval_limit, notes))
    return {"dir": str(dest), "size_mb": round(size_mb, 2), "figures": figures, "steps": info.get("steps")}


def _eval_osediff(folder: Path, model_id: str, sets, eval_root: Path, limit: Optional[int], device: str) -> dict:
    """`sr_core eval` figures of the written folder through OSEDiff("mini") and the facade."""
    from ..evaluate import evaluate_method
    from ..methods.osediff import OSEDiff
    from ..registry import Registry
    from ..types import Settings

    reg = Registry()
    reg.register(model_id, lambda: OSEDiff("mini", bundle_dir=folder, method_id=model_id))
    out = {}
    for name in sets:
        hr = eval_root / name / "HR"
        if hr.is_dir():
            res = evaluate_method(model_id, hr, 4, limit, Settings(seed=0, device=device), registry=reg)
            out[name] = {k: v for k, v in res.items() if k not in ("images", "settings")}
    return out


def _card(model_id: str, recipe: Recipe, info: dict, cfg: dict, meta: dict, vae_info: dict, eval_limit,
          notes: str) -> str:
    figs, prior = meta["figures"], meta["prior"]
    u, v = cfg["sd"]["unet"], cfg["sd"]["vae"]
    files = ", ".join(f"`{f}` sha256 `{h}`" for f, h in meta["sha256"].items())
    arch = (f"- **UNet** (`UNet2DConditionModel`, {prior['unet_params'] / 1e6:.2f} M parameters, stored "
            f"{meta['unet_dtype']}): SD-2.1-base layout at channels {u['block_out_channels']}, heads "
            f"{u['attention_head_dim']}, {u['layers_per_block']} layers per block, cross attention "
            f"{u['cross_attention_dim']}-dim on a fixed (1, {cfg['sd']['tokenizer']['model_max_length']}, "
            f"{u['cross_attention_dim']}) context (`empty_prompt_embeds.safetensors`).\n"
            f"- **VAE** (`AutoencoderKL`, {prior['vae_params'] / 1e6:.2f} M parameters, fp32): channels "
            f"{v['block_out_channels']}, {v['layers_per_block']} layers per block, f8, {v['latent_channels']} latent "
            f"channels, scaling factor {prior['scaling_factor']:.5f} (1 / std of the training latents).\n"
            f"- **Scheduler**: DDPM, scaled-linear betas {cfg['sd']['scheduler']['beta_start']} -> "
            f"{cfg['sd']['scheduler']['beta_end']}, T = {cfg['sd']['scheduler']['num_train_timesteps']}, epsilon "
            f"prediction.")
    limit_note = f", first {eval_limit} images" if eval_limit else ""
    prior_ref = (f"; the prior (unet/, vae/, scheduler/, context) is not copied: it is the exported folder "
                 f"`{meta['prior_folder']}` (checked identical at export; `config.json` names it)"
                 if meta.get("prior_folder") else "")
    if isinstance(recipe, SDPriorRecipe):
        r, l = figs.get("vae_recon_bsd100"), figs.get("ldm_loss_bsd100")
        vae_recipe = SD_RECIPES["mini-sd-vae"]
        if vae_info.get("recipe"):
            from .export import recipe_from_dict

            vae_recipe = recipe_from_dict(vae_info["recipe"])
        vae_line = (f"VAE stage `mini-sd-vae` ({_run_line(vae_info, vae_recipe)})"
                    if vae_info else f"VAE from `{prior.get('vae_from')}`")
        recon = (f"over {r['n']} centre crops of {r['crop']} px (no border)" if r.get("crop", 256) else
                 f"over {r['n']} whole images, the `sr_core eval` protocol (mod-crop 4, border 4)") if r else ""
        body = f"""## Figures (BSD100 HR{limit_note})
- VAE reconstruction (E -> posterior mean -> D): Y-PSNR {r['psnr_y']:.2f} dB, RGB PSNR {r['psnr_rgb']:.2f} dB
  {recon}:
  what an SR method decoding through this VAE scores with a perfect latent prediction (bicubic x4 on BSD100:
  25.96 dB Y-PSNR).
- Held-out LDM loss (epsilon MSE on centre crops of 256 px, seeded noise, t in {list(l['per_t'])}): {l['mean']:.4f}
  (per t: {', '.join(f'{t}: {x:.4f}' for t, x in l['per_t'].items())}).
- Training loss (mean of the last 100 logged rows): {figs.get('train_loss_last100')}.
""" if r and l else f"""## Figures
- Training loss (mean of the last 100 logged rows): {figs.get('train_loss_last100')}; no eval figures (BSD100 not
  found or --no-eval).
"""
        objective = (f"epsilon-prediction MSE at t ~ U{{0..999}} on scaled latents of HR crops (a posterior sample), "
                     f"frozen VAE; {vae_line}" + (f": L1 + {vae_recipe.lambda_lpips:g} x shift-tolerant LPIPS + "
                                                  f"{vae_recipe.kl_weight:g} x KL" if vae_info else
                                                  " (its training is not recorded there)"))
        method = "none on its own (a prior); `OSEDiff(\"mini\")` loads it as part of `osediff-mini`"
        lpips_used = bool(vae_info) and vae_recipe.lambda_lpips > 0
    else:
        rows = [f"| {model_id} (this folder) | " + " | ".join(
            (f"{figs[s]['psnr_y']:.2f} / {figs[s]['ssim_y']:.4f} / {figs[s]['lr_psnr']:.1f}" if s in figs else "n/a")
            for s in EVAL_SETS) + " |",
            "| bicubic (MATLAB, published) | " + " | ".join(f"{BICUBIC_X4[s]:.2f}" for s in EVAL_SETS) + " |"]
        gain = ", ".join(f"{s} {figs[s]['psnr_y'] - BICUBIC_X4[s]:+.2f} dB" for s in EVAL_SETS if s in figs) or "n/a"
        lo = meta["lora"]
        body = f"""## Benchmark (x4, `sr_core eval` protocol: Y-PSNR dB / SSIM-Y / LR-PSNR dB{limit_note})

| model | Set5 | Set14 | BSD100 |
|---|---|---|---|
{chr(10).join(rows)}

PSNR gain over bicubic: {gain}.
"""
        objective = (f"OSEDiff (`sr_core/training/recipes_sd.py`): {recipe.lambda_l2:g} MSE + {recipe.lambda_lpips:g} "
                     f"shift-tolerant LPIPS + {recipe.lambda_vsd:g} VSD (real score: the frozen prior; fake score: a "
                     f"LoRA-{recipe.lora_rank} copy trained with {recipe.lambda_vsd_lora:g} x its diffusion loss on the "
                     f"generator's latents; VSD t ~ U{{{recipe.vsd_t_min}..{recipe.vsd_t_max - 1}}}); LoRA rank "
                     f"{lo['rank']} on {lo['targets_vae']} VAE-encoder and {lo['targets_unet']} UNet modules + conv_in "
                     f"({(lo['unet_lora_conv_in'] + lo['vae_lora']) / 1e6:.2f} M trainable values); prior from "
                     f"`{prior.get('prior_from')}`; degradation {recipe.degradation.describe()}")
        method = "`OSEDiff(\"mini\")` (`sr_core/methods/osediff.py`), one UNet call at t = 999, empty-prompt context"
        lpips_used = recipe.lambda_lpips > 0
    lpips_line = ("\n  The perceptual term used the shift-tolerant LPIPS AlexNet weights of `stlpips-pytorch` (BSD-2-Clause)."
                  if lpips_used else "")
    return f"""# {model_id}

{recipe.description}

- **Method**: {method}.
{arch}
- **Files**: {files}; {meta['size_mb']:.2f} MB in all{prior_ref}.
- **Licence**: code MIT; weights trained by this project for research use (the training images are research-only).{lpips_line}

## Training
- Recipe `{recipe.name}` (`sr_core/training/recipes_sd.py`): {objective}.
- Optimiser Adam (betas {list(recipe.betas)}), lr {recipe.lr:g}, {recipe.warmup_text()}, cosine to
  {recipe.lr_min:g}, gradient clipping {recipe.grad_clip:g}, EMA {recipe.ema_decay:g} (exported: {meta['which']}).
- Run: {_run_line(info, recipe)}.
{_lineage_lines(info)}- Data: {_data_line(info)}

{body}
{('## Notes' + chr(10) + notes.strip() + chr(10) + chr(10)) if notes.strip() else ''}Reproduce: `scripts/train_sd_minis.sh` (or the stage commands in it). Exported {time.strftime('%Y-%m-%d')}.
"""
