"""Training recipes of the bundled ResShift / SinSR minis, in three stages, plus their export.

    vqf4-mini     stage 1: the small VQ-f4 autoencoder on HR crops of the pack
    resshift-mini stage 2: the mini UNet with ResShift's objective in the frozen vqf4-mini latent space
    sinsr-mini    stage 3: SinSR's one-step student distilled from the frozen resshift-mini

    python -m sr_core.training vqf4-mini     --out runs/vqf4-mini
    python -m sr_core.training resshift-mini --out runs/resshift-mini  --set ae_from=runs/vqf4-mini
    python -m sr_core.training sinsr-mini    --out runs/sinsr-mini     --set teacher_from=runs/resshift-mini
    python -m sr_core.training.resshift_cli export runs/resshift-mini   (bundle + model card)
    python -m sr_core.training.resshift_cli recon runs/vqf4-mini        (autoencoder PSNR on HR)
    python -m sr_core.training vqf4-mini --out runs/vqf4-dec --set train=decoder \
        --set init_from=assets/weights/resshift-mini                    (a better decoder, same latent space)
    python -m sr_core.training.resshift_cli redecode assets/weights/resshift-mini --decoder-from runs/vqf4-dec
    python -m sr_core.training vqf4-mini --out runs/dec-sinsr-mini --set train=decoder_sr \
        --set init_from=assets/weights/sinsr-mini                       (the decoder on the UNet's own latents)
    python -m sr_core.training.resshift_cli configs                     (mini configs, sizes)
    python -m sr_core.training.resshift_cli chain-pack RUN_OR_BUNDLE --pack P --out P2 [--crops N] [--seed S]
    python -m sr_core.training.resshift_cli bench --sizes 64,128        (both minis, one process)
    python -m sr_core.training.resshift_cli train RECIPE ...            (= python -m sr_core.training,
                                                                             these recipes registered)

The mini architecture (`MINI_MODEL_CONFIG`) was chosen by measurement (see `mini_bundle_config`):
the time of ResShift-15 is A + 15 U and of SinSR-1 is A + U (A = autoencoder encode + quantise +
decode, U = one UNet call), so a >= 10x speed-up needs A <= ~0.55 U.  The autoencoder is therefore
as light as the official Encoder/Decoder allow at full resolution (32 channels, ch_mult 1,1,2,
num_res_blocks 0,0,1 so one ResnetBlock at the top decoder level, no up/down-sampling convs, no
mid-block attention (`attn_type: none`, an official option; its full attention over the latent is
quadratic in the image area), 1024 codes instead of 8192 (the quantiser's nearest-code search is
N x K and was the largest single cost)), and the UNet carries the compute at the latent size: two
levels of 96 channels (10 and 2 ResBlocks), Swin width 96, window 8.

Objectives follow the official code (read, not copied):
- stage 1: L1 reconstruction (+ a small L1 on image gradients) of [-1, 1] images, the VQ-VAE
  codebook loss ||sg(z) - e||^2 plus beta ||z - sg(e)||^2 (beta 0.25), straight-through gradients,
  the codebook initialised from encoder outputs and dead codes restarted early in training (the
  LDM autoencoders were trained with a GAN/LPIPS loss; here PSNR matters, so plain L1).  With
  `train=decoder` only post_quant_conv + decoder of a trained autoencoder learn (same losses, no VQ
  terms): the latent space stays the UNet's, so the decoder can be improved after the UNet was
  trained (`redecode`), which a full autoencoder continuation cannot (it moves the latents).
  Measured 2026-11-30 (CPU, 55 min, 3592 steps, batch 16): the round trip rose (Set5 / Set14 / BSD100
  28.79 / 26.23 / 27.17 -> 29.23 / 26.38 / 27.26 dB) but the minis decoded through it did not on BSD100
  (resshift-mini 27.88 / 25.33 / 26.09 -> 28.10 / 25.42 / 26.04, sinsr-mini 27.77 / 25.26 / 26.00 ->
  27.81 / 25.33 / 25.95): a decoder fitted to clean codes is no better on the UNets' predicted ones,
  so the bundles kept their decoder.  Hence `train=decoder_sr` (`DecoderSRTrainer`): the decoder side
  learns from the codes the UNet of `sr_from` (default `init_from`) actually samples from the LR, with the
  sampler that model serves with, and the loss is the MSE to HR after the bundle's colour fix -- the
  decoder learns to decode what the method decodes, and spends itself on what the fix leaves to it.
- stage 2 (ResShift `GaussianDiffusion.training_losses`): z0 = E(HR), y = E(bicubic-up(LR)) with the
  pre-quantisation encoder and torch's bicubic x4, t ~ U{0..T-1}, x_t = q_sample(z0, y, t, eps), the
  UNet predicts z0 from (x_t / sqrt(kappa^2 eta_t + 1), t, lq = LR in [-1, 1]); loss MSE in latent
  space; T = 15, kappa 2, min_noise_level 0.04, p 0.3 (the v1 config SinSR distils).
- stage 3 (SinSR `training_losses_distill` with `learn_xT: True`, `finetune_use_gt: 1.0`): the student
  (initialised from the teacher) is called at index T-1 on x_T = y + kappa sqrt(eta_T) eps;
  (1) distillation MSE(f(x_T), F(x_T, y)) where F = `sample_sinsr_ddim` with the frozen teacher;
  (2) inverse MSE(f_inv(F(x_T, y)), x_T), f_inv = the student called at index 0 on the input scaled
  as at T-1; (3) consistency-preserving MSE(f(sg(f_inv(E(HR)))), E(HR)), the inverse pass without
  gradient; weights 1, 1, 1.  Official optimiser AdamW lr 5e-5, EMA 0.999.
- ours, off by default (`w_pixel` > 0, stages 2 and 3): + w_pixel x `pixel_mse`, the MSE between HR and the
  UNet's latent (stage 2: the x0 prediction; stage 3: the one-step output) as the bundle serves it --
  quantised straight-through, decoded by the frozen decoder, colour-fixed (`pixel_color_fix`).  The latent
  MSE weighs every latent direction alike; PSNR sees the decoded image, and after the colour fix only its
  high frequencies.  The cards say when a bundle was trained with it.

Everything trains through `sr_core.training.trainer.train` (accelerate, EMA, checkpoints); the
model handed to the trainer is a wrapper whose forward returns the loss terms, so multi-GPU DDP
sees one forward per step.  The code is ours.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..diffusion import resshift as rs
from ..types import COLOR_FIXES
from .degradations import DegradationMix
from .recipes import RECIPES, Recipe

__all__ = [
    "MINI_MODEL_CONFIG", "SMOKE_MODEL_SETS", "mini_bundle_config", "VQTrainer", "ResShiftTrainer", "SinSRTrainer",
    "VQF4Recipe", "ResShiftRecipe", "SinSRRecipe", "RESSHIFT_RECIPES", "register", "export_resshift_run",
    "load_autoencoder", "load_teacher", "sr_latent", "sinsr_losses", "teacher_map", "bench_pair",
    "bundle_config_for", "config_from_state", "recon_psnr", "evaluate_bundle",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
EVAL_ROOT = REPO_ROOT.parent / "shared" / "data" / "eval"
EVAL_SETS = ("Set5", "Set14", "BSD100")
MINI_COLOR_FIX = "wavelet"  # the minis' default colour fix (see `_color_fix_text`)
BICUBIC_X4 = {"Set5": 28.42, "Set14": 26.00, "BSD100": 25.96}

# Flat network config of the minis (recipe `model_config`; `--set model.KEY=VALUE` overrides).  Chosen
# by measurement with random weights (`bench_pair`: `sr_core.bench` through the methods, both minis in
# one process, interleaved, best of 3, 2 threads of this project's 2-core CPU): resshift-mini 2.83 s /
# 13.15 s and sinsr-mini 0.223 s / 1.201 s at LR 64 / 128, i.e. 12.7x / 10.9x; UNet 9.73 M +
# autoencoder 0.56 M parameters, bundle 22.5 MB (UNet fp16).  LR 128 is the hard case: the decoder's
# full-resolution level is memory-bound and grows faster than the UNet with the image size.
MINI_MODEL_CONFIG: dict[str, Any] = {
    # UNet (ResShiftUNet keyword arguments; the rest as in the release)
    "model_channels": 96, "channel_mult": [1, 1], "num_res_blocks": [10, 2], "swin_embed_dim": 96,
    "num_head_channels": 32, "window_size": 8,
    # construction size = the training latent (LR patch 32): Swin attention at both levels (32, 16), and
    # the stored shifted-window masks are those of 32x32 (other sizes get theirs computed at run time)
    "image_size": 32, "attention_resolutions": [32, 16],
    # autoencoder (VQModel ddconfig / n_embed)
    "ae_ch": 32, "ae_ch_mult": [1, 1, 2], "ae_num_res_blocks": [0, 0, 1], "n_embed": 1024,
    "ae_attn_type": "none", "ae_resamp_with_conv": False,
    # GroupNorm groups of the autoencoder (upstream: 32): at 32 channels 32 groups are an instance norm, which
    # discards each channel's mean/scale; an autoencoder trained so on 128-px crops reconstructed them at
    # 25.5 dB but 256-px crops at 23.1 dB (and 64-px at 21.4), i.e. it depended on the image size.  8 groups
    # (4-8 channels each) keep that information; the parameters are the same.
    "ae_norm_groups": 8,
    # diffusion (ResShift v1: T 15, kappa 2, min 0.04, p 0.3)
    "steps": 15, "kappa": 2.0, "min_noise_level": 0.04, "power": 0.3,
}
# Tiny networks for the CPU smoke runs (seconds): one UNet level, a 32-channel autoencoder.
SMOKE_MODEL_SETS = (
    "model.model_channels=32", "model.channel_mult=[1]", "model.num_res_blocks=[1]",
    "model.attention_resolutions=[]", "model.swin_embed_dim=32", "model.window_size=4", "model.image_size=16",
    "model.ae_ch=32", "model.ae_ch_mult=[1,1,1]", "model.ae_num_res_blocks=0", "model.n_embed=64",
)


def _resolve(path: str) -> Path:
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (REPO_ROOT / p).exists():
        p = REPO_ROOT / p
    return p


def mini_bundle_config(model_config: dict, kind: str = "resshift") -> dict:
    """The bundle config.json (a `CONFIGS`-shaped dict) of a mini from the flat `model_config`.

    kind "resshift": ResShift's UNet variant (3 input channels + LR); "sinsr": SinSR's (`in_channels`
    6, `direct_lq`), which has the same parameters and computes the same function for an LR of the
    latent's size.  `lr_pad_multiple` is the UNet's size multiple.
    """
    from ..methods.resshift import unet_size_multiple
    from ..nets.resshift_configs import mini_config

    mc = dict(MINI_MODEL_CONFIG)
    mc.update(model_config or {})
    base = {"resshift": "resshift_realsrx4_s15_v1", "sinsr": "SinSR_v1"}[kind]
    extra = {k: (list(mc[k]) if k == "attention_resolutions" else mc[k])
             for k in ("attention_resolutions", "mlp_ratio", "image_size") if k in mc}
    cfg = mini_config(base, model_channels=int(mc["model_channels"]), channel_mult=list(mc["channel_mult"]),
                      num_res_blocks=list(mc["num_res_blocks"]), swin_embed_dim=int(mc["swin_embed_dim"]),
                      num_head_channels=int(mc["num_head_channels"]), window_size=int(mc["window_size"]),
                      ae_ch=int(mc["ae_ch"]), ae_ch_mult=list(mc["ae_ch_mult"]),
                      ae_num_res_blocks=mc["ae_num_res_blocks"], n_embed=int(mc["n_embed"]), **extra)
    if "image_size" in mc and not cfg["unet"].get("direct_lq"):
        cfg["unet"]["lq_size"] = int(mc["image_size"])  # LR at the latent's size: no feature extractor
    dd = cfg["autoencoder"]["ddconfig"]
    dd["attn_type"] = str(mc["ae_attn_type"])
    dd["resamp_with_conv"] = bool(mc["ae_resamp_with_conv"])
    if int(mc.get("ae_norm_groups", 32)) != 32:
        dd["norm_groups"] = int(mc["ae_norm_groups"])
    d = cfg["diffusion"]
    d["steps"], d["kappa"] = int(mc["steps"]), float(mc["kappa"])
    d["min_noise_level"], d["power"] = float(mc["min_noise_level"]), float(mc["power"])
    cfg["lr_pad_multiple"] = unet_size_multiple(cfg["unet"])
    mid = f"{kind}-mini"
    cfg.update({"name": mid, "notes": f"project mini ({mid}): ResShift/SinSR architecture at a small width, "
                                      "trained by sr_core.training.recipes_resshift"})
    return cfg


def _schedule(cfg: dict) -> rs.ResShiftSchedule:
    d = cfg["diffusion"]
    return rs.make_schedule(int(d["steps"]), float(d["kappa"]), float(d["min_noise_level"]), float(d.get("power", 0.3)),
                            float(d.get("etas_end", 0.99)), normalize_input=bool(d.get("normalize_input", True)))


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ------------------------------------------------------------------------------------------------
# the config travels inside the checkpoint


class _HasConfig(nn.Module):
    """A module whose bundle config is also a uint8 buffer (`bundle_config`, JSON), so a run's
    checkpoint (model, EMA) fully describes the networks for the next stage and for export."""

    def _set_config(self, cfg: dict) -> None:
        self.config = cfg
        data = json.dumps(cfg, sort_keys=True).encode()
        self.register_buffer("bundle_config", torch.tensor(list(data), dtype=torch.uint8))

    @property
    def sf(self) -> int:
        """The scale factor of the config's diffusion (x4)."""
        return int(self.config["diffusion"].get("sf", 4))


