"""StableSR's denoiser: a Stable-Diffusion-2.1 UNet steered by a time-aware LR encoder through SFT layers.

Corresponds to IceClear/StableSR `ldm/modules/diffusionmodules/openaimodel.py` (`UNetModelDualcondV2`, whose
every residual block is a `ResBlockDual`, and `EncoderUNetModelWT`) and `ldm/modules/spade.py` (`SPADE`),
configured by `configs/stableSRNew/v2-finetune_text_T_512.yaml`.  The UNet is diffusers'
`UNet2DConditionModel` in the SD-2.1 layout, unchanged; an `SFTLayer` per resnet (the official SPADE:
out = GroupNorm(h) * (1 + gamma(c)) + beta(c), with c the encoder feature of the same spatial width) is
applied to the output of that resnet's `conv2` by a forward hook, i.e. right after the official
`out_layers` and before the skip addition, exactly where `ResBlockDual` applies its `spade`.  The struct
condition is passed per call and is visible to the hooks only during that call (per thread), so calling
`model.unet` alone afterwards gives the plain SD UNet.  `TimeAwareEncoder` restates `EncoderUNetModelWT`
with the official parameter names (the checkpoint's `structcond_stage_model.*` minus that prefix): a
half UNet with a sinusoidal time embedding whose features before each downsampling and after the middle
block pass through one more residual block (`fea_tran`) to `semb_channels`, returned keyed by their
spatial width.  `convert_ldm_unet` maps the official LDM names (`model.diffusion_model.*` incl. `.spade.`,
`structcond_stage_model.*`) to ours by an explicit per-layout rule, strictly.  The code is ours.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import threading
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TimeAwareEncoder", "SFTLayer", "StableSRUNet", "stablesr_unet_configs", "build_stablesr_unet",
           "timestep_embedding", "ldm_unet_key_map", "convert_ldm_unet", "convert_ldm_sd_unet",
           "UNET_PREFIX", "STRUCT_PREFIX", "SD21_ENCODER", "SD21_SEMB_CHANNELS"]

UNET_PREFIX = "model.diffusion_model."
STRUCT_PREFIX = "structcond_stage_model."

# configs/stableSRNew/v2-finetune_text_T_512.yaml, structcond_stage_config (EncoderUNetModelWT); the unused
# image_size (96) and the options left at their defaults (conv_resample, no scale-shift norm, no resblock
# up/down, legacy attention order) are not parameters here.
SD21_ENCODER: dict[str, Any] = {
    "in_channels": 4,
    "model_channels": 256,
    "out_channels": 256,
    "num_res_blocks": 2,
    "attention_resolutions": [4, 2, 1],
    "channel_mult": [1, 1, 2, 2],
    "num_heads": 4,
    "num_head_channels": -1,
    "dropout": 0.0,
}
SD21_SEMB_CHANNELS = 256  # unet_config.semb_channels: the encoder's out_channels, SPADE's label_nc


# ---------------------------------------------------------------------------------------------- pieces

class _GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back (the official `GroupNorm32`; matters only in fp16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).to(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half), float32 (LDM's layout)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _timesteps(t: Union[int, float, torch.Tensor], batch: int, device: torch.device) -> torch.Tensor:
    """`t` as a 1-D tensor of length `batch` (a scalar or 0-d/1-element tensor is broadcast)."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0 or t.numel() == 1:
        t = t.reshape(1).expand(batch)
    if t.ndim != 1 or t.shape[0] != batch:
        raise ValueError(f"timesteps of shape {tuple(t.shape)} do not match a batch of {batch}")
    return t


