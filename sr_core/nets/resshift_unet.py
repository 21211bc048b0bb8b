"""The ResShift / SinSR denoiser: a UNet with scale-shift-normed residual blocks and Swin window attention.

Corresponds to `UNetModelSwin` in the official ResShift code (zsyOAOA/ResShift, `models/unet.py`, its
Swin layers in `models/swin_transformer.py`, helpers in `models/basic_ops.py`) and to the same class in
SinSR (wyf0912/SinSR, `models/unet.py`), which differs only in how the LR image is attached (see
`direct_lq`).  The network takes the (scaled) noisy latent x_t, the timestep index t and the LR image
y (in [-1, 1], at the latent's spatial size) and predicts x0 (ResShift paper, Sec. 3, "predict the
start"; the input scaling 1/sqrt(kappa^2 eta_t + 1) is the sampler's job, not this module's).
Structure: sinusoidal timestep embedding -> MLP; the LR image is concatenated to x (optionally after a
strided-conv feature extractor when `lq_size != image_size`); an encoder of `ResBlock`s per level with
a Swin `BasicLayer` after the first block of every level whose resolution is in
`attention_resolutions`; a middle block ResBlock-Swin-ResBlock; a mirrored decoder with skip
concatenations.  Parameter and buffer names (`time_embed.*`, `input_blocks.*`, `middle_block.*`,
`output_blocks.*`, `out.*`, incl. the Swin `relative_position_index` and `attn_mask` buffers) are the
official ones, so official checkpoints load strictly.  Swin windows and shifted-window masks are
fixed by `image_size` at construction exactly as upstream: at run time every level's size must be a
multiple of its window size (for the released configs the latent side must be a multiple of 64).
The three timm helpers upstream imports (DropPath, to_2tuple, trunc_normal_) are re-implemented here.
The code is ours.
"""

from __future__ import annotations

import collections.abc
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ResShiftUNet",
    "ResBlock",
    "SwinLayer",
    "GroupNorm32",
    "timestep_embedding",
    "DropPath",
    "to_2tuple",
    "trunc_normal_",
]


# --------------------------------------------------------------------------------------------
# Small helpers (what upstream takes from timm, written here)


def to_2tuple(x) -> tuple:
    """(x, x) for a scalar; a tuple of an iterable."""
    if isinstance(x, collections.abc.Iterable) and not isinstance(x, str):
        return tuple(x)
    return (x, x)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> torch.Tensor:
    """Fill `tensor` in place from N(mean, std^2) truncated to [a, b] (absolute bounds, as timm's)."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability `drop_prob`."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class GroupNorm32(nn.GroupNorm):
    """GroupNorm with 32 groups computed in float32 (upstream `normalization`), eps 1e-5."""

    def __init__(self, channels: int):
        super().__init__(32, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).type(x.dtype)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half); (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = timesteps[:, None].float() * freqs.to(timesteps.device)[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class _TimestepModule(nn.Module):
    """Marker: forward(x, emb) takes the timestep embedding."""


class _Seq(nn.Sequential):
    """Sequential that hands the timestep embedding to the children that take it."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _TimestepModule) else layer(x)
        return x


# --------------------------------------------------------------------------------------------
# Convolutional pieces