def config_from_state(sd: dict) -> dict:
    return json.loads(bytes(sd["bundle_config"].to(torch.uint8).tolist()).decode())


# ------------------------------------------------------------------------------------------------
# stage 1: the autoencoder


class VQTrainer(_HasConfig):
    """Wraps a `VQModel` for training; forward(hr in [0, 1]) -> loss terms.

    The quantiser runs here in float32 (outside autocast: bf16 distances would pick wrong codes)
    with the standard VQ-VAE loss (codebook + beta * commitment); `VQModel.quantize`'s own loss
    keeps upstream's legacy beta placement and is not used.  Codes: initialised from the first
    batch's encoder outputs; codes unused for `restart_every` steps are re-seeded from random
    encoder outputs of the current batch until step `restart_until`.
    """

    def __init__(self, ae: nn.Module, config: dict, beta: float = 0.25, edge_weight: float = 0.1,
                 restart_every: int = 50, restart_until: int = 2000):
        super().__init__()
        self.ae = ae
        self._set_config(config)
        self.beta, self.edge_weight = float(beta), float(edge_weight)
        self.restart_every, self.restart_until = int(restart_every), int(restart_until)
        self.register_buffer("code_hits", torch.zeros(ae.quantize.n_e))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))
        self._step: Optional[int] = None  # steps_seen on the host: read once, not synchronised every step

    @torch.compiler.disable  # host-side bookkeeping (a step counter, data-dependent restarts): eager under --compile
    @torch.no_grad()
    def _maintain_codebook(self, flat: torch.Tensor, idx: torch.Tensor) -> bool:
        """Init / dead-code restart; True when the codebook changed."""
        emb = self.ae.quantize.embedding.weight
        if self._step is None:
            self._step = int(self.steps_seen)
        step = self._step
        self._step += 1
        self.steps_seen += 1
        if step == 0:  # data-dependent init: random encoder outputs (+ a little noise)
            pick = torch.randint(0, flat.shape[0], (emb.shape[0],), device=flat.device)
            emb.copy_(flat[pick] + 0.01 * flat.std() * torch.randn_like(emb))
            _broadcast(emb)
            self.code_hits.zero_()
            return True
        self.code_hits += torch.bincount(idx, minlength=emb.shape[0]).to(self.code_hits.dtype)
        if not (self.restart_every and step % self.restart_every == 0 and step <= self.restart_until):
            return False
        dead = self.code_hits == 0
        n = int(dead.sum())
        self.code_hits.zero_()
        if n:
            pick = torch.randint(0, flat.shape[0], (n,), device=flat.device)
            emb[dead] = flat[pick] + 0.01 * flat.std() * torch.randn(n, emb.shape[1], device=flat.device)
        _broadcast(emb)  # on every rank at every restart step (collective), whatever its own `n`
        return True

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through z_q, codebook loss, commitment loss) in float32."""
        q = self.ae.quantize
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            b, c, h, w = z.shape
            idx = q.indices(z.detach())
            if self.training and self._maintain_codebook(z.detach().permute(0, 2, 3, 1).reshape(-1, c), idx):
                idx = q.indices(z.detach())
            zq = q.embedding(idx).view(b, h, w, c).permute(0, 3, 1, 2)
            codebook = F.mse_loss(zq, z.detach())
            commit = F.mse_loss(z, zq.detach())
            return z + (zq - z).detach(), codebook, commit

    def forward(self, hr: torch.Tensor) -> dict:
        x = hr * 2 - 1
        if self.decoder_only:  # the latent space is fixed: frozen encoder and codebook, no VQ losses
            with torch.no_grad():
                zq = _nearest_codes(self.ae, self.ae.encode(x))
            rec = self.ae.decoder(self.ae.post_quant_conv(zq)).float()
            l1 = F.l1_loss(rec, x)
            return self._recon_terms(rec, x, l1, {"l1": l1})
        z = self.ae.encode(x)
        zq, codebook, commit = self.quantize(z)
        rec = self.ae.decoder(self.ae.post_quant_conv(zq.to(z.dtype))).float()
        l1 = F.l1_loss(rec, x)
        terms = {"l1": l1, "codebook": codebook, "commit": commit}
        return self._recon_terms(rec, x, l1 + codebook + self.beta * commit, terms)

    def _recon_terms(self, rec: torch.Tensor, x: torch.Tensor, loss: torch.Tensor, terms: dict) -> dict:
        if self.edge_weight:
            edge = F.l1_loss(rec.diff(dim=-1), x.diff(dim=-1)) + F.l1_loss(rec.diff(dim=-2), x.diff(dim=-2))
            terms["edge"] = edge
            loss = loss + self.edge_weight * edge
        terms["loss"] = loss
        return terms

    @property
    def decoder_only(self) -> bool:
        """True when only the decoder side (post_quant_conv + decoder) trains."""
        return not any(p.requires_grad for p in self.ae.encoder.parameters())


def _broadcast(t: torch.Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.broadcast(t, 0)


def _bicubic_up(y: torch.Tensor, sf: int) -> torch.Tensor:
    return F.interpolate(y, scale_factor=sf, mode="bicubic")  # torch's bicubic, as the official code


# ------------------------------------------------------------------------------------------------
# loading stage outputs


def _load_source(path: str) -> tuple[dict, dict, Optional[Path]]:
    """(EMA state dict of a run | UNet state dict of a bundle, bundle config, bundle folder or None)."""
    p = _resolve(path)
    ck_path = p / "ckpt" / "last.pt" if p.is_dir() else p
    if ck_path.is_file() and ck_path.suffix == ".pt":
        ck = torch.load(ck_path, map_location="cpu", weights_only=True)
        return ck["ema"], config_from_state(ck["ema"]), None
    if (p / "config.json").exists():
        from ..weights import load_state_dict

        return load_state_dict(p / "model.safetensors"), json.loads((p / "config.json").read_text()), p
    raise FileNotFoundError(f"{path}: neither a run folder (ckpt/last.pt) nor a bundle folder (config.json)")


def _sub(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def _differing(a: dict, b: dict, prefixes: tuple[str, ...] = ()) -> list[str]:
    """The keys of state dict `a` (those starting with one of `prefixes`, when given) whose tensors are not
    bit for bit those of `b` (compared in float32 on the CPU; a key `b` lacks counts)."""
    return [k for k in a if (not prefixes or k.startswith(prefixes))
            and (k not in b or not torch.equal(a[k].float().cpu(), b[k].float().cpu()))]


def _nearest_codes(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The codebook entries nearest to latent `z` (b, c, h, w), looked up in float32 whatever the autocast."""
    q = ae.quantize
    b, c, h, w = z.shape
    with torch.autocast(z.device.type, enabled=False):
        return q.embedding(q.indices(z.float())).float().view(b, h, w, c).permute(0, 3, 1, 2)


def _sample_latent(unet: nn.Module, ae: nn.Module, config: dict, lq: torch.Tensor, sampler: str,
                   generator: torch.Generator, schedule: Optional[rs.ResShiftSchedule] = None,
                   callback=None) -> torch.Tensor:
    """The method's latent x0 for an LR in [-1, 1] (sides a multiple of the UNet's): torch bicubic x4, encode,
    `sampler` with `unet` (`schedule`: config's, built if not given; `callback`: the sampler's, per step) --
    unquantised, as the sampler returns it."""
    z_y = ae.encode(_bicubic_up(lq, int(config["diffusion"].get("sf", 4)))).float()
    return rs.SAMPLERS[sampler](lambda x, t: unet(x, t, lq=lq).float(), z_y, schedule or _schedule(config),
                               generator=generator, callback=callback)


def load_autoencoder(ae_from: str, model_config: Optional[dict] = None) -> tuple[nn.Module, dict]:
    """(frozen VQ-f4 autoencoder, bundle config whose 'autoencoder' describes it) from a vqf4-mini or
    resshift-mini run (EMA weights) or a mini bundle; `ae_from=''` builds a seeded random one from
    `model_config` (smoke runs only)."""
    from ..nets.vqgan import VQModel
    from ..weights import load_into, load_state_dict

    cfg = mini_bundle_config(model_config or {})
    if not ae_from:
        torch.manual_seed(1234)
        return VQModel(**cfg["autoencoder"]).requires_grad_(False).eval(), cfg
    sd, src_cfg, folder = _load_source(ae_from)
    cfg["autoencoder"] = copy.deepcopy(src_cfg["autoencoder"])
    ae = VQModel(**cfg["autoencoder"])
    load_into(ae, load_state_dict(folder / "autoencoder.safetensors") if folder else _sub(sd, "ae."))
    return ae.requires_grad_(False).eval(), cfg


def load_teacher(teacher_from: str, model_config: Optional[dict] = None) -> tuple[nn.Module, nn.Module, dict]:
    """(teacher UNet, autoencoder, its ResShift bundle config) from a resshift-mini run or bundle;
    `teacher_from=''` gives seeded random networks from `model_config` (smoke runs only)."""
    from ..nets.resshift_unet import ResShiftUNet
    from ..nets.vqgan import VQModel
    from ..weights import load_into, load_state_dict

    if not teacher_from:
        ae, cfg = load_autoencoder("", model_config)
        torch.manual_seed(4321)
        return ResShiftUNet(**cfg["unet"]).requires_grad_(False).eval(), ae, cfg
    sd, cfg, folder = _load_source(teacher_from)
    unet = ResShiftUNet(**cfg["unet"])
    load_into(unet, sd if folder else _sub(sd, "unet."))
    ae = VQModel(**cfg["autoencoder"])
    load_into(ae, load_state_dict(folder / "autoencoder.safetensors") if folder else _sub(sd, "ae."))
    return unet.requires_grad_(False).eval(), ae.requires_grad_(False).eval(), cfg


# ------------------------------------------------------------------------------------------------
# stage 2: ResShift