class _ResBlock(nn.Module):
    """The official `ResBlock` (no scale-shift norm, no up/down): GN-SiLU-conv, + emb, GN-SiLU-drop-conv, + skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float = 0.0):
        super().__init__()
        self.in_layers = nn.Sequential(_GroupNorm32(32, channels), nn.SiLU(),
                                       nn.Conv2d(channels, out_channels, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        # upstream: one group per channel when out_channels is not a multiple of 32
        groups = 32 if out_channels % 32 == 0 else out_channels
        self.out_layers = nn.Sequential(_GroupNorm32(groups, out_channels), nn.SiLU(), nn.Dropout(dropout),
                                        nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip_connection = (nn.Identity() if out_channels == channels
                                else nn.Conv2d(channels, out_channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class _AttentionBlock(nn.Module):
    """The official `AttentionBlock` with the legacy head order (qkv split per head, then into q, k, v)."""

    def __init__(self, channels: int, num_heads: int = 1, num_head_channels: int = -1):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels:
                raise ValueError(f"{channels} channels are not divisible by head width {num_head_channels}")
            self.num_heads = channels // num_head_channels
        self.norm = _GroupNorm32(32, channels)
        self.qkv = nn.Conv1d(channels, channels * 3, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, *spatial = x.shape
        x = x.reshape(b, c, -1)
        n = x.shape[-1]
        qkv = self.qkv(self.norm(x)).reshape(b, self.num_heads, 3 * (c // self.num_heads), n).transpose(-1, -2)
        q, k, v = qkv.split(c // self.num_heads, dim=-1)  # each (b, heads, n, ch)
        a = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(ch)) v
        a = a.transpose(-1, -2).reshape(b, c, n)
        return (x + self.proj_out(a)).reshape(b, c, *spatial)


class _Downsample(nn.Module):
    """Stride-2 3x3 convolution (`Downsample(use_conv=True)`; parameter name `op`)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class _EmbSequential(nn.Sequential):
    """`TimestepEmbedSequential` for the encoder: residual blocks also get the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, _ResBlock) else layer(x)
        return x


# ---------------------------------------------------------------------------------------------- encoder

class TimeAwareEncoder(nn.Module):
    """StableSR's time-aware encoder (official `EncoderUNetModelWT`), official parameter names.

    `forward(z_lr, t)` -> {str(width): features (B, out_channels, h, w)} for the width of each level before
    its downsampling and of the middle block (for a 64x64 latent: '64', '32', '16', '8').
    """

    def __init__(self, in_channels: int = 4, model_channels: int = 256, out_channels: int = 256,
                 num_res_blocks: int = 2, attention_resolutions: Sequence[int] = (4, 2, 1),
                 channel_mult: Sequence[int] = (1, 1, 2, 2), num_heads: int = 4, num_head_channels: int = -1,
                 dropout: float = 0.0):
        super().__init__()
        self.model_channels = int(model_channels)
        self.out_channels = int(out_channels)
        emb = 4 * self.model_channels
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.input_blocks = nn.ModuleList([_EmbSequential(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        feature_chans = []
        ch, ds = model_channels, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [_ResBlock(ch, emb, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(_AttentionBlock(ch, num_heads, num_head_channels))
                self.input_blocks.append(_EmbSequential(*layers))
            if level != len(channel_mult) - 1:
                self.input_blocks.append(_EmbSequential(_Downsample(ch)))
                feature_chans.append(ch)
                ds *= 2
        self.middle_block = _EmbSequential(_ResBlock(ch, emb, ch, dropout),
                                           _AttentionBlock(ch, num_heads, num_head_channels),
                                           _ResBlock(ch, emb, ch, dropout))
        feature_chans.append(ch)
        self.fea_tran = nn.ModuleList([_ResBlock(c, emb, out_channels, dropout) for c in feature_chans])

    def forward(self, z_lr: torch.Tensor, t: Union[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        dtype = self.time_embed[0].weight.dtype
        t = _timesteps(t, z_lr.shape[0], z_lr.device)
        emb = self.time_embed(timestep_embedding(t, self.model_channels).to(dtype))
        h = z_lr.to(dtype)
        feats = []
        for block in self.input_blocks:
            prev = h
            h = block(h, emb)
            if h.shape[-1] != prev.shape[-1]:  # upstream keeps the input of every width change
                feats.append(prev)
        feats.append(self.middle_block(h, emb))
        if len(feats) != len(self.fea_tran):
            raise ValueError(f"a {tuple(z_lr.shape[-2:])} input gives {len(feats)} feature levels, "
                             f"the encoder has {len(self.fea_tran)}")
        return {str(f.shape[-1]): tran(f, emb) for f, tran in zip(feats, self.fea_tran)}


# ---------------------------------------------------------------------------------------------- SFT

class SFTLayer(nn.Module):
    """The official `SPADE(norm_nc=channels, label_nc=cond_channels)` ('spadeinstance3x3'): affine
    GroupNorm(32) of h, then * (1 + gamma(c)) + beta(c); c = struct_cond[str(h width)], 128 hidden channels."""

    def __init__(self, channels: int, cond_channels: int, hidden: int = 128, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.param_free_norm = _GroupNorm32(32, channels)
        self.mlp_shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, kernel_size, padding=pad), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, channels, kernel_size, padding=pad)
        self.mlp_beta = nn.Conv2d(hidden, channels, kernel_size, padding=pad)

    def forward(self, h: torch.Tensor, struct_cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        key = str(h.shape[-1])
        cond = struct_cond.get(key)
        if cond is None:
            raise KeyError(f"struct_cond has no features of width {key} (has {sorted(struct_cond)}); "
                           "encode the LR latent at the same size as the UNet input")
        if cond.shape[-2:] != h.shape[-2:]:
            raise ValueError(f"struct_cond['{key}'] is {tuple(cond.shape[-2:])}, the UNet features "
                             f"{tuple(h.shape[-2:])}")
        actv = self.mlp_shared(cond.to(self.mlp_gamma.weight.dtype))
        out = self.param_free_norm(h) * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)
        return out.to(h.dtype)


class _SFTHook:
    """Forward hook on a resnet's conv2: applies `layer` to its output while `owner` runs a forward."""

    def __init__(self, owner: "StableSRUNet", layer: SFTLayer):
        self.owner = owner
        self.layer = layer

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> Optional[torch.Tensor]:
        cond = self.owner._active_struct_cond()
        if cond is None:
            return None  # the UNet called on its own: plain output
        return self.layer(output, cond)


