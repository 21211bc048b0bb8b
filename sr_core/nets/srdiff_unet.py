"""SRDiff's noise predictor (a conditional UNet) and the model wrapper that holds it with its RRDB encoder.

Corresponds to `Unet` in the official SRDiff code (LeiaLi/SRDiff, `models/diffsr_modules.py`, with its
blocks `Block`, `ResnetBlock`, `Downsample`, `Upsample`, `SinusoidalPosEmb`, `Mish` in
`models/commons.py`) as configured by `configs/diffsr_base.yaml` (no GroupNorm, no attention, no weight
norm, no `up_input`).  Paper (Li et al., Neurocomputing 2022), Sec. 3.3 / Fig. 3: the input is the
noisy residual x_t (3 channels); a sinusoidal time embedding goes through an MLP and is added in every
residual block; the RRDB encoder's features of blocks 3, 6 and the trunk (`feas[2::3]`) are
concatenated, lifted to HR size by a transposed conv (kernel 2s, stride s, padding s/2) and added after
the first UNet level.  `SRDiffModel` has the submodules `denoise_fn` (this UNet) and `rrdb`
(`sr_core.nets.rrdbnet.RRDBNet`), so its state dict has the official checkpoint's `denoise_fn.*` and
`rrdb.*` names and an official `{'state_dict': {'model': ...}}` file loads into it strictly (the
official file also stores the diffusion schedule as buffers; see `OFFICIAL_SCHEDULE_BUFFERS`).  The
DIV2K x4 release is dim 64, dim_mults (1, 2, 3, 4), RRDB nf 32 / nb 8 / gc 16.  The code is ours.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .rrdbnet import RRDBNet

__all__ = ["Mish", "SinusoidalPosEmb", "Block", "ResnetBlock", "Downsample", "Upsample", "SRDiffUNet",
           "SRDiffModel", "OFFICIAL_SCHEDULE_BUFFERS", "official_div2k_config", "unet_size_multiple"]

# Buffers the official `GaussianDiffusion` registers (float32 copies of the schedule); they sit next to
# `denoise_fn.*` / `rrdb.*` in an official checkpoint and are not parameters of the networks.
OFFICIAL_SCHEDULE_BUFFERS = (
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
)


def official_div2k_config() -> dict:
    """The network and diffusion settings of the released DIV2K x4 model (configs/diffsr_df2k4x.yaml
    on top of diffsr_base.yaml / df2k4x.yaml)."""
    return {
        "unet": {"dim": 64, "out_dim": 3, "dim_mults": [1, 2, 3, 4], "cond_dim": 32, "rrdb_num_block": 8,
                 "sr_scale": 4},
        "rrdb": {"in_nc": 3, "out_nc": 3, "nf": 32, "nb": 8, "gc": 16, "scale": 4},
        "diffusion": {"timesteps": 100, "beta_schedule": "cosine", "beta_s": 0.008, "res_rescale": 2.0,
                      "clip_input": True, "loss_type": "l1",
                      # the official data loader computes up(LR) as imresize(lr_uint8 / 256, 4), not / 255
                      "lr_up_gain": 255.0 / 256.0},
    }


class Mish(nn.Module):
    """x * tanh(softplus(x)) (the official activation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class SinusoidalPosEmb(nn.Module):
    """[sin(t w_i), cos(t w_i)] with w_i = 10000^(-i / (dim/2 - 1)), i = 0 .. dim/2 - 1."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"the time embedding needs an even dim >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freq = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
        arg = t[:, None] * freq[None, :]
        return torch.cat((arg.sin(), arg.cos()), dim=-1)


class Block(nn.Module):
    """Reflection pad 1 -> 3x3 conv -> Mish (`block.1` is the conv, as in the checkpoint)."""

    def __init__(self, dim: int, dim_out: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim_out, 3), Mish())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ResnetBlock(nn.Module):
    """block1 -> + MLP(time embedding) per channel -> block2, plus a 1x1 conv shortcut when widths differ."""

    def __init__(self, dim: int, dim_out: int, time_emb_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(Mish(), nn.Linear(time_emb_dim, dim_out))
        self.block1 = Block(dim, dim_out)
        self.block2 = Block(dim_out, dim_out)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.block1(x)
        h = h + self.mlp(time_emb)[:, :, None, None]
        h = self.block2(h)
        return h + self.res_conv(x)


class Downsample(nn.Module):
    """Reflection pad 1 -> 3x3 conv with stride 2 (`conv.1`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """4x4 transposed conv with stride 2 (`conv.0`)."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.ConvTranspose2d(dim, dim, 4, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def unet_size_multiple(dim_mults: Sequence[int], sr_scale: int) -> int:
    """The multiple the LR sides must have: the HR side (LR * sr_scale) must halve cleanly
    len(dim_mults) - 1 times (each Downsample is undone by an exact x2 Upsample)."""
    hr_mult = 2 ** (len(dim_mults) - 1)
    return hr_mult // math.gcd(hr_mult, int(sr_scale))


class SRDiffUNet(nn.Module):
    """The SRDiff noise predictor eps_theta(x_t, t, e) (official `Unet`).

    Args:
        dim: base width (official DIV2K: 64); the time embedding has `dim` features.
        out_dim: output channels (3).
        dim_mults: width multipliers per level (DIV2K: 1, 2, 3, 4; CelebA: 1, 2, 2, 4).  Each level has
            two ResnetBlocks; every level but the last ends with a Downsample.  The decoder has one
            level fewer (the first level's skip is not used), each ending with an Upsample.
        cond_dim: RRDB feature width (nf, 32).
        rrdb_num_block: RRDB blocks (nb, 8); `(nb + 1) // 3` feature maps (`feas[2::3]`) are used.
        sr_scale: upscaling factor; sets the transposed conv that lifts the features to HR.
    """

    def __init__(self, dim: int = 64, out_dim: int = 3, dim_mults: Sequence[int] = (1, 2, 3, 4), cond_dim: int = 32,
                 rrdb_num_block: int = 8, sr_scale: int = 4):
        super().__init__()
        dim_mults = tuple(int(m) for m in dim_mults)
        if len(dim_mults) < 2:
            raise ValueError(f"dim_mults needs at least two levels, got {dim_mults}")
        n_feats = (int(rrdb_num_block) + 1) // 3
        if n_feats < 1:
            raise ValueError(f"SRDiff needs an RRDB with >= 2 blocks (features feas[2::3]), got nb={rrdb_num_block}")
        self.dim, self.out_dim, self.dim_mults = int(dim), int(out_dim), dim_mults
        self.cond_dim, self.rrdb_num_block, self.sr_scale = int(cond_dim), int(rrdb_num_block), int(sr_scale)
        dims = [3, *(dim * m for m in dim_mults)]
        in_out = list(zip(dims[:-1], dims[1:]))
        n_res = len(in_out)
        s = self.sr_scale
        self.cond_proj = nn.ConvTranspose2d(cond_dim * n_feats, dim, s * 2, s, s // 2)
        self.time_pos_emb = SinusoidalPosEmb(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 4), Mish(), nn.Linear(dim * 4, dim))
        self.downs = nn.ModuleList()
        for i, (d_in, d_out) in enumerate(in_out):
            last = i >= n_res - 1
            self.downs.append(nn.ModuleList([ResnetBlock(d_in, d_out, dim), ResnetBlock(d_out, d_out, dim),
                                             Downsample(d_out) if not last else nn.Identity()]))
        mid = dims[-1]
        self.mid_block1 = ResnetBlock(mid, mid, dim)
        self.mid_block2 = ResnetBlock(mid, mid, dim)
        self.ups = nn.ModuleList()
        for d_in, d_out in reversed(in_out[1:]):
            # as official: `is_last` never holds here, so every decoder level ends with an Upsample
            self.ups.append(nn.ModuleList([ResnetBlock(d_out * 2, d_in, dim), ResnetBlock(d_in, d_in, dim),
                                           Upsample(d_in)]))
        self.final_conv = nn.Sequential(Block(dim, dim), nn.Conv2d(dim, out_dim, 1))

    @property
    def size_multiple(self) -> int:
        return unet_size_multiple(self.dim_mults, self.sr_scale)

    def config(self) -> dict:
        return {"dim": self.dim, "out_dim": self.out_dim, "dim_mults": list(self.dim_mults),
                "cond_dim": self.cond_dim, "rrdb_num_block": self.rrdb_num_block, "sr_scale": self.sr_scale}

    def project_cond(self, feas: Sequence[torch.Tensor]) -> torch.Tensor:
        """Lift RRDB features (the list `RRDBNet(..., get_fea=True)` returns) to the HR conditioning map."""
        return self.cond_proj(torch.cat(list(feas[2::3]), 1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Optional[Sequence[torch.Tensor]] = None, *,
                cond_hr: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Predict the noise of x (N, 3, H, W) at integer timesteps t (N,) (0-based, as official).

        The conditioning is either `cond`, the RRDB feature list, or `cond_hr`, its projection from
        `project_cond` (a sampler computes it once instead of at every step, as the official code does).
        """
        if cond_hr is None:
            if cond is None:
                raise ValueError("SRDiffUNet needs the RRDB features (cond) or their projection (cond_hr)")
            cond_hr = self.project_cond(cond)
        temb = self.mlp(self.time_pos_emb(t))
        skips = []
        for i, (res1, res2, down) in enumerate(self.downs):
            x = res2(res1(x, temb), temb)
            if i == 0:
                x = x + cond_hr
            skips.append(x)
            x = down(x)
        x = self.mid_block2(self.mid_block1(x, temb), temb)
        for res1, res2, up in self.ups:
            x = torch.cat((x, skips.pop()), dim=1)
            x = up(res2(res1(x, temb), temb))
        return self.final_conv(x)


class SRDiffModel(nn.Module):
    """`denoise_fn` (SRDiffUNet) + `rrdb` (RRDBNet LR encoder): the official checkpoint's module layout."""

    def __init__(self, unet: Mapping[str, Any], rrdb: Mapping[str, Any], diffusion: Optional[Mapping[str, Any]] = None):
        super().__init__()
        self.denoise_fn = SRDiffUNet(**dict(unet))
        self.rrdb = RRDBNet(**dict(rrdb))
        self.diffusion = dict(diffusion or {})
        if self.rrdb.nf != self.denoise_fn.cond_dim or self.rrdb.nb != self.denoise_fn.rrdb_num_block:
            raise ValueError(f"the UNet expects RRDB features nf={self.denoise_fn.cond_dim}, nb="
                             f"{self.denoise_fn.rrdb_num_block}; the RRDB has nf={self.rrdb.nf}, nb={self.rrdb.nb}")
        if self.rrdb.scale != self.denoise_fn.sr_scale:
            raise ValueError(f"UNet sr_scale {self.denoise_fn.sr_scale} != RRDB scale {self.rrdb.scale}")

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "SRDiffModel":
        return cls(cfg["unet"], cfg["rrdb"], cfg.get("diffusion"))

    def config(self) -> dict:
        return {"unet": self.denoise_fn.config(), "rrdb": self.rrdb.config(), "diffusion": dict(self.diffusion)}

    @property
    def scale(self) -> int:
        return self.denoise_fn.sr_scale

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, img_lr: torch.Tensor) -> torch.Tensor:
        """eps_theta(x_t, t, RRDB(img_lr)) for training (the encoder runs without gradients when it is
        frozen, as official `fix_rrdb`); a sampler uses `encode` once and `denoise_fn(..., cond_hr=)`."""
        frozen = not any(p.requires_grad for p in self.rrdb.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            _, feas = self.rrdb(img_lr, get_fea=True)
        return self.denoise_fn(x_t, t, feas)

    def encode(self, img_lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(RRDB SR output, HR conditioning map) for an LR image in [-1, 1]."""
        rrdb_out, feas = self.rrdb(img_lr, get_fea=True)
        return rrdb_out, self.denoise_fn.project_cond(feas)