class _LatentSR(_HasConfig):
    """Shared by stages 2 and 3: the frozen autoencoder `ae`, the config, the schedule."""

    def _frozen_eval(self, *nets: nn.Module) -> None:
        for n in nets:
            n.requires_grad_(False).eval()

    def encode_pair(self, hr: Optional[torch.Tensor], lr: torch.Tensor):
        """(z0 = E(HR) or None, y = E(up(LR)), lq = LR) with images in [-1, 1]; no gradient."""
        lq = lr * 2 - 1
        with torch.no_grad():
            y = self.ae.encode(_bicubic_up(lq, self.sf)).float()
            z0 = self.ae.encode(hr * 2 - 1).float() if hr is not None else None
        return z0, y, lq

    def _set_pixel(self, w_pixel: float, color_fix: str) -> None:
        self.w_pixel, self.color_fix = float(w_pixel), _checked_color_fix(color_fix)

    def pixel(self, z: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        """`pixel_mse` of the UNet's latent `z` for the batch (hr, lr in [0, 1]), with this trainer's colour fix."""
        return pixel_mse(self.ae, z, hr, lr, self.sf, self.color_fix)


PIXEL_ON = ("x0", "last_step")
CHAIN_EXTRA = "resshift_x_last"  # the pack extra `chain_pack` writes: (N, h, w, C) latents on the LR grid


def _checked_color_fix(color_fix: str, name: str = "pixel_color_fix") -> str:
    if color_fix not in COLOR_FIXES:
        raise ValueError(f"{name} must be one of {', '.join(COLOR_FIXES)}, not {color_fix!r}")
    return color_fix


def _st_codes(ae: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The nearest codes of `z` in the forward pass (what `ae.decode` decodes), the identity in the backward
    pass (straight-through), so that a loss on the decoded image reaches the UNet that predicted `z`."""
    return z + (_nearest_codes(ae, z) - z).detach()


def served_output(ae: nn.Module, codes: torch.Tensor, lr: torch.Tensor, sf: int, color_fix: str,
                  ref: Optional[torch.Tensor] = None) -> torch.Tensor:
    """SR in [0, 1] as `run_method` serves it from quantised latent `codes`: post_quant_conv + decoder,
    clamped, colour-fixed against `ref` (the LR in [0, 1] upsampled by MATLAB bicubic; computed when not
    given).  Differentiable in the decoder and in `codes`."""
    from .. import imaging
    from ..api import apply_color_fix

    rec = ae.decoder(ae.post_quant_conv(codes)).float()
    if ref is None:
        with torch.no_grad():
            ref = imaging.imresize(lr.float(), float(sf)).clamp(0, 1)
    return apply_color_fix((rec.clamp(-1, 1) + 1) / 2, lr, sf, color_fix, ref=ref)


def pixel_mse(ae: nn.Module, z: torch.Tensor, hr: torch.Tensor, lr: torch.Tensor, sf: int,
              color_fix: str) -> torch.Tensor:
    """MSE between HR and what the method serves from the UNet's latent `z` (quantised straight-through,
    decoded by the frozen decoder, colour-fixed as the bundle serves): the term `w_pixel` adds to stage 2's
    and stage 3's latent losses, so the UNet learns what PSNR measures -- the latent MSE weighs every latent
    direction alike, while the decoder ignores some and the colour fix replaces the low frequencies."""
    return F.mse_loss(served_output(ae, _st_codes(ae, z), lr, sf, color_fix), hr.float())


class ResShiftTrainer(_LatentSR):
    """forward(hr, lr in [0, 1][, x_last]) -> {'loss', 'mse'[, 'pixel']}: `w_latent` x ResShift's x0-prediction
    MSE at a random t, plus `w_pixel` x `pixel_mse` when `w_pixel` > 0 -- of the same x0 prediction
    (`pixel_on="x0"`), or of the UNet's output at the last sampler step (t = 0) from `x_last`, the states the
    stochastic sampler reaches there (`pixel_on="last_step"`; a pack made by `resshift_cli chain-pack`
    caches them as its extra `CHAIN_EXTRA`): what the method serves."""

    def __init__(self, unet: nn.Module, ae: nn.Module, config: dict, w_pixel: float = 0.0,
                 color_fix: str = "wavelet", pixel_on: str = "x0", w_latent: float = 1.0):
        super().__init__()
        if pixel_on not in PIXEL_ON:
            raise ValueError(f"pixel_on must be one of {', '.join(PIXEL_ON)}, not {pixel_on!r}")
        if not float(w_latent) and not float(w_pixel):
            raise ValueError("resshift-mini: w_latent and w_pixel are both 0 -- nothing to train on")
        self.unet, self.ae = unet, ae
        self._frozen_eval(ae)
        self._set_config(config)
        self.schedule = _schedule(config)
        self._set_pixel(w_pixel, color_fix)
        self.pixel_on, self.w_latent = pixel_on, float(w_latent)

    def train(self, mode: bool = True):
        super().train(mode)
        self.ae.eval()
        return self

    def last_step(self, x_last: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
        """The UNet's x0 prediction at t = 0 from chain state `x_last` -- the sampler's output (its last
        posterior mean is that prediction)."""
        t = torch.zeros(x_last.shape[0], dtype=torch.long, device=x_last.device)
        return self.unet(rs.scale_input(x_last.float(), self.schedule, t), t, lq=lq).float()

    def forward(self, hr: torch.Tensor, lr: torch.Tensor, x_last: Optional[torch.Tensor] = None) -> dict:
        out, loss = {}, 0.0
        last = self.w_pixel and self.pixel_on == "last_step"
        if last and x_last is None:
            raise ValueError(f"pixel_on=last_step needs the sampler's states at its last step: train on a pack "
                             f"made by `python -m sr_core.training.resshift_cli chain-pack` (extra {CHAIN_EXTRA!r})")
        pred = None
        if self.w_latent or not last:
            z0, y, lq = self.encode_pair(hr, lr)
            t = torch.randint(0, self.schedule.T, (z0.shape[0],), device=z0.device)
            x_t = rs.q_sample(z0, y, self.schedule, t, torch.randn_like(z0))
            pred = self.unet(rs.scale_input(x_t, self.schedule, t), t, lq=lq).float()
            out["mse"] = F.mse_loss(pred, z0)
            loss = self.w_latent * out["mse"]
        if self.w_pixel:
            z = self.last_step(x_last, lr * 2 - 1) if last else pred
            out["pixel"] = self.pixel(z, hr, lr)
            loss = loss + self.w_pixel * out["pixel"]
        out["loss"] = loss
        return out


# ------------------------------------------------------------------------------------------------
# stage 3: SinSR


def teacher_map(teacher: nn.Module, y: torch.Tensor, lq: torch.Tensor, schedule: rs.ResShiftSchedule,
                noise: torch.Tensor) -> torch.Tensor:
    """F(x_T, y): SinSR's deterministic sampler with the frozen teacher (T calls, no gradient)."""
    with torch.no_grad():
        return rs.sample_sinsr_ddim(lambda x, t: teacher(x, t, lq=lq).float(), y, schedule, noise=noise)


def sinsr_losses(student: nn.Module, teacher: nn.Module, z_gt: torch.Tensor, y: torch.Tensor, lq: torch.Tensor,
                 schedule: rs.ResShiftSchedule, noise: torch.Tensor, weights=(1.0, 1.0, 1.0),
                 pixel=None, w_pixel: float = 0.0) -> dict:
    """SinSR's three losses (official `training_losses_distill` with learn_xT, finetune_use_gt), and with
    `w_pixel` > 0 a fourth, ours: `pixel(f(x_T))` (`pixel_mse` of the one-step output the method serves):

    x_T = y + kappa sqrt(eta_T) eps; the student's forward pass f(x) = student(x / s_T, T-1), its
    inverse pass g(x) = student(x / s_T, 0) (index 0, input scaled as at T-1, as upstream);
    distill = MSE(f(x_T), F(x_T, y)); inverse = MSE(g(F(x_T, y)), x_T);
    gt = MSE(f(sg(g(z_gt))), z_gt) with g under no_grad.  loss = w1 distill + w2 inverse + w3 gt
    (+ w_pixel pixel); a term of weight 0 is neither computed nor returned (the teacher map is T calls).
    """
    n = y.shape[0]
    t_last = torch.full((n,), schedule.T - 1, dtype=torch.long, device=y.device)
    t_zero = torch.zeros_like(t_last)

    def fwd(x):
        return student(rs.scale_input(x, schedule, t_last), t_last, lq=lq).float()

    def inv(x):
        return student(rs.scale_input(x, schedule, t_last), t_zero, lq=lq).float()

    w1, w2, w3 = weights
    x_T = rs.prior_sample(y, schedule, noise)
    z_student = fwd(x_T)
    out = {}
    if w1 or w2:  # a term whose weight is 0 is not computed (the teacher map is T calls)
        z_teacher = teacher_map(teacher, y, lq, schedule, noise)
        if w1:
            out["distill"] = F.mse_loss(z_student, z_teacher)
        if w2:
            out["inverse"] = F.mse_loss(inv(z_teacher), x_T)
    if w3:
        with torch.no_grad():
            xT_gt = inv(z_gt)
        out["gt"] = F.mse_loss(fwd(xT_gt), z_gt)
    if w_pixel:
        out["pixel"] = pixel(z_student)
    w = {"distill": w1, "inverse": w2, "gt": w3, "pixel": float(w_pixel)}
    if not out:
        raise ValueError("sinsr-mini: every loss weight is 0")
    return {"loss": sum(w[k] * v for k, v in out.items()), **out}


class SinSRTrainer(_LatentSR):
    """forward(hr, lr in [0, 1]) -> SinSR's loss terms; `unet` (the student) trains, `teacher` and
    `ae` are frozen.  `config` is the teacher's (ResShift-variant) bundle config."""

    def __init__(self, student: nn.Module, teacher: nn.Module, ae: nn.Module, config: dict, weights=(1.0, 1.0, 1.0),
                 w_pixel: float = 0.0, color_fix: str = "wavelet"):
        super().__init__()
        self.unet, self.teacher, self.ae = student, teacher, ae
        self._frozen_eval(teacher, ae)
        self._set_config(config)
        self.weights = tuple(float(w) for w in weights)
        self.schedule = _schedule(config)
        self._set_pixel(w_pixel, color_fix)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        self.ae.eval()
        return self

    def forward(self, hr: torch.Tensor, lr: torch.Tensor) -> dict:
        z_gt, y, lq = self.encode_pair(hr, lr)
        return sinsr_losses(self.unet, self.teacher, z_gt, y, lq, self.schedule, torch.randn_like(y), self.weights,
                            pixel=lambda z: self.pixel(z, hr, lr), w_pixel=self.w_pixel)


# ------------------------------------------------------------------------------------------------
# decoder adaptation: the decoder learns the latents the UNet actually produces


SR_SAMPLERS = tuple(rs.SAMPLERS)


def sr_sampler_of(path: str) -> str:
    """The sampler a resshift-mini / sinsr-mini run or bundle serves with: `one_step` for a SinSR student
    (a bundle whose UNet is SinSR's `direct_lq` variant, or a sinsr-mini run), else `stochastic`."""
    sd, cfg, folder = _load_source(path)
    student = bool(cfg["unet"].get("direct_lq")) if folder else any(k.startswith("teacher.") for k in sd)
    return "one_step" if student else "stochastic"


class DecoderSRTrainer(_HasConfig):
    """forward(hr, lr in [0, 1]) -> {'loss', 'mse'}: the decoder side of `ae` (post_quant_conv + decoder)
    trained on the latents the frozen `unet` samples from the LR -- not on E(HR) -- so that it decodes what
    the method serves: LR -> torch bicubic x4 -> E -> `sampler` with `unet` -> quantise -> D.  The loss is
    the MSE to HR after the colour fix the bundle applies (`color_fix` against the LR upsampled by MATLAB
    bicubic, as `run_method`), so the decoder spends itself on what the fix leaves to the model.  Encoder,
    quant_conv and codebook stay frozen: the latent space, and with it the UNet, is unchanged."""

    def __init__(self, ae: nn.Module, unet: nn.Module, config: dict, sampler: str, color_fix: str):
        super().__init__()
        if sampler not in SR_SAMPLERS:
            raise ValueError(f"sr_sampler must be one of {', '.join(SR_SAMPLERS)} (or auto), not {sampler!r}")
        _checked_color_fix(color_fix, "sr_color_fix")
        self.ae, self.unet = ae, unet
        self.ae.requires_grad_(False)
        self.ae.post_quant_conv.requires_grad_(True)
        self.ae.decoder.requires_grad_(True)
        self.unet.requires_grad_(False).eval()
        self._set_config(config)
        self.sampler, self.color_fix = sampler, color_fix
        self.schedule = _schedule(config)

    def train(self, mode: bool = True):
        super().train(mode)
        self.unet.eval()
        self.ae.encoder.eval()
        return self

    @torch.no_grad()
    def sr_codes(self, lr: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The quantised latent the method decodes for an LR batch in [0, 1] (sides a multiple of the UNet's);
        the sampler's noise from `generator` (CPU; default: one seeded from torch's global RNG)."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
        z = _sample_latent(self.unet, self.ae, self.config, lr.float() * 2 - 1, self.sampler, generator,
                           self.schedule)
        return _nearest_codes(self.ae, z)

    def sr_output(self, lr: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """SR in [0, 1] as `run_method` serves it (decoded, clamped, colour-fixed), differentiable in the decoder."""
        return served_output(self.ae, self.sr_codes(lr, generator), lr, self.sf, self.color_fix)

    def forward(self, hr: torch.Tensor, lr: torch.Tensor, generator: Optional[torch.Generator] = None) -> dict:
        mse = F.mse_loss(self.sr_output(lr, generator), hr.float())
        return {"loss": mse, "mse": mse}


@torch.no_grad()
def chain_pack(source: str, pack, out, *, crops: int = 400, seed: int = 0, batch: int = 4,
               device: str = "cpu") -> dict:
    """Run the stochastic sampler of the resshift-mini UNet of `source` (a run or bundle; fp32, as served
    on the CPU) on the LR of `crops` crops of `pack` spread evenly over it, and write a derived pack
    (`data.derive_pack`) whose extra `CHAIN_EXTRA` is, per crop, the state x entering the sampler's last
    step (t = 0): what `pixel_on=last_step` trains the last step on.  The noise of the batch starting at
    row i (of the chosen rows) comes from a generator seeded with seed * 1_000_003 + i."""
    from ..methods.resshift import unet_size_multiple
    from ..weights import sha256_file
    from .data import derive_pack, load_pack

    unet, ae, cfg = load_teacher(source)
    dev = torch.device(device)
    unet, ae = unet.float().to(dev), ae.float().to(dev)
    src = load_pack(pack)
    if src.lr is None:
        raise ValueError(f"{pack} stores no LR crops")
    n, h = len(src.hr), src.lr.shape[1]
    mult = unet_size_multiple(cfg["unet"])
    if h % mult or src.lr.shape[2] % mult:
        raise ValueError(f"the pack's LR crops ({h} px) are not a multiple of the UNet's {mult} px")
    rows = sorted({int(r) for r in np.linspace(0, n - 1, min(int(crops), n)).round()})
    sched, states, t0 = _schedule(cfg), [], time.time()
    for i in range(0, len(rows), batch):
        lq = torch.from_numpy(src.lr[rows[i:i + batch]]).permute(0, 3, 1, 2).float().div(255).to(dev) * 2 - 1
        seen = {}
        _sample_latent(unet, ae, cfg, lq, "stochastic", torch.Generator().manual_seed(seed * 1_000_003 + i), sched,
                       callback=lambda d: seen.update(x=d["x_t"]) if d["t"] == 0 else None)
        states.append(seen["x"].permute(0, 2, 3, 1).cpu().numpy())
        print(f"chain-pack: {min(i + batch, len(rows))}/{len(rows)} crops, {time.time() - t0:.0f} s", flush=True)
    folder = _resolve(source)
    weights = folder / "model.safetensors" if (folder / "model.safetensors").is_file() else folder / "ckpt" / "last.pt"
    note = {"what": (f"the state entering the last step (t = 0) of the stochastic sampler of `{source}` "
                     f"(sha256 {sha256_file(weights)[:12]} of {weights.name}) from its LR, seed {seed}"),
            "extra": CHAIN_EXTRA, "source": str(source), "from_pack": Path(pack).name, "rows": len(rows),
            "seed": int(seed), "seconds": round(time.time() - t0, 1),
            "command": f"resshift_cli chain-pack {source} --pack {Path(pack).name} --crops {crops} --seed {seed}"}
    path = derive_pack(src, out, rows, {CHAIN_EXTRA: np.concatenate(states)}, note)
    return {"pack": str(path), **note}


# ------------------------------------------------------------------------------------------------
# inference (validation in the trainer; the served path is sr_core.methods.resshift)


@torch.no_grad()
def sr_latent(unet: nn.Module, ae: nn.Module, config: dict, lr: torch.Tensor, sampler: str = "stochastic",
              seed: int = 0) -> torch.Tensor:
    """SR (1, 3, 4h, 4w) in [0, 1] of an LR in [0, 1] with the method's pipeline: reflect-pad to the
    UNet's multiple, [-1, 1], torch bicubic x4, encode, sample, decode (quantised), crop."""
    from .. import tiling
    from ..methods.resshift import unet_size_multiple

    sf = int(config["diffusion"].get("sf", 4))
    y0, (h, w) = tiling.pad_to_multiple(lr.float() * 2 - 1, unet_size_multiple(config["unet"]))
    z0 = _sample_latent(unet, ae, config, y0, sampler, torch.Generator().manual_seed(seed))
    out = ae.decode(z0).float().clamp(-1, 1)
    return tiling.crop_to((out + 1) / 2, h * sf, w * sf)


# ------------------------------------------------------------------------------------------------
# recipes


@dataclass(frozen=True)
class VQF4Recipe(Recipe):
    """Stage 1: the small VQ-f4 autoencoder on HR crops (the LR of the batch is not used).
    Uses the `ae_*` / `n_embed` keys of `model_config`."""

    vq_beta: float = 0.25
    edge_weight: float = 0.1
    restart_every: int = 50
    restart_until: int = 2000
    init_from: str = ""  # warm start: the autoencoder of a vqf4-mini / resshift-mini run or bundle ('' = none)
    # what trains: "all", or "decoder" -- post_quant_conv + decoder of the `init_from` autoencoder, with its
    # encoder, quant_conv and codebook frozen: the latent space stays bit for bit the one the UNets of the
    # bundles were trained in, so the new decoder drops into them (`resshift_cli redecode`); or "decoder_sr" --
    # the same, but the decoder learns from the latents the UNet of `sr_from` samples from the LR (what the method
    # decodes), with the MSE to HR after `sr_color_fix` as the loss (DecoderSRTrainer)
    train: str = "all"
    sr_from: str = ""  # train=decoder_sr: the resshift-mini / sinsr-mini run or bundle whose UNet samples ('' = init_from)
    sr_sampler: str = "auto"  # train=decoder_sr: stochastic | deterministic | one_step; auto: as that model serves
    sr_color_fix: str = "wavelet"  # train=decoder_sr: the colour fix the loss sees (the minis' default)

    def build_model(self) -> nn.Module:
        from ..nets.vqgan import VQModel
        from ..weights import load_into

        if self.train not in ("all", "decoder", "decoder_sr"):
            raise ValueError(f"vqf4-mini: train must be 'all', 'decoder' or 'decoder_sr', not {self.train!r}")
        if self.train != "all" and not self.init_from:
            raise ValueError(f"vqf4-mini: train={self.train} fine-tunes the decoder of a trained autoencoder; "
                             "set init_from= (a resshift-mini / sinsr-mini bundle or a vqf4-mini run)")
        if self.train == "decoder_sr":
            return self._decoder_sr_model()
        cfg = mini_bundle_config(self.model_config)
        decoder_only = self.train == "decoder"
        trainer = VQTrainer(VQModel(**cfg["autoencoder"]), cfg, self.vq_beta, self.edge_weight,
                            0 if decoder_only else self.restart_every, self.restart_until)
        if self.init_from:
            ae, _ = load_autoencoder(self.init_from, self.model_config)
            load_into(trainer.ae, ae.state_dict())  # strict: the same autoencoder config
            trainer.ae.requires_grad_(True).train()
            trainer.steps_seen.fill_(1)  # a trained codebook: no data-dependent re-initialisation
        if decoder_only:
            trainer.ae.requires_grad_(False)
            trainer.ae.post_quant_conv.requires_grad_(True)
            trainer.ae.decoder.requires_grad_(True)
        return trainer

    def _decoder_sr_model(self) -> nn.Module:
        src = self.sr_from or self.init_from
        ae, _ = load_autoencoder(self.init_from, self.model_config)
        unet, unet_ae, cfg = load_teacher(src, self.model_config)
        moved = _differing(ae.state_dict(), unet_ae.state_dict(), LATENT_SIDE)
        if moved:
            raise ValueError(f"vqf4-mini train=decoder_sr: the UNet of {src} was trained in another latent space "
                             f"than the autoencoder of {self.init_from} ({moved[0]} differs)")
        sampler = sr_sampler_of(src) if self.sr_sampler == "auto" else self.sr_sampler
        return DecoderSRTrainer(ae.train(), unet, cfg, sampler, self.sr_color_fix)

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        if self.train == "decoder_sr":
            return model(batch["hr"], batch["lr"], batch.get("generator"))  # the batch's generator: seeded noise
        return model(batch["hr"])

    def export_run(self, run_dir, **kw) -> dict:
        raise ValueError("vqf4-mini is not exported on its own: stage 2 reads it (ae_from=RUN) and the "
                         "resshift-mini / sinsr-mini bundles carry it as autoencoder.safetensors")

    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        """Sanity only: the quantised round trip of the bicubic-upsampled LR (about bicubic PSNR); with
        train=decoder_sr, the SR the method serves (seed 0) through the decoder in training, colour-fixed."""
        from .. import tiling

        m = _unwrap(model)
        if isinstance(m, DecoderSRTrainer):
            from ..api import apply_color_fix

            out = sr_latent(m.unet, m.ae, m.config, lr, m.sampler)
            return apply_color_fix(out, lr, self.scale, m.color_fix)
        ae = m.ae
        up, (h, w) = tiling.pad_to_multiple(_bicubic_up(lr.float() * 2 - 1, self.scale), ae.downsample_factor)
        return ((ae.decode(ae.encode(up)).float().clamp(-1, 1) + 1) / 2)[..., :h, :w]


@dataclass(frozen=True)
class ResShiftRecipe(Recipe):
    """Stage 2: the mini UNet with ResShift's objective in the frozen vqf4-mini latent space.
    UNet and diffusion from `model_config`; the autoencoder (and its config) from `ae_from`."""

    ae_from: str = "runs/vqf4-mini"  # vqf4-mini run folder (EMA weights) or a bundle; '' = random (smoke)
    val_sampler: str = "stochastic"
    init_from: str = ""  # warm start: the UNet of a resshift-mini run or bundle ('' = none)
    # ours, not ResShift's: + w_pixel x MSE(HR, the x0 prediction decoded and colour-fixed as served) (`pixel_mse`)
    w_pixel: float = 0.0
    pixel_color_fix: str = MINI_COLOR_FIX
    # which x0 prediction the pixel term scores: "x0" -- the one of the latent loss (random t, x_t drawn from
    # q(x_t | z0, y)); "last_step" -- the UNet's output at t = 0 from the states the stochastic sampler of the
    # init_from UNet reaches there, cached in the pack (`resshift_cli chain-pack`): the output the method serves
    pixel_on: str = "x0"
    w_latent: float = 1.0  # ResShift's latent x0 MSE (0: a pixel-only fine-tune)

    def build_model(self) -> nn.Module:
        from ..nets.resshift_unet import ResShiftUNet
        from ..weights import load_into

        ae, cfg = load_autoencoder(self.ae_from, self.model_config)
        unet = ResShiftUNet(**cfg["unet"])
        if self.init_from:
            init, _, _ = load_teacher(self.init_from, self.model_config)
            load_into(unet, init.state_dict())  # strict: the same UNet config
            unet.requires_grad_(True).train()
        return ResShiftTrainer(unet, ae, cfg, self.w_pixel, self.pixel_color_fix, self.pixel_on, self.w_latent)

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        return model(batch["hr"], batch["lr"], batch.get(CHAIN_EXTRA))

    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        m = _unwrap(model)
        return sr_latent(m.unet, m.ae, m.config, lr, self.val_sampler)

    def export_run(self, run_dir, **kw) -> dict:
        """Hook for the kit's `export_run`: the bundle + model card (see `export_resshift_run`)."""
        return export_resshift_run(run_dir, **_export_kw(kw))


@dataclass(frozen=True)
class SinSRRecipe(Recipe):
    """Stage 3: SinSR's one-step student distilled from the frozen resshift-mini (`teacher_from`);
    networks and diffusion come from the teacher (`model_config` only matters for a smoke run)."""

    teacher_from: str = "runs/resshift-mini"  # resshift-mini run folder or bundle; '' = random (smoke)
    w_distill: float = 1.0
    w_inverse: float = 1.0  # official learn_xT: weight 1
    w_gt: float = 1.0  # official finetune_use_gt: 1.0
    # warm start: the student of a sinsr-mini run or bundle ('' = the official start: the student is the teacher).
    # A continued distillation (a lent GPU's minutes) then builds on the bundled student, also when the teacher
    # (and its autoencoder) were themselves continued from the bundles; the UNet config must be the teacher's
    init_from: str = ""
    # ours, not SinSR's: + w_pixel x MSE(HR, the one-step output decoded and colour-fixed as served) (`pixel_mse`)
    w_pixel: float = 0.0
    pixel_color_fix: str = MINI_COLOR_FIX

    def build_model(self) -> nn.Module:
        from ..nets.resshift_unet import ResShiftUNet
        from ..weights import load_into

        teacher, ae, cfg = load_teacher(self.teacher_from, self.model_config)
        student = ResShiftUNet(**cfg["unet"])
        if self.init_from:
            init, _, _ = load_teacher(self.init_from, self.model_config)  # a student is stored as `unet`
            load_into(student, init.state_dict())  # strict: the teacher's UNet config
        else:
            load_into(student, teacher.state_dict())  # the student starts as the teacher
        student.requires_grad_(True).train()
        return SinSRTrainer(student, teacher, ae, cfg, (self.w_distill, self.w_inverse, self.w_gt), self.w_pixel,
                            self.pixel_color_fix)

    def loss_terms(self, model: nn.Module, batch: dict) -> dict:
        return model(batch["hr"], batch["lr"])

    def infer(self, model: nn.Module, lr: torch.Tensor) -> torch.Tensor:
        m = _unwrap(model)
        return sr_latent(m.unet, m.ae, m.config, lr, "one_step")

    def export_run(self, run_dir, **kw) -> dict:
        """Hook for the kit's `export_run`: the bundle + model card (see `export_resshift_run`)."""
        return export_resshift_run(run_dir, **_export_kw(kw))


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _export_kw(kw: dict) -> dict:
    """The kit's export arguments that `export_resshift_run` understands (dtype -> the UNet's)."""
    out = {k: kw[k] for k in ("model_id", "assets_dir", "evaluate", "eval_limit", "eval_sets", "eval_root", "which",
                              "notes") if k in kw}
    if "dtype" in kw:
        out["unet_dtype"] = kw["dtype"]
    return out


_BICUBIC = DegradationMix(bicubic=1.0, realesrgan=0.0)
_SMOKE_COMMON = ("log_every=1", "ckpt_every=0", "val_every=0", "warmup_steps=0", "batch_size=4", "patch_lr=8",
                 "ema_decay=0.9", "lr=2e-3", "lr_min=1e-3")

RESSHIFT_RECIPES: dict[str, Recipe] = {
    "vqf4-mini": VQF4Recipe(
        name="vqf4-mini",
        description=("Stage 1 of resshift-mini/sinsr-mini: the small VQ-f4 autoencoder (32 ch, mult 1,1,2, "
                     "1024 codes, no mid attention) trained with L1 (+0.1 gradient L1) and VQ losses on HR crops."),
        model_config=dict(MINI_MODEL_CONFIG),
        scale=4, batch_size=32, patch_lr=32, max_steps=20000, lr=4e-4, lr_min=2e-5, warmup_steps=200,
        betas=(0.9, 0.99), grad_clip=1.0, ema_decay=0.999, degradation=_BICUBIC, ckpt_every=500,
        log_every=20, val_every=0, export_id="", method_id="",
        smoke=_SMOKE_COMMON + SMOKE_MODEL_SETS + ("restart_every=5", "restart_until=20"),
    ),
    "resshift-mini": ResShiftRecipe(
        name="resshift-mini",
        description=("ResShift (15 steps, kappa 2) at a small width: UNet 96 ch, 2 levels (10, 2 blocks), Swin 96, "
                     "trained with ResShift's latent x0 MSE in the frozen vqf4-mini latent space on bicubic x4 pairs."),
        model_config=dict(MINI_MODEL_CONFIG),
        scale=4, batch_size=64, patch_lr=32, max_steps=10000, lr=2e-4, lr_min=1e-5, warmup_steps=300,
        betas=(0.9, 0.999), grad_clip=1.0, ema_decay=0.999, degradation=_BICUBIC, ckpt_every=500,
        log_every=20, val_every=2000, val_limit=0, export_id="resshift-mini", method_id="resshift-mini",
        ae_from="runs/vqf4-mini",
        smoke=_SMOKE_COMMON + SMOKE_MODEL_SETS + ("ae_from=",),
    ),
    "sinsr-mini": SinSRRecipe(
        name="sinsr-mini",
        description=("SinSR one-step student distilled from resshift-mini with the deterministic teacher map, "
                     "the inverse loss and the consistency-preserving loss on ground truth (weights 1, 1, 1)."),
        model_config=dict(MINI_MODEL_CONFIG),
        scale=4, batch_size=64, patch_lr=32, max_steps=3000, lr=5e-5, lr_min=5e-6, warmup_steps=100,
        betas=(0.9, 0.999), grad_clip=1.0, ema_decay=0.999, degradation=_BICUBIC, ckpt_every=500,
        log_every=20, val_every=1000, val_limit=0, export_id="sinsr-mini", method_id="sinsr-mini",
        teacher_from="runs/resshift-mini",
        smoke=_SMOKE_COMMON + SMOKE_MODEL_SETS + ("teacher_from=", "model.steps=4"),
    ),
}


def register(recipes: Optional[dict] = None) -> dict:
    """Add the three recipes to `recipes` (the kit's RECIPES by default); idempotent."""
    target = RECIPES if recipes is None else recipes
    for k, r in RESSHIFT_RECIPES.items():
        target.setdefault(k, r)
    return target


register()


# ------------------------------------------------------------------------------------------------
# export


def _recipe_from_dict(d: dict) -> Recipe:
    from .recipes import apply_overrides

    base = RESSHIFT_RECIPES[d["name"]]
    sets = []
    for k, v in d.items():
        if k in ("name", "description", "class", "degradation", "model_config", "smoke") or not hasattr(base, k):
            continue
        if isinstance(v, list):
            if tuple(getattr(base, k)) != tuple(v):
                sets.append(f"{k}={','.join(str(x) for x in v)}")
        elif getattr(base, k) != v:
            sets.append(f"{k}={v}")
    if "warmup_frac" not in d:  # recorded before the field existed: the warm-up counted steps alone
        sets.append("warmup_frac=0")
    r = apply_overrides(base, sets)
    import dataclasses

    return dataclasses.replace(r, model_config=dict(d.get("model_config") or {}))


def _half_copy(net: nn.Module) -> nn.Module:
    return copy.deepcopy(net).half()


def evaluate_bundle(kind: str, folder: Path, sets=EVAL_SETS, eval_root: Path = EVAL_ROOT,
                    limit: Optional[int] = None, seed: int = 0, device: str = "auto") -> dict:
    """`sr_core eval` figures (evaluate_method through the facade, seed 0) of an exported bundle, with its
    default colour fix; when that is not "none", the same outputs without it are under `variants["none"]`."""
    from ..evaluate import evaluate_method
    from ..methods.resshift import ResShift
    from ..methods.sinsr import SinSR
    from ..registry import Registry
    from ..types import Settings

    mid = f"{kind}-mini"
    reg = Registry()
    reg.register(mid, (lambda: ResShift("mini", method_id=mid, bundle_dir=folder)) if kind == "resshift"
                 else (lambda: SinSR("mini", method_id=mid, bundle_dir=folder)))
    out = {}
    for name in sets:
        hr = Path(eval_root) / name / "HR"
        if hr.is_dir():
            res = evaluate_method(mid, hr, 4, limit, Settings(seed=seed, device=device), registry=reg,
                                  compare_color_fix=("none",))
            out[name] = {k: v for k, v in res.items() if k not in ("images", "settings", "variants")}
            out[name]["color_fix"] = res["settings"]["color_fix"]
            if res.get("variants"):
                out[name]["variants"] = {m: {k: v[k] for k in ("psnr_y", "ssim_y", "lr_psnr")}
                                         for m, v in res["variants"].items()}
    return out


def export_resshift_run(run_dir, *, model_id: Optional[str] = None, assets_dir=None, evaluate: bool = True,
                        eval_limit: Optional[int] = None, eval_sets=EVAL_SETS, eval_root: Path = EVAL_ROOT,
                        which: str = "ema", unet_dtype: str = "fp16", device: str = "auto", notes: str = "",
                        color_fix: str = MINI_COLOR_FIX) -> dict:
    """Write `<assets>/<id>/{config.json, model.safetensors, autoencoder.safetensors, MODEL_CARD.md,
    SHA256SUMS}` (the bundle `ResShift("mini")` / `SinSR("mini")` read) from a resshift-mini or
    sinsr-mini run; the UNet is stored in fp16 (the loader casts to the network's dtype), the
    autoencoder in fp32; `color_fix` is the bundle's default colour fix (config.json `color_fix`).
    Figures are computed on the written bundle through the method (with that colour fix, and without).
    Exported over a bundle, the earlier card's Notes (unless `notes` replaces them) and the sections after its
    Reproduce line stay."""
    from ..methods.resshift import write_bundle

    run_dir = Path(run_dir)
    ck = torch.load(run_dir / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    recipe = _recipe_from_dict(ck["recipe"])
    if not isinstance(recipe, (ResShiftRecipe, SinSRRecipe)):
        raise ValueError(f"{run_dir} is a {recipe.name} run; only resshift-mini and sinsr-mini runs are bundles "
                         "(vqf4-mini goes into them)")
    kind = "resshift" if isinstance(recipe, ResShiftRecipe) else "sinsr"
    info_path = run_dir / "train_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if int(info.get("steps", -1)) != int(ck["step"]):
        info = dict(info, steps=int(ck["step"]), wall_seconds=float(ck.get("elapsed", 0.0)), partial=True)
    model = recipe.build_model()
    model.load_state_dict(ck[which])
    model.eval()
    model_id = model_id or recipe.export_id or recipe.name
    cfg = bundle_config_for(model.config, kind, model_id, color_fix)
    dest = (Path(assets_dir) if assets_dir else REPO_ROOT / "assets" / "weights") / model_id
    # read before the bundle is written: a continuation is usually exported over the bundle it started from
    info = dict(info)
    old_card = dest / "MODEL_CARD.md"
    kept_notes, tail = _card_sections(old_card.read_text()) if old_card.is_file() else ("", "")
    notes = notes or kept_notes  # the card's Notes and what follows its Reproduce line stay unless replaced
    if getattr(recipe, "init_from", ""):
        info["warm_start"] = warm_start_entry(recipe.init_from)
    ae_src = recipe.ae_from if kind == "resshift" else recipe.teacher_from
    dec = decoder_finetune_of(ae_src, model.ae.state_dict()) if ae_src else None
    if dec:  # the adapted decoder came with the frozen autoencoder: its entry stays, saying so
        info["decoder_finetune"] = dict(dec, came_with=str(ae_src))
    unet = _half_copy(model.unet) if unet_dtype == "fp16" else copy.deepcopy(model.unet)
    write_bundle(dest, cfg, unet, model.ae)
    figures = evaluate_bundle(kind, dest, eval_sets, eval_root, eval_limit, device=device) if evaluate else {}
    extra = {"unet_params": _params(model.unet), "ae_params": _params(model.ae), "eval_x4": figures,
             "steps": info.get("steps"), "which": which, "unet_dtype": unet_dtype,
             "recon_color_fix": recon_color_fix(model.ae.eval(), cfg["color_fix"], eval_root) if evaluate else {}}
    return _finish_bundle(dest, model_id, kind, recipe,
                          dict(info, exported_weights=which, exported_on=time.strftime("%Y-%m-%d")), cfg, extra,
                          eval_limit, notes, tail)


_BUNDLE_FILES = ("config.json", "model.safetensors", "autoencoder.safetensors")


def _finish_bundle(dest: Path, model_id: str, kind: str, recipe: Recipe, info: dict, cfg: dict, extra: dict,
                   eval_limit, notes: str, tail: str = "") -> dict:
    """MODEL_CARD.md (+ `tail`, sections kept from an earlier card), SHA256SUMS and train_info.json of a
    written bundle; returns {'dir', **extra} with the size added."""
    from ..weights import sha256_file

    sums = {f: sha256_file(dest / f) for f in _BUNDLE_FILES}
    extra = dict(extra, size_mb=round(sum((dest / f).stat().st_size for f in _BUNDLE_FILES) / 1e6, 2))
    card = _card(model_id, kind, recipe, info, cfg, extra, sums, eval_limit, notes)
    (dest / "MODEL_CARD.md").write_text(card + (("\n" + tail + "\n") if tail else ""))
    (dest / "SHA256SUMS").write_text("".join(f"{h}  {f}\n" for f, h in sums.items()))
    (dest / "train_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return {"dir": str(dest), **extra}


def bundle_config_for(cfg: dict, kind: str, model_id: str, color_fix: str = MINI_COLOR_FIX) -> dict:
    """The served config of a trained ResShift-variant config: as is for ResShift; for SinSR the
    UNet becomes SinSR's variant (`in_channels` 6, `direct_lq`: same parameters, same function for
    an LR of the latent's size).  `color_fix`: the bundle's default colour fix (`"color_fix"`)."""
    from ..methods.resshift import bundle_color_fix

    cfg = copy.deepcopy(cfg)
    cfg["color_fix"] = bundle_color_fix({"color_fix": color_fix})
    u = cfg["unet"]
    if kind == "sinsr" and not u.get("direct_lq"):
        if int(u.get("lq_size", u["image_size"])) != int(u["image_size"]):
            raise ValueError("a UNet with an LR feature extractor has no SinSR-variant twin")
        u.pop("lq_size", None)
        u.update({"in_channels": int(u["in_channels"]) + 3, "direct_lq": True})
    cfg.update({"name": model_id, "notes": f"project mini ({model_id}), trained by sr_core.training.recipes_resshift"})
    return cfg


RECON_PROBE = ("BSD100", 30)  # the autoencoder round trip with / without the colour fix, in the card


def recon_color_fix(ae: nn.Module, color_fix: str, eval_root: Path = EVAL_ROOT) -> dict:
    """The autoencoder's round trip (Y-PSNR dB) on RECON_PROBE without and with `color_fix` (what the card's
    colour-fix line reports); {} when the set is not there."""
    name, n = RECON_PROBE
    hr = Path(eval_root) / name / "HR"
    if color_fix == "none" or not hr.is_dir():
        return {}
    r = recon_psnr(ae, hr, n, color_fix=color_fix)
    return {"set": name, "n": n, "none": round(r["psnr_y_no_fix"], 2), color_fix: round(r["psnr_y"], 2)}


def _color_fix_text(cf: str, probe: Optional[dict] = None) -> str:
    if cf == "none":
        return "none, as the official code."
    text = f"{cf}, against the LR upsampled by MATLAB bicubic (the official code applies none)"
    if probe and cf in probe:
        text += (f"; the autoencoder's round trip on the first {probe['n']} {probe['set']} images is "
                 f"{probe['none']:.2f} dB, {probe[cf]:.2f} dB with the fix -- the small autoencoder shifts low "
                 "frequencies, which the fix takes from the LR (the output's high frequencies stay the model's)")
    return text + "."


def _decoder_text(d: Optional[dict]) -> str:
    """The card's line on a decoder swapped in by `redecode_bundle` ('' when none)."""
    if not d:
        return ""
    rt = ", ".join(f"{s} {d['recon_before'][s]:.2f} -> {v:.2f}" for s, v in (d.get("recon_after") or {}).items()
                   if s in (d.get("recon_before") or {}))
    wall = f"{float(d['wall_seconds']) / 60:.0f} min" if d.get("wall_seconds") else "? min"
    if d.get("train") == "decoder_sr":
        on = (f" on the latents the UNet of `{d.get('sr_from')}` samples from the LR ({d.get('sr_sampler')} sampler; "
              f"loss: MSE to HR after the {d.get('sr_color_fix')} colour fix, as the bundle serves) instead of E(HR)")
    else:
        on = ""
    src = (f"the decoder of bundle `{d['source']}`, trained in run `{d['via']}`" if d.get("via")
           else f"from `{d.get('source')}`")
    return (f"- Decoder fine-tune (`resshift_cli redecode`, {src}): `post_quant_conv` + decoder "
            f"retrained (recipe vqf4-mini, train={d.get('train')}, init_from `{d.get('init_from')}`){on} with the encoder, "
            f"quant_conv and codebook frozen -- the UNet's latent space is unchanged: {d.get('steps')} steps, batch "
            f"{d.get('batch_size')}, HR {d.get('patch_hr')} crops, lr {d.get('lr')}, {d.get('device')}, "
            f"mixed precision {d.get('mixed_precision')}, {wall}"
            + (f", pack `{d['pack']}` ({d.get('pack_crops')} crops)" if d.get("pack") else "")
            + _decoder_prior_text(d.get("prior"))
            + f". Round trip E -> quantise -> D, Y-PSNR dB"
            f"{' (first ' + str(d['recon_limit']) + ' images)' if d.get('recon_limit') else ''}: {rt}."
            + (f" Carried over unchanged with the frozen autoencoder of `{d['came_with']}`: adapted to the UNets as "
               "they were before this run." if d.get("came_with") else "") + "\n")


def _decoder_prior_text(p: Optional[dict]) -> str:
    """The card's words on the earlier fine-tunes a decoder run continued (`decoder_finetune.prior`, chained)."""
    return (f"; it continued the fine-tune of {_chain_text(p, lambda e: e.get('via') or e.get('source'))}"
            if p else "")


def _bare_finetune(d: dict) -> dict:
    """A `decoder_finetune` entry without its round-trip figures and `came_with`: what a later entry records of it."""
    return {k: v for k, v in d.items() if not k.startswith("recon_") and k != "came_with"}


def _pixel_text(recipe: Recipe, what: str) -> str:
    w = float(getattr(recipe, "w_pixel", 0.0) or 0.0)
    if not w:
        return ""
    return (f" Plus ours (not in the paper): {w:g} x the pixel MSE between HR and {what}, quantised "
            "(straight-through), decoded by the frozen decoder and colour-fixed "
            f"({getattr(recipe, 'pixel_color_fix', MINI_COLOR_FIX)}) as the bundle serves it, in [0, 1].")


def _derived_text(pm: dict) -> str:
    d = pm.get("derived") or {}
    if not d:
        return ""
    return (f"\n  The pack is derived (`{d.get('command', 'n/a')}`): {d.get('rows', '?')} of the crops of "
            f"`{d.get('from_pack', '?')}`, each with {d.get('what', 'cached arrays')}.")


def _card(model_id: str, kind: str, recipe: Recipe, info: dict, cfg: dict, extra: dict, sums: dict,
          eval_limit, notes: str = "") -> str:
    figs = extra["eval_x4"]
    pm = info.get("pack_meta") or {}
    folders = ", ".join(f"train/{k} ({v} crops)" for k, v in (pm.get("crops_per_folder") or {}).items()) or "n/a"

    def cell(s, variant=None):
        f = figs.get(s)
        if f and variant:
            f = (f.get("variants") or {}).get(variant)
        return f"{f['psnr_y']:.2f} / {f['ssim_y']:.4f} / {f['lr_psnr']:.1f}" if f else "n/a"

    cf = cfg.get("color_fix") or "none"
    rows = [f"| {model_id} (this bundle, seed 0, colour fix {cf}) | " + " | ".join(cell(s) for s in EVAL_SETS) + " |"]
    if cf != "none" and any((figs.get(s) or {}).get("variants", {}).get("none") for s in EVAL_SETS):
        rows.append(f"| {model_id}, the same outputs without a colour fix | "
                    + " | ".join(cell(s, "none") for s in EVAL_SETS) + " |")
    rows.append("| bicubic (MATLAB, published) | " + " | ".join(f"{BICUBIC_X4[s]:.2f}" for s in EVAL_SETS) + " |")
    gain = ", ".join(f"{s} {figs[s]['psnr_y'] - BICUBIC_X4[s]:+.2f} dB" for s in EVAL_SETS if s in figs) or "n/a"
    if kind == "resshift":
        frozen = (f"Frozen autoencoder from `{getattr(recipe, 'ae_from', '')}` (vqf4-mini: L1 + 0.1 gradient L1 + "
                  "VQ codebook/commitment losses on HR crops).")
        w_lat = float(getattr(recipe, "w_latent", 1.0))
        if w_lat:
            objective = ("ResShift's objective: z0 = E(HR), y = E(bicubic-up(LR)), t ~ U{0..T-1}, "
                         "x_t = z0 + eta_t (y - z0) + kappa sqrt(eta_t) eps, MSE between the UNet's x0 prediction "
                         f"and z0 (latent space){f', weight {w_lat:g}' if w_lat != 1 else ''}. {frozen}")
        else:
            objective = (f"A fine-tune of the resshift-mini UNet `{getattr(recipe, 'init_from', '')}` with ResShift's "
                         f"latent loss off (w_latent 0). {frozen}")
        if getattr(recipe, "pixel_on", "x0") == "last_step":
            what = ("the UNet's output at the stochastic sampler's last step (t = 0, the output it serves), fed the "
                    "states the sampler of the initial UNet reaches there (cached per crop in the pack by "
                    "`resshift_cli chain-pack`, one noise draw each)")
        else:
            what = "the x0 prediction"
        objective += _pixel_text(recipe, what)
        method = "`ResShift(\"mini\")` (`sr_core/methods/resshift.py`), 15 UNet calls, stochastic sampler"
    else:
        init = getattr(recipe, "init_from", "")
        if not any(float(getattr(recipe, k, 1)) for k in ("w_distill", "w_inverse", "w_gt")):
            start = (f"the SinSR student `{init}` (distilled from the resshift-mini teacher with SinSR's three losses: "
                     "the lineage under Steps)" if init else
                     f"the student initialised from the teacher (`{getattr(recipe, 'teacher_from', '')}`)")
            objective = f"A fine-tune of {start} with SinSR's three losses off (weights 0, 0, 0)."
        else:
            objective = ("SinSR distillation from the frozen resshift-mini teacher "
                         f"(`{getattr(recipe, 'teacher_from', '')}`): distillation MSE to the deterministic 15-step "
                         "teacher map, inverse MSE (student at index 0 maps the teacher's x0 back to x_T) and the "
                         "consistency-preserving MSE on ground truth (GT latent -> predicted x_T -> back to the GT), "
                         f"weights {getattr(recipe, 'w_distill', 1)}, {getattr(recipe, 'w_inverse', 1)}, "
                         f"{getattr(recipe, 'w_gt', 1)}; student initialised from "
                         f"{'an earlier student (warm start)' if init else 'the teacher'}.")
        objective += _pixel_text(recipe, "the one-step output")
        method = "`SinSR(\"mini\")` (`sr_core/methods/sinsr.py`), one UNet call at t = T-1"
    ws = info.get("warm_start")
    if ws:  # what the run continued, recorded at export
        warm = f"{_warm_text(ws)} -- {int(info.get('steps') or 0) + int(ws.get('steps_total') or 0)} steps in all"
    else:
        warm = f", warm-started from `{recipe.init_from}`" if getattr(recipe, "init_from", "") else ""
    partial = " (stopped early; exported from the last checkpoint)" if info.get("partial") else ""
    limit_note = f", first {eval_limit} images" if eval_limit else ""
    wall = float(info.get("wall_seconds") or 0.0)
    u, a = cfg["unet"], cfg["autoencoder"]
    cf_text = _color_fix_text(cf, extra.get("recon_color_fix"))
    exported = info.get("exported_on") or time.strftime("%Y-%m-%d")
    if info.get("color_fix_set_on"):
        exported += f"; default colour fix set {info['color_fix_set_on']}"
    return f"""# {model_id}

{recipe.description}

- **Method**: {method}.
- **UNet** (`ResShiftUNet`, {extra['unet_params'] / 1e6:.2f} M parameters, stored {extra['unet_dtype']}):
  model_channels {u['model_channels']}, channel_mult {u['channel_mult']}, num_res_blocks {u['num_res_blocks']},
  Swin width {u['swin_embed_dim']} (window {u['window_size']}) at resolutions {u['attention_resolutions']}, LR
  concatenated at the latent size; LR padded to a multiple of {cfg['lr_pad_multiple']} px.
- **Autoencoder** (`VQModel`, VQ-f4, {extra['ae_params'] / 1e6:.2f} M parameters, fp32): ch {a['ddconfig']['ch']},
  ch_mult {a['ddconfig']['ch_mult']}, num_res_blocks {a['ddconfig']['num_res_blocks']}, attn_type
  {a['ddconfig'].get('attn_type', 'vanilla')}, resamp_with_conv {a['ddconfig'].get('resamp_with_conv', True)},
  GroupNorm groups {a['ddconfig'].get('norm_groups', 32)} (upstream 32), {a['n_embed']} codes of dim {a['embed_dim']}.
- **Diffusion**: T = {cfg['diffusion']['steps']}, kappa {cfg['diffusion']['kappa']}, min_noise_level
  {cfg['diffusion']['min_noise_level']}, p {cfg['diffusion']['power']} (ResShift v1 schedule).
- **Colour fix** (default; config.json `color_fix`, any run can choose another): {cf_text}
- **Files**: {', '.join(f'`{f}` sha256 `{h}`' for f, h in sums.items())}; {extra['size_mb']:.2f} MB in all.
- **Licence**: code MIT; weights trained by this project for research use (the training images are research-only).

## Training
- Recipe `{recipe.name}` (`sr_core/training/recipes_resshift.py`). {objective}
- Optimiser Adam (betas {list(recipe.betas)}), lr {recipe.lr:g}, {recipe.warmup_text()}, cosine to
  {recipe.lr_min:g}, gradient clipping {recipe.grad_clip:g}, EMA {recipe.ema_decay:g} (exported: {extra['which']}),
  batch {recipe.batch_size}, LR patch {recipe.patch_lr} px (HR {recipe.patch_lr * recipe.scale}), seed {recipe.seed}.
- Steps: {info.get('steps')} (planned {info.get('max_steps', recipe.max_steps)}){partial}{warm}; device
  {info.get('device', 'unknown')}; mixed precision {info.get('mixed_precision', '?')}; wall {wall / 60:.1f} min.
- Data: pack `{Path(str(info.get('pack', 'n/a'))).name}` -- {pm.get('n', '?')} crops of {pm.get('hr_size', '?')} px from
  {folders} in `../shared/data/`; bicubic (MATLAB imresize) x4 LR. No eval/ image was used.{_derived_text(pm)}
{_decoder_text(info.get('decoder_finetune'))}
## Benchmark (x4, `sr_core eval` protocol: Y-PSNR dB / SSIM-Y / LR-PSNR dB{limit_note})

| model | Set5 | Set14 | BSD100 |
|---|---|---|---|
{chr(10).join(rows)}

PSNR gain over bicubic: {gain}.

{('## Notes' + chr(10) + notes.strip() + chr(10) + chr(10)) if notes.strip() else ''}Reproduce: `scripts/train_resshift_minis.sh` (or the stage commands in it). Exported {exported}.
"""


# ------------------------------------------------------------------------------------------------
# a new decoder for an exported bundle (the latent space unchanged)

LATENT_SIDE = ("encoder.", "quant_conv.", "quantize.")  # what fixes the latent space the UNet works in


def _bundle_extra(bundle: Path, cfg: dict, info: dict, ae: nn.Module, figures: dict, probe: dict) -> dict:
    """The card's figures of an exported bundle that is being rewritten (redecode, set-color-fix)."""
    from ..nets.resshift_unet import ResShiftUNet
    from ..weights import load_state_dict

    unet_sd = load_state_dict(bundle / "model.safetensors")
    return {"unet_params": _params(ResShiftUNet(**cfg["unet"])), "ae_params": _params(ae), "eval_x4": figures,
            "steps": info.get("steps"), "which": info.get("exported_weights", "ema"),
            "unet_dtype": "fp16" if any(v.dtype == torch.float16 for v in unet_sd.values()) else "fp32",
            "recon_color_fix": probe}


def _card_sections(text: str) -> tuple[str, str]:
    """(the Notes text, what follows the 'Reproduce:' line) of a model card written by `_card`."""
    notes, tail = "", ""
    if "\n## Notes\n" in text:
        notes = text.split("\n## Notes\n", 1)[1].split("\nReproduce:", 1)[0]
    if "\nReproduce:" in text:
        after = text.split("\nReproduce:", 1)[1]
        tail = after.split("\n", 1)[1] if "\n" in after else ""
    return notes.strip(), tail.strip()


def _recon_sets(ae: nn.Module, sets, eval_root: Path, limit: Optional[int]) -> dict:
    return {s: round(recon_psnr(ae, Path(eval_root) / s / "HR", limit)["psnr_y"], 2)
            for s in sets if (Path(eval_root) / s / "HR").is_dir()}


def _decoder_sr_entry(rec: dict) -> dict:
    """What a train=decoder_sr run learnt from: the UNet's source, its sampler (auto resolved), the colour fix."""
    src = rec.get("sr_from") or rec.get("init_from")
    sampler = rec.get("sr_sampler") or "auto"
    if sampler == "auto":
        try:
            sampler = sr_sampler_of(src)
        except (OSError, ValueError, KeyError):
            pass  # the source is gone: the card says "auto"
    return {"sr_from": src, "sr_sampler": sampler, "sr_color_fix": rec.get("sr_color_fix")}


def _info_of(path: str) -> tuple[dict, Optional[Path]]:
    """(train_info.json, the bundle folder or None) of a run folder, its checkpoint file or a bundle ({} when
    there is none to read)."""
    p = _resolve(path)
    folder = p if p.is_dir() else p.parent.parent  # <run>/ckpt/last.pt -> <run>
    ip = folder / "train_info.json"
    info = json.loads(ip.read_text()) if ip.exists() else {}
    return info, (folder if (folder / "config.json").exists() else None)


def warm_start_entry(path: str) -> dict:
    """What a warm start (`init_from`) continued: the training of that run or bundle (steps, batch, lr, device,
    wall time) and, when it was itself a continuation, that one's (`prior`); `steps_total` counts them all."""
    info, _ = _info_of(path)
    rec = info.get("recipe") or {}
    e = {"from": str(path), "recipe": rec.get("name"), "steps": info.get("steps"),
         "batch_size": rec.get("batch_size"), "lr": rec.get("lr"), "device": info.get("device"),
         "mixed_precision": info.get("mixed_precision"), "wall_seconds": info.get("wall_seconds"),
         "finished": info.get("finished"), "exported_on": info.get("exported_on")}
    prior = info.get("warm_start")
    if prior:
        e["prior"] = prior
    e["steps_total"] = int(e["steps"] or 0) + int((prior or {}).get("steps_total") or 0)
    return e


def decoder_finetune_of(path: str, ae_state: dict, _depth: int = 0) -> Optional[dict]:
    """The `decoder_finetune` entry that comes with the autoencoder a stage took from `path` (its `ae_from` /
    `teacher_from`): the bundle's own, or, for a run, that of the source it took its autoencoder from -- only
    while the autoencoder is bit for bit the one in `ae_state` (None otherwise, and for an original decoder)."""
    from ..weights import load_state_dict

    try:
        info, folder = _info_of(path)
    except (OSError, ValueError):
        return None
    if folder is not None:
        entry = {k: v for k, v in (info.get("decoder_finetune") or {}).items() if k != "came_with"}
        if not entry:
            return None
        theirs = load_state_dict(folder / "autoencoder.safetensors")
        return entry if set(theirs) == set(ae_state) and not _differing(theirs, ae_state) else None
    rec = info.get("recipe") or {}
    src = rec.get("ae_from") or rec.get("teacher_from")
    return decoder_finetune_of(src, ae_state, _depth + 1) if src and _depth < 8 else None


def _chain_text(e: Optional[dict], name) -> str:
    """'`X` (N steps, batch, lr, device, min), which continued `Y` (...)' along a chain of training entries linked by
    `prior` (a warm start's or a decoder fine-tune's); `name(entry)` is what each is called."""
    parts = []
    while e:
        wall = f", {float(e['wall_seconds']) / 60:.0f} min" if e.get("wall_seconds") else ""
        parts.append(f"`{name(e)}` ({e.get('steps')} steps, batch {e.get('batch_size')}, lr {e.get('lr')}, "
                     f"{e.get('device')}{wall})")
        e = e.get("prior")
    return ", which continued ".join(parts)


def _warm_text(w: Optional[dict]) -> str:
    """The card's words on what a warm-started run continued."""
    return f"; warm-started from {_chain_text(w, lambda e: e['from'])}" if w else ""


def _decoder_continued(init_from: Optional[str], source: str) -> Optional[dict]:
    """The `decoder_finetune` a decoder run started from: that of the bundle it was initialised from (the entry
    without its round-trip figures; None when that decoder was the original).  When the bundle already holds this
    run's decoder (`redecode` again), the earlier one it recorded."""
    if not init_from:
        return None
    try:
        d = _info_of(init_from)[0].get("decoder_finetune")
    except (OSError, ValueError):
        return None
    if d and d.get("source") == source:  # redecode run again with the same run: keep what it had recorded
        return d.get("prior")
    return _bare_finetune(d) if d else None


def redecode_bundle(bundle, decoder_from, *, evaluate: bool = True, eval_limit: Optional[int] = None,
                    eval_sets=EVAL_SETS, eval_root: Path = EVAL_ROOT, device: str = "auto") -> dict:
    """Put the decoder side (`post_quant_conv`, `decoder`) of `decoder_from` -- a vqf4-mini run trained with
    `train=decoder` from this bundle, or another bundle -- into the resshift-mini / sinsr-mini `bundle`.

    Refused unless the latent side (encoder, quant_conv, codebook) is bit for bit the bundle's: the UNet
    was trained in that latent space, so only then does the new decoder serve it unchanged.  Rewrites
    autoencoder.safetensors, SHA256SUMS, train_info.json (`decoder_finetune`: the run, and the round trip
    before / after) and the model card (figures recomputed through the method; its notes and any
    later sections are kept)."""
    from ..methods.resshift import bundle_color_fix
    from ..nets.vqgan import VQModel
    from ..weights import load_into, load_state_dict, save_safetensors

    bundle = Path(bundle)
    cfg = json.loads((bundle / "config.json").read_text())
    info = json.loads((bundle / "train_info.json").read_text())
    kind = "sinsr" if cfg["unet"].get("direct_lq") else "resshift"
    old = load_state_dict(bundle / "autoencoder.safetensors")
    src, _, folder = _load_source(str(decoder_from))
    new = load_state_dict(folder / "autoencoder.safetensors") if folder else _sub(src, "ae.")
    if set(old) != set(new):
        raise ValueError(f"{decoder_from}: another autoencoder layout than {bundle}'s")
    moved = _differing(old, new, LATENT_SIDE)
    if moved:
        raise ValueError(f"{decoder_from}: its latent side differs from {bundle}'s ({len(moved)} tensors, e.g. "
                         f"{moved[0]}); the UNet would see another latent space -- train the decoder with "
                         f"`--set train=decoder --set init_from={bundle}`")
    merged = {k: (old[k] if k.startswith(LATENT_SIDE) else new[k]).float().contiguous() for k in old}
    ae_old, ae_new = VQModel(**cfg["autoencoder"]), VQModel(**cfg["autoencoder"])
    load_into(ae_old, old)
    load_into(ae_new, merged)
    ae_old.eval(), ae_new.eval()
    limit = eval_limit or None
    src_info, _ = _info_of(str(decoder_from))
    run_info = {} if folder else src_info  # a bundle: its decoder's entry below says where it came from
    rec = run_info.get("recipe") or {}
    entry = {"source": str(decoder_from), "steps": run_info.get("steps"), "batch_size": rec.get("batch_size"),
             "lr": rec.get("lr"), "patch_hr": (rec.get("patch_lr") or 0) * (rec.get("scale") or 0) or None,
             "init_from": rec.get("init_from"), "train": rec.get("train"), "device": run_info.get("device"),
             **(_decoder_sr_entry(rec) if rec.get("train") == "decoder_sr" else {}),
             "mixed_precision": run_info.get("mixed_precision"), "wall_seconds": run_info.get("wall_seconds"),
             "finished": run_info.get("finished"),
             **({"pack": Path(run_info["pack"]).name, "pack_crops": (run_info.get("pack_meta") or {}).get("n")}
                if run_info.get("pack") else {})}
    before = _decoder_continued(rec.get("init_from"), str(decoder_from)) if not folder else None
    if before:  # the run went on from a decoder that was itself fine-tuned: the card names both
        entry["prior"] = before
    prior = src_info.get("decoder_finetune") if folder else None
    if prior:  # another bundle whose decoder was itself swapped in: the card names the run that trained it
        entry = dict(_bare_finetune(prior),
                     source=str(decoder_from), via=prior.get("via") or prior.get("source"))
    entry.update({"recon_limit": limit,
             "recon_before": _recon_sets(ae_old, eval_sets, eval_root, limit),
             "recon_after": _recon_sets(ae_new, eval_sets, eval_root, limit)})
    ae_path = bundle / "autoencoder.safetensors"
    old_bytes = ae_path.read_bytes()
    save_safetensors(merged, ae_path)
    try:  # measured on the bundle as the method serves it; a failure puts the old decoder back
        figures = evaluate_bundle(kind, bundle, eval_sets, eval_root, eval_limit, device=device) if evaluate else {}
    except BaseException:
        ae_path.write_bytes(old_bytes)
        raise
    probe = recon_color_fix(ae_new, bundle_color_fix(cfg), eval_root) if evaluate else {}
    extra = _bundle_extra(bundle, cfg, info, ae_new, figures, probe)
    card_path = bundle / "MODEL_CARD.md"
    notes, tail = _card_sections(card_path.read_text()) if card_path.exists() else ("", "")
    res = _finish_bundle(bundle, cfg.get("name") or bundle.name, kind, _recipe_from_dict(info["recipe"]),
                         dict(info, decoder_finetune=entry), cfg, extra, eval_limit if evaluate else None, notes, tail)
    return dict(res, decoder_finetune=entry)


def set_bundle_color_fix(bundle, color_fix: str, *, evaluate: bool = True, eval_limit: Optional[int] = None,
                         eval_sets=EVAL_SETS, eval_root: Path = EVAL_ROOT, device: str = "auto") -> dict:
    """Make `color_fix` the default colour fix of an exported resshift-mini / sinsr-mini `bundle`: config.json's
    `color_fix`, then the model card re-measured through the method (with the fix, and the same outputs without
    it; its notes and later sections kept), SHA256SUMS and train_info.json (`color_fix`).  The weights are not
    touched."""
    from ..methods.resshift import bundle_color_fix
    from ..nets.vqgan import VQModel
    from ..weights import load_into, load_state_dict

    bundle = Path(bundle)
    cfg_path = bundle / "config.json"
    cfg = json.loads(cfg_path.read_text())
    info = json.loads((bundle / "train_info.json").read_text())
    kind = "sinsr" if cfg["unet"].get("direct_lq") else "resshift"
    cfg["color_fix"] = bundle_color_fix({"color_fix": color_fix})
    old_text = cfg_path.read_text()
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    try:  # measured on the bundle as the method serves it; a failure puts the old config back
        figures = evaluate_bundle(kind, bundle, eval_sets, eval_root, eval_limit, device=device) if evaluate else {}
        ae = VQModel(**cfg["autoencoder"])
        load_into(ae, load_state_dict(bundle / "autoencoder.safetensors"))
        probe = recon_color_fix(ae.eval(), cfg["color_fix"], eval_root) if evaluate else {}
    except BaseException:
        cfg_path.write_text(old_text)
        raise
    extra = _bundle_extra(bundle, cfg, info, ae, figures, probe)
    card_path = bundle / "MODEL_CARD.md"
    card = card_path.read_text() if card_path.exists() else ""
    notes, tail = _card_sections(card)
    if not info.get("exported_on"):  # bundles exported before train_info kept the date: the card's
        m = re.search(r"Exported (\d{4}-\d{2}-\d{2})", card)
        info["exported_on"] = m.group(1) if m else None
    info.update(color_fix=cfg["color_fix"], color_fix_set_on=time.strftime("%Y-%m-%d"))
    return _finish_bundle(bundle, cfg.get("name") or bundle.name, kind, _recipe_from_dict(info["recipe"]), info,
                          cfg, extra, eval_limit if evaluate else None, notes, tail)


# ------------------------------------------------------------------------------------------------
# autoencoder reconstruction figures


@torch.no_grad()
def recon_psnr(ae: nn.Module, hr_dir, limit: Optional[int] = None, quantize: bool = True,
               color_fix: str = "none") -> dict:
    """Y-PSNR of the autoencoder's round trip E -> (quantise) -> D on the HR images of `hr_dir`
    (mod-cropped to 4, border 4): the ceiling any SR in this latent space can reach.  `color_fix`: the round
    trip colour-fixed as `run_method` would against the x4 LR (MATLAB bicubic down, then up); the same round
    trip without the fix is then under `psnr_y_no_fix` (one decode for both)."""
    import numpy as np

    from .. import imaging, metrics
    from ..evaluate import list_images

    vals, raw = [], []
    to_u8 = lambda r: ((r.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)[0].permute(1, 2, 0).numpy()  # noqa: E731
    for p in list_images(Path(hr_dir))[: limit or None]:
        hr = np.asarray(imaging.load_image(p, max_pixels=1 << 30))
        if hr.ndim == 2:
            hr = np.repeat(hr[..., None], 3, axis=2)
        hr = imaging.mod_crop(hr[..., :3], 4)
        x = torch.from_numpy(np.array(hr, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        from .. import tiling

        xp, (h, w) = tiling.pad_to_multiple(x, ae.downsample_factor)
        rec = ae.decode(ae.encode(xp), force_not_quantize=not quantize)[..., :h, :w]
        if color_fix != "none":
            from ..api import apply_color_fix

            raw.append(float(metrics.psnr_y(to_u8(rec), hr, 4)))
            lr = torch.from_numpy(imaging.imresize(hr, 0.25)).permute(2, 0, 1)[None].float() / 255
            rec = apply_color_fix((rec + 1) / 2, lr, 4, color_fix) * 2 - 1
        vals.append(float(metrics.psnr_y(to_u8(rec), hr, 4)))
    res = {"n": len(vals), "psnr_y": float(np.mean(vals)) if vals else float("nan")}
    if color_fix != "none":
        res["psnr_y_no_fix"] = float(np.mean(raw)) if raw else float("nan")
    return res


# ------------------------------------------------------------------------------------------------
# speed: both minis in one process


def bench_pair(resshift_dir, sinsr_dir, sizes=(64, 128), repeat: int = 2, device: str = "cpu") -> dict:
    """`sr_core.bench.bench` of the two bundles in one process, interleaved (r, s, r, s ...) so that
    background load hits both alike; per size the best time of each and the ratio resshift / sinsr."""
    from ..bench import bench
    from ..methods.resshift import ResShift
    from ..methods.sinsr import SinSR
    from ..registry import Registry
    from ..types import Settings

    reg = Registry()
    reg.register("resshift-mini", lambda: ResShift("mini", bundle_dir=resshift_dir))
    reg.register("sinsr-mini", lambda: SinSR("mini", bundle_dir=sinsr_dir))
    best: dict = {}
    for _ in range(max(1, repeat)):
        for mid in ("resshift-mini", "sinsr-mini"):
            res = bench(mid, sizes, Settings(scale=4, device=device), registry=reg)
            for row in res["sizes"]:
                best[(mid, row["size"])] = min(best.get((mid, row["size"]), float("inf")), row["seconds"])
    rows = [{"lr_size": n, "resshift_mini_s": round(best[("resshift-mini", n)], 4),
             "sinsr_mini_s": round(best[("sinsr-mini", n)], 4),
             "ratio": round(best[("resshift-mini", n)] / best[("sinsr-mini", n)], 2)} for n in sizes]
    return {"device": device, "threads": torch.get_num_threads(), "sizes": rows}


# ------------------------------------------------------------------------------------------------
# command line


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m sr_core.training.resshift_cli")
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write the bundle + model card of a resshift-mini / sinsr-mini run")
    e.add_argument("run")
    e.add_argument("--id", default=None)
    e.add_argument("--assets", default=None, help="weights root (default assets/weights)")
    e.add_argument("--no-eval", action="store_true")
    e.add_argument("--eval-limit", type=int, default=0)
    e.add_argument("--weights", default="ema", choices=("ema", "model"))
    e.add_argument("--unet-dtype", default="fp16", choices=("fp16", "fp32"))
    e.add_argument("--device", default="auto", help="device of the evaluation (auto: cuda when available)")
    e.add_argument("--note", default="", help="free text added to the model card (e.g. how the run went)")
    e.add_argument("--color-fix", default=MINI_COLOR_FIX, choices=COLOR_FIXES,
                   help=f"the bundle's default colour fix (default {MINI_COLOR_FIX})")
    r = sub.add_parser("recon", help="autoencoder reconstruction Y-PSNR of a vqf4-mini run or bundle")
    r.add_argument("source")
    r.add_argument("--sets", default="Set5,Set14,BSD100")
    r.add_argument("--limit", type=int, default=0)
    d = sub.add_parser("redecode", help="put a fine-tuned decoder (same latent space) into a mini bundle")
    d.add_argument("bundle")
    d.add_argument("--decoder-from", required=True,
                   help="vqf4-mini run trained with --set train=decoder (or train=decoder_sr) --set "
                        "init_from=BUNDLE or the bundle's run, or another bundle")
    d.add_argument("--no-eval", action="store_true")
    d.add_argument("--eval-limit", type=int, default=0)
    d.add_argument("--device", default="auto")
    c = sub.add_parser("set-color-fix", help="change a mini bundle's default colour fix (config + re-measured card)")
    c.add_argument("bundle")
    c.add_argument("color_fix", choices=COLOR_FIXES)
    c.add_argument("--no-eval", action="store_true")
    c.add_argument("--eval-limit", type=int, default=0)
    c.add_argument("--device", default="auto")
    cp = sub.add_parser("chain-pack", help="a pack with the states resshift-mini's sampler reaches at its last "
                                           "step (for --set pixel_on=last_step)")
    cp.add_argument("source", help="resshift-mini run or bundle")
    cp.add_argument("--pack", required=True)
    cp.add_argument("--out", required=True)
    cp.add_argument("--crops", type=int, default=400, help="how many crops, spread evenly over the pack")
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--batch", type=int, default=4)
    cp.add_argument("--device", default="cpu")
    cp.add_argument("--threads", type=int, default=None)
    sub.add_parser("configs", help="print the mini bundle configs and parameter counts")
    b = sub.add_parser("bench", help="resshift-mini vs sinsr-mini speed in one process")
    b.add_argument("--resshift", default=str(REPO_ROOT / "assets" / "weights" / "resshift-mini"))
    b.add_argument("--sinsr", default=str(REPO_ROOT / "assets" / "weights" / "sinsr-mini"))
    b.add_argument("--sizes", default="64,128")
    b.add_argument("--repeat", type=int, default=2)
    b.add_argument("--device", default="cpu")
    b.add_argument("--threads", type=int, default=None)
    if argv and argv[0] == "train":  # the kit's trainer CLI with these recipes registered
        from .__main__ import main as kit_main

        return kit_main(argv[1:])
    a = ap.parse_args(argv)
    if a.cmd == "export":
        res = export_resshift_run(a.run, model_id=a.id, assets_dir=a.assets, evaluate=not a.no_eval,
                                  eval_limit=a.eval_limit or None, which=a.weights, unet_dtype=a.unet_dtype,
                                  device=a.device, notes=a.note, color_fix=a.color_fix)
        print(json.dumps(res, indent=2))
    elif a.cmd == "set-color-fix":
        res = set_bundle_color_fix(a.bundle, a.color_fix, evaluate=not a.no_eval, eval_limit=a.eval_limit or None,
                                   device=a.device)
        print(json.dumps(res, indent=2))
    elif a.cmd == "redecode":
        res = redecode_bundle(a.bundle, a.decoder_from, evaluate=not a.no_eval, eval_limit=a.eval_limit or None,
                              device=a.device)
        print(json.dumps(res, indent=2))
    elif a.cmd == "bench":
        if a.threads:
            torch.set_num_threads(a.threads)
        print(json.dumps(bench_pair(a.resshift, a.sinsr, tuple(int(x) for x in a.sizes.split(",")), a.repeat,
                                    a.device), indent=2))
    elif a.cmd == "chain-pack":
        if a.threads:
            torch.set_num_threads(a.threads)
        dev = a.device if a.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        print(json.dumps(chain_pack(a.source, a.pack, a.out, crops=a.crops, seed=a.seed, batch=a.batch,
                                    device=dev), indent=2))
    elif a.cmd == "recon":
        ae, _ = load_autoencoder(a.source)
        out = {}
        for s in a.sets.split(","):
            hr = EVAL_ROOT / s / "HR"
            if hr.is_dir():
                q = recon_psnr(ae, hr, a.limit or None, color_fix=MINI_COLOR_FIX)
                out[s] = {"quantised": {"n": q["n"], "psnr_y": q["psnr_y_no_fix"]},
                          "unquantised": recon_psnr(ae, hr, a.limit or None, quantize=False),
                          f"quantised, colour fix {MINI_COLOR_FIX}": {"n": q["n"], "psnr_y": q["psnr_y"]}}
        print(json.dumps(out, indent=2))
    else:
        from ..nets.resshift_unet import ResShiftUNet
        from ..nets.vqgan import VQModel

        for kind in ("resshift", "sinsr"):
            cfg = mini_bundle_config({}, kind)
            print(json.dumps({"kind": kind, "unet_params": _params(ResShiftUNet(**cfg["unet"])),
                              "ae_params": _params(VQModel(**cfg["autoencoder"])), "config": cfg}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