_RESNET_PATH = re.compile(r"^(down_blocks\.\d+\.resnets\.\d+|mid_block\.resnets\.\d+|up_blocks\.\d+\.resnets\.\d+)$")


def _resnet_paths(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    from diffusers.models.resnet import ResnetBlock2D

    out = []
    for name, mod in unet.named_modules():
        if isinstance(mod, ResnetBlock2D):
            if not _RESNET_PATH.match(name):
                raise ValueError(f"unexpected resnet {name} in the UNet (not the SD layout)")
            out.append((name, mod))
    return out


def _set_nested(root: nn.ModuleDict, path: str, module: nn.Module) -> None:
    node = root
    parts = path.split(".")
    for p in parts[:-1]:
        if p not in node:
            node[p] = nn.ModuleDict()
        node = node[p]
    node[parts[-1]] = module


# ---------------------------------------------------------------------------------------------- model

class StableSRUNet(nn.Module):
    """SD UNet (`unet`, diffusers) + time-aware encoder (`structcond`) + one SFT layer per resnet (`sft`).

    `forward(x, t, context, struct_cond)` is the official `UNetModelDualcondV2.forward(x, t, context,
    struct_cond)`: eps (or v) for the noisy latent `x` (B,4,H,W) at timesteps `t`, text context
    (B,L,cross_attention_dim), and `struct_cond = encode_struct(z_lr, t)` computed at the same spatial size.
    SFT names: `sft.<diffusers resnet path>.{param_free_norm,mlp_shared.0,mlp_gamma,mlp_beta}.*`.
    """

    def __init__(self, unet_config: Mapping[str, Any], encoder_config: Mapping[str, Any], semb_channels: int):
        super().__init__()
        from diffusers import UNet2DConditionModel

        if int(encoder_config.get("out_channels", semb_channels)) != int(semb_channels):
            raise ValueError("the encoder's out_channels must equal semb_channels")
        self.unet = UNet2DConditionModel(**dict(unet_config))
        enc = dict(encoder_config)
        # the encoder reads the LR latent: unless stated, as many channels as the UNet's latent (4 for SD)
        enc.setdefault("in_channels", int(self.unet.config.in_channels))
        self.structcond = TimeAwareEncoder(**enc)
        self.sft = nn.ModuleDict()
        self.semb_channels = int(semb_channels)
        self._conds: dict[int, Mapping[str, torch.Tensor]] = {}
        for path, resnet in _resnet_paths(self.unet):
            layer = SFTLayer(resnet.conv2.out_channels, self.semb_channels)
            _set_nested(self.sft, path, layer)
            resnet.conv2.register_forward_hook(_SFTHook(self, layer))

    def sft_paths(self) -> list[str]:
        """The diffusers resnet paths that carry an SFT layer, in module order."""
        return [p for p, _ in _resnet_paths(self.unet)]

    def _active_struct_cond(self) -> Optional[Mapping[str, torch.Tensor]]:
        return self._conds.get(threading.get_ident())

    def encode_struct(self, z_lr: torch.Tensor, t: Union[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The time-aware encoder's features of the (clean, scaled) LR latent at timesteps `t`."""
        return self.structcond(z_lr, t)

    def forward(self, x: torch.Tensor, t: Union[int, torch.Tensor], context: torch.Tensor,
                struct_cond: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(struct_cond, Mapping):
            raise TypeError("struct_cond must be the dict returned by encode_struct")
        if torch.is_grad_enabled() and getattr(self.unet, "is_gradient_checkpointing", False):
            # recomputation in backward would run without the struct condition (the hooks see none then)
            raise RuntimeError("gradient checkpointing of the UNet is not supported with the SFT hooks")
        t = _timesteps(t, x.shape[0], x.device)
        tid = threading.get_ident()
        had, prev = tid in self._conds, self._conds.get(tid)
        self._conds[tid] = struct_cond
        try:
            return self.unet(x, t, encoder_hidden_states=context, return_dict=False)[0]
        finally:
            if had:
                self._conds[tid] = prev  # type: ignore[assignment]
            else:
                self._conds.pop(tid, None)


# ---------------------------------------------------------------------------------------------- configs

def stablesr_unet_configs(variant: str = "sd21") -> tuple[dict[str, Any], dict[str, Any], int]:
    """(diffusers UNet config, TimeAwareEncoder config, semb_channels) for `variant`.

    "sd21": the released 512 model (configs/stableSRNew/v2-finetune_text_T_512.yaml): SD-2.1 UNet
    320/640/1280/1280, 64-channel heads, linear transformers, 1024-dim context; encoder 256 channels,
    mult 1,1,2,2, 2 res blocks, attention at 4,2,1, 4 heads; semb 256.  "tiny": the same layouts and block
    types at test width (UNet 32/64/128/128 with 16-channel heads, 32-dim context; encoder 32 channels;
    semb 32); 32 GroupNorm groups everywhere, as the official `normalization()` requires.
    """
    from .sd_configs import sd21_base_config

    unet = sd21_base_config()["unet"]
    enc = copy.deepcopy(SD21_ENCODER)
    semb = SD21_SEMB_CHANNELS
    if variant == "sd21":
        pass
    elif variant == "tiny":
        unet.update(block_out_channels=[32, 64, 128, 128], attention_head_dim=[2, 4, 8, 8], norm_num_groups=32,
                    cross_attention_dim=32, sample_size=32)
        enc.update(model_channels=32, out_channels=32)
        semb = 32
    else:
        raise ValueError(f"unknown StableSR UNet variant {variant!r} (sd21, tiny)")
    return unet, enc, semb


Configs = Union[str, Sequence[Any]]


def _configs(configs: Configs) -> tuple[dict[str, Any], dict[str, Any], int]:
    if isinstance(configs, str):
        return stablesr_unet_configs(configs)
    unet, enc, semb = configs
    return dict(unet), dict(enc), int(semb)


def build_stablesr_unet(configs: Configs = "sd21", *, device: Union[str, torch.device, None] = None,
                        dtype: Optional[torch.dtype] = None) -> StableSRUNet:
    """A `StableSRUNet` (randomly initialised) for a variant name or a `stablesr_unet_configs` triple.

    `device="meta"` builds it without materialising any weight (names and shapes only).
    """
    unet, enc, semb = _configs(configs)
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            model = StableSRUNet(unet, enc, semb)
    else:
        model = StableSRUNet(unet, enc, semb)
        if device is not None:
            model = model.to(device)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


# ---------------------------------------------------------------------------------------------- names

# LDM ResBlock(Dual) sub-module -> diffusers ResnetBlock2D sub-module
_RESNET_NAMES = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
                 "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_RESNET_NAMES_INV = {v: k for k, v in _RESNET_NAMES.items()}


def _module_pairs(unet_config: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(LDM module path, diffusers module path, kind) for an SD-layout UNet; kind in {"same", "resnet"}.

    The LDM UNet numbers its blocks flatly: input_blocks.0 is conv_in, then per level `n` res blocks
    (each optionally followed by its transformer at index .1) and, except on the last level, a
    downsampler; middle_block = (res, transformer, res); output_blocks hold `n + 1` res blocks per level
    (deepest first), the last of each level except the top followed by the upsampler.
    """
    n = unet_config.get("layers_per_block", 2)
    if not isinstance(n, int):
        raise ValueError("only an int layers_per_block has an LDM counterpart")
    down = list(unet_config["down_block_types"])
    up = list(unet_config["up_block_types"])
    levels = len(down)
    pairs = [("time_embed.0", "time_embedding.linear_1", "same"), ("time_embed.2", "time_embedding.linear_2", "same"),
             ("input_blocks.0.0", "conv_in", "same")]
    for lv in range(levels):
        attn = down[lv].startswith("CrossAttn")
        for j in range(n):
            idx = 1 + lv * (n + 1) + j
            pairs.append((f"input_blocks.{idx}.0", f"down_blocks.{lv}.resnets.{j}", "resnet"))
            if attn:
                pairs.append((f"input_blocks.{idx}.1", f"down_blocks.{lv}.attentions.{j}", "same"))
        if lv < levels - 1:
            pairs.append((f"input_blocks.{(lv + 1) * (n + 1)}.0.op", f"down_blocks.{lv}.downsamplers.0.conv", "same"))
    pairs += [("middle_block.0", "mid_block.resnets.0", "resnet"), ("middle_block.1", "mid_block.attentions.0", "same"),
              ("middle_block.2", "mid_block.resnets.1", "resnet")]
    for k in range(levels):
        attn = up[k].startswith("CrossAttn")
        for i in range(n + 1):
            idx = k * (n + 1) + i
            pairs.append((f"output_blocks.{idx}.0", f"up_blocks.{k}.resnets.{i}", "resnet"))
            if attn:
                pairs.append((f"output_blocks.{idx}.1", f"up_blocks.{k}.attentions.{i}", "same"))
            if k < levels - 1 and i == n:
                pairs.append((f"output_blocks.{idx}.{2 if attn else 1}.conv", f"up_blocks.{k}.upsamplers.0.conv",
                              "same"))
    pairs += [("out.0", "conv_norm_out", "same"), ("out.2", "conv_out", "same")]
    return pairs


def _config_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=list)


@functools.lru_cache(maxsize=8)
def _reference(config_key: str, spade: bool) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, tuple], ...]]:
    """(ldm name -> our name pairs, our name -> shape) for a config, from a meta-device model."""
    unet_cfg, enc_cfg, semb = json.loads(config_key)
    if spade:
        model = build_stablesr_unet((unet_cfg, enc_cfg, semb), device="meta")
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        unet_prefix = "unet."
    else:
        from diffusers import UNet2DConditionModel

        with torch.device("meta"):
            model = UNet2DConditionModel(**unet_cfg)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        unet_prefix = ""
    mapping: dict[str, str] = {}
    by_module = {}
    for ldm_path, diff_path, kind in _module_pairs(unet_cfg):
        by_module[unet_prefix + diff_path + "."] = (ldm_path, kind)
    for name in ours:
        if spade and name.startswith("structcond."):
            mapping[STRUCT_PREFIX + name[len("structcond."):]] = name
            continue
        if spade and name.startswith("sft."):
            rest = name[len("sft."):]
            path = ".".join(rest.split(".")[:4 if rest.startswith(("down_blocks", "up_blocks")) else 3])
            ldm_path, kind = by_module["unet." + path + "."]
            mapping[UNET_PREFIX + ldm_path + ".spade." + rest[len(path) + 1:]] = name
            continue
        hit = [p for p in by_module if name.startswith(p)]
        if len(hit) != 1:
            raise RuntimeError(f"no LDM counterpart rule for {name}")  # a layout this rule does not know
        ldm_path, kind = by_module[hit[0]]
        suffix = name[len(hit[0]):]
        if kind == "resnet":
            head, _, tail = suffix.rpartition(".")
            if head not in _RESNET_NAMES_INV:
                raise RuntimeError(f"no LDM counterpart rule for {name}")
            suffix = _RESNET_NAMES_INV[head] + "." + tail
        mapping[UNET_PREFIX + ldm_path + "." + suffix] = name
    if len(set(mapping.values())) != len(ours):
        raise RuntimeError("the LDM key map is not one-to-one")
    return tuple(mapping.items()), tuple(ours.items())


def ldm_unet_key_map(configs: Configs = "sd21", *, spade: bool = True) -> dict[str, str]:
    """The explicit official -> ours key map for a layout: {"model.diffusion_model.<ldm name>" or
    "structcond_stage_model.<name>": our state-dict name}.  `spade=False`: a plain SD UNet
    (`UNetModel`), mapped to `UNet2DConditionModel` names (no `unet.` prefix); `configs` may then also be a
    diffusers UNet config dict."""
    return dict(_reference(_ref_key(configs, spade), spade)[0])


def _ref_key(configs: Any, spade: bool) -> str:
    if not spade and isinstance(configs, Mapping):
        return _config_key([dict(configs), {}, 0])
    unet, enc, semb = _configs(configs)
    return _config_key([unet, enc if spade else {}, semb if spade else 0])


def _few(names: Iterable[str], limit: int = 12) -> str:
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _convert(state_dict: Mapping[str, torch.Tensor], configs: Any, spade: bool,
             ignore_prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    pairs, shapes = _reference(_ref_key(configs, spade), spade)
    key_map, shapes = dict(pairs), dict(shapes)
    out: dict[str, torch.Tensor] = {}
    source: dict[str, str] = {}
    unexpected = []
    ignore = tuple(ignore_prefixes)
    for key, value in state_dict.items():
        if ignore and key.startswith(ignore):
            continue
        full = key if key.startswith((UNET_PREFIX, STRUCT_PREFIX)) else UNET_PREFIX + key
        ours = key_map.get(full)
        if ours is None:
            unexpected.append(key)
            continue
        if ours in out:
            raise ValueError(f"{key} and {source[ours]} are the same parameter (given twice)")
        out[ours], source[ours] = value, key
    missing = [k for k, v in key_map.items() if v not in out]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_few(unexpected)}")
        raise ValueError("state dict does not fit the StableSR UNet layout: " + "; ".join(parts))
    bad = [f"{source[k]} {tuple(v.shape)} (expected {shapes[k]} for {k})"
           for k, v in out.items() if tuple(v.shape) != shapes[k]]
    if bad:
        raise ValueError(f"shape mismatch in {len(bad)} tensors: " + "; ".join(sorted(bad)[:12]))
    return out


def convert_ldm_unet(state_dict: Mapping[str, torch.Tensor], configs: Configs = "sd21", *,
                     ignore_prefixes: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Official StableSR names -> `StableSRUNet.state_dict()` names, strictly.

    Keys: `model.diffusion_model.*` (or the same names bare) for the UNet incl. `.spade.`, and
    `structcond_stage_model.*` for the encoder.  Keys starting with one of `ignore_prefixes` are dropped
    first (e.g. ("first_stage_model.", "cond_stage_model.") and the schedule buffers of a full Lightning
    checkpoint); any other key that has no place raises, as do missing keys (both listed by name) and
    shape mismatches.  Tensors are passed through (no copy, dtype kept).
    """
    return _convert(state_dict, configs, True, ignore_prefixes)


def convert_ldm_sd_unet(state_dict: Mapping[str, torch.Tensor], unet_config: Union[str, Mapping[str, Any]] = "sd21",
                        *, ignore_prefixes: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """A plain SD-2.x LDM UNet (`model.diffusion_model.*` or bare names, no `.spade.`) -> diffusers
    `UNet2DConditionModel` names, strictly.  `unet_config`: a variant name (its UNet part) or a diffusers
    UNet config dict (e.g. `mini_sd_config()["unet"]`)."""
    cfg = stablesr_unet_configs(unet_config)[0] if isinstance(unet_config, str) else dict(unet_config)
    return _convert(state_dict, cfg, False, ignore_prefixes)