class Downsample(nn.Module):
    """Halve H and W: 3x3 stride-2 conv (`op`) or 2x2 average pooling."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, self.out_channels, 3, stride=2, padding=1)
        else:
            if self.out_channels != channels:
                raise ValueError("average-pool downsampling cannot change the channel count")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double H and W by nearest-neighbour interpolation, then an optional 3x3 conv (`conv`)."""

    def __init__(self, channels: int, use_conv: bool, out_channels: Optional[int] = None):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, self.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class ResBlock(_TimestepModule):
    """GroupNorm-SiLU-conv, timestep conditioning, GroupNorm-SiLU-dropout-conv, plus a skip.

    With `use_scale_shift_norm` the embedding gives (scale, shift) and the second norm becomes
    norm(h) * (1 + scale) + shift (FiLM); otherwise it is added to h.  The last conv starts at zero.
    """

    def __init__(self, channels: int, emb_channels: int, dropout: float, out_channels: Optional[int] = None,
                 use_conv: bool = False, use_scale_shift_norm: bool = False, up: bool = False,
                 down: bool = False):
        super().__init__()
        self.channels = channels
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels), nn.SiLU(), nn.Conv2d(channels, self.out_channels, 3, padding=1)
        )
        self.updown = up or down
        if up:
            self.h_upd, self.x_upd = Upsample(channels, False), Upsample(channels, False)
        elif down:
            self.h_upd, self.x_upd = Downsample(channels, False), Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(), nn.Linear(emb_channels, (2 if use_scale_shift_norm else 1) * self.out_channels)
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(self.out_channels), nn.SiLU(), nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if self.out_channels == channels:
            self.skip_connection: nn.Module = nn.Identity()
        else:
            k = 3 if use_conv else 1
            self.skip_connection = nn.Conv2d(channels, self.out_channels, k, padding=k // 2)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.updown:
            h = self.in_layers[:-1](x)
            h = self.in_layers[-1](self.h_upd(h))
            x = self.x_upd(x)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            h = self.out_layers[1:](h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


# --------------------------------------------------------------------------------------------
# Swin window attention on (B, C, H, W) feature maps


def _to_windows(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, nW, ws*ws, C), windows in row-major order."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // ws) * (w // ws), ws * ws, c)


def _from_windows(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `_to_windows`: (B, nW, ws*ws, C) -> (B, C, H, W)."""
    b, _, _, c = x.shape
    x = x.view(b, h // ws, w // ws, ws, ws, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h, w)


def shifted_window_mask(h: int, w: int, ws: int, shift: int, device=None) -> torch.Tensor:
    """Additive mask (nW, ws*ws, ws*ws) of upstream's shifted-window attention: 0 or -100.

    This is *upstream's* mask, reproduced because the released weights were trained with it; it is
    not textbook Swin (Sec. 3.2).  Upstream labels a (1, 1, H, W) map with `[:, h_slice, w_slice, :]`
    (so only the row regions [0, H-ws), [H-ws, H-shift), [H-shift, H) survive) and flattens the
    windows transposed.  Net effect: the token at in-window (row r, col c) of window (wi, wj) gets
    the region label of absolute row wi*ws + c; only the last row of windows is masked, and there
    tokens are separated by their in-window column.  Tokens attend where labels are equal.
    """
    nh, nw = h // ws, w // ws
    rows = torch.arange(h, device=device)
    region = (rows >= h - ws).long() + (rows >= h - shift).long()  # 0, 1, 2 (empty regions vanish)
    col = torch.arange(ws, device=device)
    lab = region[(torch.arange(nh, device=device)[:, None] * ws + col[None, :])]  # nh, ws (by column)
    lab = lab[:, None, None, :].expand(nh, nw, ws, ws).reshape(nh * nw, ws * ws)  # token (r, c) -> c
    diff = lab[:, None, :] - lab[:, :, None]
    return torch.zeros(diff.shape, device=device).masked_fill(diff != 0, -100.0)


class WindowAttention(nn.Module):
    """Multi-head self-attention inside a window, with a learned relative-position bias table."""

    def __init__(self, dim: int, window_size: tuple, num_heads: int, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)  # N, N, 2
        index = (rel[..., 0] + wh - 1) * (2 * ww - 1) + (rel[..., 1] + ww - 1)
        self.register_buffer("relative_position_index", index)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = float(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        n = self.window_size[0] * self.window_size[1]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)  # heads, N, N

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B, nW, N, C); mask: (nW, N, N) additive or None."""
        b, nw, n, c = x.shape
        heads = self.num_heads
        qkv = self.qkv(x).view(b, nw, n, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # B, nW, heads, N, hd
        bias = self.position_bias().to(q.dtype)[None]  # 1, heads, N, N
        if mask is not None:
            bias = bias + mask.to(q.dtype)[:, None]  # nW, heads, N, N
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0, scale=self.scale
        )
        out = out.transpose(2, 3).reshape(b, nw, n, c)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    """1x1 conv - GELU - 1x1 conv on (B, C, H, W)."""

    def __init__(self, in_features: int, hidden_features: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Conv2d(in_features, hidden_features, 1)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden_features, in_features, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class SwinBlock(nn.Module):
    """Pre-norm (GroupNorm) window attention, optionally on a cyclically shifted map, then an MLP.

    If the construction resolution is not larger than the window, the window shrinks to it and the
    shift is dropped (as upstream).  `attn_mask` is a buffer for the construction resolution; another
    run-time size gets its mask computed (and cached) on the fly.
    """

    def __init__(self, dim: int, input_resolution: Sequence[int], num_heads: int, window_size: int = 8,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:
            shift_size, window_size = 0, min(self.input_resolution)
        if not 0 <= shift_size < window_size:
            raise ValueError("shift_size must be in [0, window_size)")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = GroupNorm32(dim)
        self.attn = WindowAttention(dim, to_2tuple(window_size), num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = GroupNorm32(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        mask = shifted_window_mask(*self.input_resolution, window_size, shift_size) if shift_size > 0 else None
        self.register_buffer("attn_mask", mask)
        self._mask_cache: dict = {}

    def _mask(self, h: int, w: int, device, dtype) -> Optional[torch.Tensor]:
        if self.shift_size == 0:
            return None  # upstream's run-time mask for shift 0 is all zeros
        if (h, w) == self.input_resolution:
            return self.attn_mask.to(dtype)
        key = (h, w, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(h, w, self.window_size, self.shift_size, device)
        return self._mask_cache[key].to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws, s = self.window_size, self.shift_size
        if h % ws or w % ws:
            raise ValueError(f"Swin window {ws} does not divide the feature map {h}x{w}; pad the input "
                             f"so that every UNet level is a multiple of the window size")
        y = self.norm1(x)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(2, 3))
        y = _from_windows(self.attn(_to_windows(y, ws), self._mask(h, w, x.device, x.dtype)), ws, h, w)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(2, 3))
        x = x + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class _PatchEmbed(nn.Module):
    """Conv projection to the Swin width (`proj`), optional GroupNorm (`norm`)."""

    def __init__(self, in_chans: int, embed_dim: int, img_size: int, patch_size: int, patch_norm: bool):
        super().__init__()
        ps = to_2tuple(patch_size)
        self.patches_resolution = [to_2tuple(img_size)[0] // ps[0], to_2tuple(img_size)[1] // ps[1]]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=ps, stride=ps)
        self.norm = GroupNorm32(embed_dim) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class _PatchUnEmbed(nn.Module):
    """1x1 conv back to the UNet width (`proj`), optional GroupNorm (`norm`)."""

    def __init__(self, out_chans: int, embed_dim: int, patch_norm: bool):
        super().__init__()
        self.proj = nn.Conv2d(embed_dim, out_chans, 1)
        self.norm = GroupNorm32(out_chans) if patch_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x))


class SwinLayer(nn.Module):
    """Upstream `BasicLayer`: embed to `embed_dim`, `depth` Swin blocks (odd ones shifted by ws/2), unembed."""

    def __init__(self, in_chans: int, embed_dim: int, num_heads: int, window_size: int, depth: int = 2,
                 img_size: int = 64, patch_size: int = 1, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: Optional[float] = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: Union[float, Sequence[float]] = 0.0, patch_norm: bool = False):
        super().__init__()
        self.patch_embed = _PatchEmbed(in_chans, embed_dim, img_size, patch_size, patch_norm)
        res = self.patch_embed.patches_resolution
        self.patch_unembed = _PatchUnEmbed(in_chans, embed_dim, patch_norm)
        self.blocks = nn.ModuleList([
            SwinBlock(embed_dim, res, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                      mlp_ratio, qkv_bias, qk_scale, drop, attn_drop,
                      drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path)
            for i in range(depth)
        ])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        for blk in self.blocks:
            x = blk(x)
        return self.patch_unembed(x)


# --------------------------------------------------------------------------------------------
# The UNet


class ResShiftUNet(nn.Module):
    """ResShift's `UNetModelSwin`; keyword arguments are the official config's `model.params`.

    forward(x, timesteps, lq=None, mask=None) -> x0 prediction with `out_channels` channels.
    `x`: (N, C, H, W) latent (already scaled by the sampler); `timesteps`: (N,) step indices
    (float allowed); `lq`: the LR image (N, 3, H, W) in [-1, 1] (at `lq_size / image_size` times
    H, W when a feature extractor is configured).

    `direct_lq=True` is SinSR's variant of the class: `in_channels` already counts the LR channels,
    no feature extractor exists (`lq_size` is unused), and an LR of another size than x is
    pixel-unshuffled by 2 (larger) or nearest-upsampled x4 (smaller) before concatenation.  For an LR
    of x's size both variants compute the same function and have the same parameters.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: Union[int, Sequence[int]],
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        swin_depth: int = 2,
        swin_embed_dim: int = 96,
        window_size: int = 8,
        mlp_ratio: float = 2.0,
        patch_norm: bool = False,
        cond_lq: bool = True,
        cond_mask: bool = False,
        lq_size: int = 256,
        direct_lq: bool = False,
    ):
        super().__init__()
        if dims != 2:
            raise ValueError("only 2-D UNets are supported (dims=2)")
        if isinstance(num_res_blocks, int):
            num_res_blocks = [num_res_blocks] * len(channel_mult)
        if len(num_res_blocks) != len(channel_mult):
            raise ValueError("num_res_blocks and channel_mult differ in length")
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_res_blocks = list(num_res_blocks)
        self.attention_resolutions = tuple(attention_resolutions)
        self.channel_mult = tuple(channel_mult)
        self.window_size = window_size
        self.dtype = torch.float16 if use_fp16 else torch.float32
        self.cond_lq = cond_lq
        self.cond_mask = cond_mask
        self.direct_lq = direct_lq
        heads = num_heads if num_head_channels == -1 else swin_embed_dim // num_head_channels

        def swin(ch: int, res: int) -> SwinLayer:
            return SwinLayer(ch, swin_embed_dim, heads, window_size, swin_depth, res, 1, mlp_ratio, True, None,
                             dropout, 0.0, 0.0, patch_norm)

        def res_block(ch_in: int, ch_out: Optional[int] = None, **kw) -> ResBlock:
            return ResBlock(ch_in, temb, dropout, ch_out, use_scale_shift_norm=use_scale_shift_norm, **kw)

        temb = model_channels * 4
        self.time_embed = nn.Sequential(nn.Linear(model_channels, temb), nn.SiLU(), nn.Linear(temb, temb))

        # LR conditioning (upstream quirk kept: the extractor branch is taken whenever
        # `not (cond_lq and lq_size == image_size)`, and its channels are added to the input conv).
        if direct_lq:
            self.feature_extractor: nn.Module = nn.Identity()
            lq_chn = 0
        elif cond_lq and lq_size == image_size:
            self.feature_extractor = nn.Identity()
            lq_chn = 4 if cond_mask else 3
        else:
            layers: list[nn.Module] = []
            chn, lq_chn = (4 if cond_mask else 3), 16
            for _ in range(int(math.log(lq_size / image_size) / math.log(2))):
                layers += [nn.Conv2d(chn, lq_chn, 3, 1, 1), nn.SiLU(), Downsample(lq_chn, True, lq_chn * 2)]
                lq_chn *= 2
                chn = lq_chn
            self.feature_extractor = nn.Sequential(*layers)

        ch = input_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([_Seq(nn.Conv2d(in_channels + lq_chn, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = image_size
        for level, mult in enumerate(channel_mult):
            for j in range(self.num_res_blocks[level]):
                layers = [res_block(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in self.attention_resolutions and j == 0:
                    layers.append(swin(ch, ds))
                self.input_blocks.append(_Seq(*layers))
                skip_chans.append(ch)
            if level != len(channel_mult) - 1:
                down = res_block(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(_Seq(down))
                skip_chans.append(ch)
                ds //= 2

        self.middle_block = _Seq(res_block(ch), swin(ch, ds), res_block(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(self.num_res_blocks[level] + 1):
                layers = [res_block(ch + skip_chans.pop(), int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in self.attention_resolutions and i == 0:
                    layers.append(swin(ch, ds))
                if level and i == self.num_res_blocks[level]:
                    layers.append(res_block(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds *= 2
                self.output_blocks.append(_Seq(*layers))

        self.out = nn.Sequential(GroupNorm32(ch), nn.SiLU(), nn.Conv2d(input_ch, out_channels, 3, padding=1))

    @property
    def size_multiple(self) -> int:
        """Latent sides must be a multiple of this (every level divisible by its Swin window)."""
        mult = 1
        for blk in self.modules():
            if isinstance(blk, SwinBlock):
                level_factor = self.image_size // blk.input_resolution[0]
                mult = max(mult, level_factor * blk.window_size)
        return max(mult, 2 ** (len(self.channel_mult) - 1))

    def _attach_lq(self, x: torch.Tensor, lq: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if not self.cond_lq:
            raise ValueError("this UNet was built with cond_lq=False but got an LR image")
        if self.direct_lq:
            if lq.shape[2:] != x.shape[2:]:
                lq = F.pixel_unshuffle(lq, 2) if lq.shape[2] > x.shape[2] else F.interpolate(lq, scale_factor=4)
            return torch.cat([x, lq], dim=1)
        if mask is not None:
            if not self.cond_mask:
                raise ValueError("this UNet was built with cond_mask=False but got a mask")
            lq = torch.cat([lq, mask], dim=1)
        return torch.cat([x, self.feature_extractor(lq.type(self.dtype))], dim=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, lq: Optional[torch.Tensor] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels)).type(self.dtype)
        if lq is not None:
            x = self._attach_lq(x, lq, mask)
        h = x.type(self.dtype)
        skips = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h.type(x.dtype))
