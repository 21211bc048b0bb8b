"""The VQ-GAN autoencoder ResShift and SinSR diffuse in (VQ-f4: 3 latent channels, 8192 codes).

Corresponds to `VQModelTorch` in the official ResShift code (zsyOAOA/ResShift,
`ldm/models/autoencoder.py`) with its `Encoder`/`Decoder` from `ldm/modules/diffusionmodules/model.py`
and `VectorQuantizer2` from `ldm/modules/vqvae/quantize.py` (the latent-diffusion autoencoder
design; ResShift paper Sec. 4, "latent space of VQGAN with downsampling factor 4").  SinSR reuses
the same file and weights.  `encode(x)` maps an image in [-1, 1] to the *pre-quantisation* latent
(encoder -> `quant_conv`), as upstream does; `decode(z)` first snaps z to the nearest codebook vector
(straight-through, so gradients reach z) unless `force_not_quantize=True`, then `post_quant_conv` ->
decoder -> image in about [-1, 1].  The constructor takes the official config (`ddconfig`, `n_embed`,
`embed_dim`); parameter names (`encoder.*`, `decoder.*`, `quant_conv`, `post_quant_conv`,
`quantize.embedding.weight`) are the official ones so `autoencoder_vq_f4.pth` loads strictly.
Upstream switches to an xformers attention block when xformers is installed; both compute the same
single-head attention, done here with `scaled_dot_product_attention`.  The code is ours.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VQModel", "Encoder", "Decoder", "VectorQuantizer"]


def _norm(channels: int, groups: int = 32) -> nn.GroupNorm:
    """Upstream's `Normalize`: GroupNorm with 32 groups.  `groups` is our knob for narrow minis (the
    parameters are the same): at 32 channels, 32 groups are an instance norm, which discards each
    channel's mean and scale over the image and made a 32-channel autoencoder depend on the image size."""
    return nn.GroupNorm(num_groups=groups, num_channels=channels, eps=1e-6, affine=True)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    """norm-swish-conv3x3 twice, plus a 1x1 (`nin_shortcut`) or 3x3 (`conv_shortcut`) skip on a width change."""

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, conv_shortcut: bool = False,
                 dropout: float = 0.0, norm_groups: int = 32):
        super().__init__()
        out_channels = out_channels or in_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = _norm(in_channels, norm_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = _norm(out_channels, norm_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        self.use_conv_shortcut = conv_shortcut
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(self.dropout(_swish(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, 1x1-conv q/k/v/proj_out, residual."""

    def __init__(self, channels: int, norm_groups: int = 32):
        super().__init__()
        self.norm = _norm(channels, norm_groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c^-1/2, as upstream
        return x + self.proj_out(out.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Halve H, W: zero-pad right/bottom by 1 then 3x3 stride-2 conv (`conv`), or 2x2 average pooling."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 2, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1)))
        return F.avg_pool2d(x, 2, 2)


class Upsample(nn.Module):
    """Double H, W (nearest), then an optional 3x3 conv (`conv`)."""

    def __init__(self, channels: int, with_conv: bool):
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(channels, channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class _Level(nn.Module):
    """One resolution: `block` (ResnetBlocks), `attn` (AttnBlocks, may be empty), optional resampler."""

    def __init__(self):
        super().__init__()
        self.block = nn.ModuleList()
        self.attn = nn.ModuleList()

    def run(self, h: torch.Tensor) -> torch.Tensor:
        for i, blk in enumerate(self.block):
            h = blk(h)
            if len(self.attn):
                h = self.attn[i](h)
        return h


def _make_attn(channels: int, attn_type: str, norm_groups: int = 32) -> nn.Module:
    """Upstream `make_attn`: "vanilla" (also its xformers twin) is `AttnBlock`, "none" an identity
    (no parameters).  The other upstream types ("linear", "memory-efficient-cross-attn") are not
    used by any ResShift/SinSR config and are refused rather than silently replaced."""
    if attn_type in ("vanilla", "vanilla-xformers"):
        return AttnBlock(channels, norm_groups)
    if attn_type == "none":
        return nn.Identity()
    raise ValueError(f"attn_type {attn_type!r} is not supported (vanilla, none)")


class _Mid(nn.Module):
    def __init__(self, ch: int, dropout: float, attn_type: str = "vanilla", norm_groups: int = 32):
        super().__init__()
        self.block_1 = ResnetBlock(ch, ch, dropout=dropout, norm_groups=norm_groups)
        self.attn_1 = _make_attn(ch, attn_type, norm_groups)
        self.block_2 = ResnetBlock(ch, ch, dropout=dropout, norm_groups=norm_groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(h)))


def _per_level(num_res_blocks: Union[int, Sequence[int]], n: int) -> list[int]:
    out = [num_res_blocks] * n if isinstance(num_res_blocks, int) else list(num_res_blocks)
    if len(out) != n:
        raise ValueError("num_res_blocks and ch_mult differ in length")
    return out


class Encoder(nn.Module):
    """conv_in, per level ResnetBlocks (+ attention at `attn_resolutions`) and a downsample
    (not after the last level), mid (block-attn-block), norm, swish, conv_out to z_channels (x2 with double_z)."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: Union[int, Sequence[int]], attn_resolutions: Sequence[int] = (),
                 dropout: float = 0.0, resamp_with_conv: bool = True, in_channels: int, resolution: int,
                 z_channels: int, double_z: bool = True, attn_type: str = "vanilla", norm_groups: int = 32,
                 **_ignored):
        super().__init__()
        nrb = _per_level(num_res_blocks, len(ch_mult))
        self.conv_in = nn.Conv2d(in_channels, ch, 3, 1, 1)
        res = resolution
        in_mult = (1,) + tuple(ch_mult)
        self.down = nn.ModuleList()
        block_in = ch
        for i, mult in enumerate(ch_mult):
            level = _Level()
            block_in, block_out = ch * in_mult[i], ch * mult
            for _ in range(nrb[i]):
                level.block.append(ResnetBlock(block_in, block_out, dropout=dropout, norm_groups=norm_groups))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(_make_attn(block_in, attn_type, norm_groups))
            if i != len(ch_mult) - 1:
                level.downsample = Downsample(block_in, resamp_with_conv)
                res //= 2
            self.down.append(level)
        self.mid = _Mid(block_in, dropout, attn_type, norm_groups)
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, 2 * z_channels if double_z else z_channels, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            h = level.run(h)
            if i != len(self.down) - 1:
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    """conv_in from z_channels, mid, per level (lowest resolution first) ResnetBlocks (+ attention)
    and an upsample (not after the highest level), norm, swish, conv_out to out_ch."""

    def __init__(self, *, ch: int, out_ch: int, ch_mult: Sequence[int] = (1, 2, 4, 8),
                 num_res_blocks: Union[int, Sequence[int]], attn_resolutions: Sequence[int] = (),
                 dropout: float = 0.0, resamp_with_conv: bool = True, in_channels: int, resolution: int,
                 z_channels: int, give_pre_end: bool = False, tanh_out: bool = False,
                 attn_type: str = "vanilla", norm_groups: int = 32, **_ignored):
        super().__init__()
        nrb = _per_level(num_res_blocks, len(ch_mult))
        self.give_pre_end, self.tanh_out = give_pre_end, tanh_out
        n = len(ch_mult)
        block_in = ch * ch_mult[-1]
        res = resolution // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(z_channels, block_in, 3, 1, 1)
        self.mid = _Mid(block_in, dropout, attn_type, norm_groups)
        levels: list[_Level] = []
        for i in reversed(range(n)):
            level = _Level()
            block_out = ch * ch_mult[i]
            for _ in range(nrb[i] + 1):
                level.block.append(ResnetBlock(block_in, block_out, dropout=dropout, norm_groups=norm_groups))
                block_in = block_out
                if res in attn_resolutions:
                    level.attn.append(_make_attn(block_in, attn_type, norm_groups))
            if i != 0:
                level.upsample = Upsample(block_in, resamp_with_conv)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # index = resolution level, 0 = full size
        self.norm_out = _norm(block_in, norm_groups)
        self.conv_out = nn.Conv2d(block_in, out_ch, 3, 1, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            h = self.up[i].run(h)
            if i != 0:
                h = self.up[i].upsample(h)
        if self.give_pre_end:
            return h
        h = self.conv_out(_swish(self.norm_out(h)))
        return torch.tanh(h) if self.tanh_out else h


class VectorQuantizer(nn.Module):
    """Nearest-codebook-vector quantisation (`embedding.weight`: n_embed x embed_dim), straight-through."""

    def __init__(self, n_e: int, e_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B*H*W,) code indices (row-major over b, h, w)."""
        flat = z.permute(0, 2, 3, 1).reshape(-1, self.e_dim)
        e = self.embedding.weight
        # in fp32 even under autocast (training in bf16): the expansion below cancels large terms, and bf16's
        # 8-bit mantissa would pick other codes than the fp32 inference does
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat, e = flat.float(), e.float()
            # ||z||^2 + ||e||^2 - 2 z.e, in upstream's order of operations so ties break the same way
            d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * (flat @ e.t())
        return d.argmin(dim=1)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (z_q, codebook loss (legacy beta placement, as upstream), indices)."""
        idx = self.indices(z)
        b, c, h, w = z.shape
        zq = self.embedding(idx).view(b, h, w, c).permute(0, 3, 1, 2)
        loss = torch.mean((zq.detach() - z) ** 2) + self.beta * torch.mean((zq - z.detach()) ** 2)
        zq = z + (zq - z).detach()
        return zq.contiguous(), loss, idx


class VQModel(nn.Module):
    """ResShift's `VQModelTorch`: `VQModel(ddconfig=..., n_embed=8192, embed_dim=3)`."""

    def __init__(self, ddconfig: dict, n_embed: int, embed_dim: int, remap=None, sane_index_shape: bool = False):
        super().__init__()
        if remap is not None:
            raise ValueError("codebook remapping is not supported (no released ResShift model uses it)")
        self.embed_dim = embed_dim
        self.encoder = Encoder(**ddconfig)
        self.decoder = Decoder(**ddconfig)
        self.quantize = VectorQuantizer(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(ddconfig["z_channels"], embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, ddconfig["z_channels"], 1)
        self.downsample_factor = 2 ** (len(ddconfig.get("ch_mult", (1, 2, 4, 8))) - 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image (B, 3, H, W) in [-1, 1] -> pre-quantisation latent (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, z: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        """Latent -> image; quantises first unless `force_not_quantize`."""
        if not force_not_quantize:
            z = self.quantize(z)[0]
        return self.decoder(self.post_quant_conv(z))

    def forward(self, x: torch.Tensor, force_not_quantize: bool = False) -> torch.Tensor:
        return self.decode(self.encode(x), force_not_quantize)
