"""RAM's image-tagging path (Swin encoder + Query2Label head) with DAPE's LoRA, as OSEDiff runs it.

OSEDiff's `test_osediff.py` (cswry/OSEDiff) builds `ram(pretrained=ram_swin_large_14m.pth,
pretrained_condition=DAPE.pth, image_size=384, vit='swin_l')` from its modified `ram` package
(`ram/models/ram_lora.py`, `swin_transformer_lora.py`, `bert_lora.py`; the same package as SeeSR's) and
calls `generate_tag`.  This module is our implementation of that tagging path only:

* `visual_encoder`: Swin (config `ram/configs/swin/config_swinL_384.json`: image 384, patch 4, embed 192,
  depths 2-2-18-2, heads 6-12-24-48, window 12, mlp ratio 4, qkv bias, patch norm, no absolute position
  embedding; a stage whose resolution is <= the window uses one unshifted window of that size, so Swin-L/384's
  last stage (12 x 12) is not shifted); the output is the token mean (the "cls" token) followed by the tokens,
  after the final LayerNorm.  Each block's `attn.qkv` is loralib's `MergedLinear(r=8,
  enable_lora=[True, False, True])`: a rank-8 update of the query and value rows, none on the keys.
* `image_proj` (vision width -> 512), `label_embed` (classes x 512), `wordvec_proj` (512 -> 768) + ReLU.
* `tagging_head`: BERT (`q2l_config.json`: hidden 768, 4 heads, intermediate 3072, 2 layers, GELU (erf),
  LayerNorm eps 1e-12, key/value width 512) with its embeddings and self-attention deleted
  (`del_selfattention`): each layer is cross-attention from the label queries to the image tokens (all
  attended, mask all ones) + feed-forward.  `crossattention.self.query` / `.key` are loralib `Linear(r=8)`.
* `fc` (768 -> 1): logits; a tag is on when sigmoid(logit) > its class threshold (strictly), thresholds from
  `ram_tag_list_threshold.txt` (a value v becomes v if v > 0.9 else min(v + 0, 0.9), i.e. v for the shipped
  file), and the chosen tags are joined with ", " in class order (ram_lora's `generate_tag`; the original
  RAM joins with " | ").

LoRA: loralib's scaling is lora_alpha / r = 1 / 8, and `model.eval()` merges every LoRA into its weight.
Upstream ties the weights of `tag_encoder` layers 0-1 (the caption branch) to the tagging head's
(`tie_encoder_decoder_weights`), but not their LoRA factors, so the merge at `eval()` adds the tag encoder's
`crossattention.self.query/key` LoRA updates of those layers to the tagging head's weights too (zero for
DAPE.pth, whose untrained tag-encoder `lora_B` stay zero; mirrored by `load_ram_weights` anyway).

Weights: parameter names are the official state-dict names (`load_ram_weights` maps the checkpoints
explicitly, lists what it skips and fails on anything else).  `ram_swin_large_14m.pth` is a dict whose
"model" holds the whole RAM (the caption branch `tag_encoder.*` / `text_decoder.*` is skipped; older
files name the head `vision_multi.*`, renamed as upstream); `DAPE.pth` is a flat dict of every "lora_"
tensor of the fine-tuned model (SeeSR's `DAPEModel.lora_state_dict`).  The code is ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..types import WeightsUnavailable

__all__ = ["RAMConfig", "RAM", "RAM_SWIN_L_384", "IMAGENET_MEAN", "IMAGENET_STD", "ram_preprocess",
           "class_thresholds", "select_tags", "join_tags", "load_ram_weights", "RAMLoadReport",
           "SKIPPED_PREFIXES"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SKIPPED_PREFIXES = ("tag_encoder.", "text_decoder.")  # the caption branch: not on the tagging path


@dataclass(frozen=True)
class RAMConfig:
    """Sizes of the tagging path; the defaults are RAM Swin-L/384 + q2l_config.json (what OSEDiff runs)."""

    image_size: int = 384
    patch_size: int = 4
    embed_dim: int = 192
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (6, 12, 24, 48)
    window_size: int = 12
    mlp_ratio: float = 4.0
    embed_width: int = 512  # image_proj output / label_embed width (hard-coded 512 upstream)
    hidden_size: int = 768
    num_attention_heads: int = 4
    intermediate_size: int = 3072
    num_hidden_layers: int = 2
    layer_norm_eps: float = 1e-12
    num_classes: int = 4585
    lora_rank: int = 8  # loralib r of ram_lora (0: the plain RAM, no LoRA parameters)
    lora_alpha: float = 1.0  # loralib's default; scaling = lora_alpha / r

    @property
    def vision_width(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def lora_scaling(self) -> float:
        return self.lora_alpha / self.lora_rank if self.lora_rank > 0 else 0.0


RAM_SWIN_L_384 = RAMConfig()


# --------------------------------------------------------------------------------------------
# preprocessing and tag selection


def ram_preprocess(img: torch.Tensor, size: int = 384, *, antialias: bool = False) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> the RAM input (N, 3, size, size).

    `test_osediff.py`'s `ram_transforms` on the `ToTensor()` image: `Resize((384, 384))` on a tensor, which
    with OSEDiff's pinned torch 2.0.1 / torchvision 0.15 is bilinear, align_corners=False and no antialias
    (the default `antialias=None` means False for tensors before torchvision 0.17), then ImageNet `Normalize`.
    """
    x = img.float()
    if tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=antialias)
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def class_thresholds(values: Sequence[float], num_classes: int, *, threshold: float = 0.68,
                     max_threshold: float = 0.9, add_threshold: float = 0.0) -> torch.Tensor:
    """ram_lora's `class_threshold`: `threshold` for every class, then per line v of
    ram_tag_list_threshold.txt: v if v > max_threshold else min(v + add_threshold, max_threshold)."""
    if len(values) > num_classes:
        raise ValueError(f"{len(values)} thresholds for {num_classes} tags")
    t = torch.full((num_classes,), float(threshold))
    for i, v in enumerate(values):
        v = float(v)
        t[i] = v if v > max_threshold else min(v + add_threshold, max_threshold)
    return t


def select_tags(probs: torch.Tensor, thresholds: torch.Tensor, tag_list: Sequence[str],
                delete_index: Sequence[int] = ()) -> list[list[str]]:
    """Per image, the tags whose probability is strictly above their threshold, in class order
    (ram_lora's `generate_tag`; `delete_tag_index` classes are never chosen)."""
    on = probs.float().cpu() > thresholds.float().cpu()
    if len(delete_index):
        on[:, list(delete_index)] = False
    return [[tag_list[int(i)] for i in torch.nonzero(row).flatten()] for row in on]


def join_tags(tags: Sequence[str]) -> str:
    """ram_lora's `generate_tag` joins with ", " (the original RAM's " | " is commented out there)."""
    return ", ".join(tags)


# --------------------------------------------------------------------------------------------
# LoRA layers (loralib's parameter names and maths; the update is folded in by `merge_lora_`)


class LoRALinear(nn.Linear):
    """nn.Linear + `lora_A` (r, in), `lora_B` (out, r): y = x (W + s B A)^T + b (loralib `Linear`)."""

    def __init__(self, in_features: int, out_features: int, r: int, scaling: float):
        super().__init__(in_features, out_features)
        self.r, self.scaling, self.merged = int(r), float(scaling), False
        if self.r > 0:
            self.lora_A = nn.Parameter(torch.zeros(self.r, in_features))
            self.lora_B = nn.Parameter(torch.zeros(out_features, self.r))

    def delta(self) -> torch.Tensor:
        return (self.lora_B @ self.lora_A) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r > 0 and not self.merged:
            return F.linear(x, self.weight + self.delta().to(self.weight.dtype), self.bias)
        return F.linear(x, self.weight, self.bias)


class LoRAQKV(nn.Linear):
    """Swin's qkv as loralib `MergedLinear(dim, 3 dim, r, enable_lora=[True, False, True])`: `lora_A`
    (2r, dim) and `lora_B` (2 dim, r) hold one rank-r update for the query rows and one for the value
    rows (a grouped product), the key rows get none."""

    def __init__(self, dim: int, r: int, scaling: float):
        super().__init__(dim, 3 * dim)
        self.dim, self.r, self.scaling, self.merged = dim, int(r), float(scaling), False
        if self.r > 0:
            self.lora_A = nn.Parameter(torch.zeros(2 * self.r, dim))
            self.lora_B = nn.Parameter(torch.zeros(2 * dim, self.r))

    def delta(self) -> torch.Tensor:
        r, d = self.r, self.dim
        dq = self.lora_B[:d] @ self.lora_A[:r]
        dv = self.lora_B[d:] @ self.lora_A[r:]
        return torch.cat([dq, torch.zeros_like(dq), dv], 0) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.r > 0 and not self.merged:
            return F.linear(x, self.weight + self.delta().to(self.weight.dtype), self.bias)
        return F.linear(x, self.weight, self.bias)


# --------------------------------------------------------------------------------------------
# Swin encoder


def _relative_position_index(w: int) -> torch.Tensor:
    """(w*w, w*w) index into the (2w-1)^2 bias table: (dy + w - 1) * (2w - 1) + (dx + w - 1)."""
    ys, xs = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (w - 1)
    dx = xs[:, None] - xs[None, :] + (w - 1)
    return dy * (2 * w - 1) + dx


def _windows(x: torch.Tensor, w: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, nW, w*w, C), windows in row-major order."""
    B, H, W_, C = x.shape
    x = x.view(B, H // w, w, W_ // w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, (H // w) * (W_ // w), w * w, C)


def _unwindows(x: torch.Tensor, w: int, H: int, W_: int) -> torch.Tensor:
    B, C = x.shape[0], x.shape[-1]
    x = x.view(B, H // w, W_ // w, w, w, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(B, H, W_, C)


def _shift_mask(H: int, W_: int, w: int, s: int) -> torch.Tensor:
    """(nW, w*w, w*w) additive mask of the shifted windows: -100 between tokens that came from different
    regions of the rolled image (3 x 3 regions cut at -w and -s on each axis), else 0."""
    region = torch.zeros(H, W_)
    cuts_h = (0, H - w, H - s, H)
    cuts_w = (0, W_ - w, W_ - s, W_)
    label = 0
    for i in range(3):
        for j in range(3):
            region[cuts_h[i]:cuts_h[i + 1], cuts_w[j]:cuts_w[j + 1]] = label
            label += 1
    r = _windows(region.view(1, H, W_, 1), w)[0, :, :, 0]  # nW, w*w
    diff = r[:, None, :] - r[:, :, None]
    return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))


class WindowAttention(nn.Module):
    def __init__(self, dim: int, window: int, heads: int, r: int, scaling: float):
        super().__init__()
        self.heads, self.window = heads, window
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        self.register_buffer("relative_position_index", _relative_position_index(window), persistent=False)
        self.qkv = LoRAQKV(dim, r, scaling)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x: (B, nW, N, C); mask: (nW, N, N) or None."""
        B, nW, N, C = x.shape
        h = self.heads
        q, k, v = self.qkv(x).view(B, nW, N, 3, h, C // h).permute(3, 0, 1, 4, 2, 5).unbind(0)  # B nW h N d
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(N, N, h).permute(2, 0, 1)  # h N N
        if mask is not None:
            bias = bias[None] + mask[:, None].to(bias.dtype)  # nW h N N
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        return self.proj(out.transpose(2, 3).reshape(B, nW, N, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwinBlock(nn.Module):
    def __init__(self, dim: int, resolution: int, heads: int, window: int, shift: int, mlp_ratio: float,
                 r: int, scaling: float):
        super().__init__()
        if resolution <= window:  # one window covers the map: no partition, no shift (as upstream)
            window, shift = resolution, 0
        self.resolution, self.window, self.shift = resolution, window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, window, heads, r, scaling)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        mask = _shift_mask(resolution, resolution, window, shift) if shift > 0 else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H = W_ = self.resolution
        w, s = self.window, self.shift
        y = self.norm1(x).view(B, H, W_, C)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = _unwindows(self.attn(_windows(y, w), self.attn_mask), w, H, W_)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        x = x + y.reshape(B, L, C)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim: int, resolution: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, C = x.shape
        H = W_ = self.resolution
        x = x.view(B, H, W_, C)
        # channel order (even row, even col), (odd, even), (even, odd), (odd, odd), as upstream
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x.view(B, -1, 4 * C)))


class SwinStage(nn.Module):
    def __init__(self, dim: int, resolution: int, depth: int, heads: int, window: int, mlp_ratio: float,
                 downsample: bool, r: int, scaling: float):
        super().__init__()
        self.blocks = nn.ModuleList([
            SwinBlock(dim, resolution, heads, window, 0 if i % 2 == 0 else window // 2, mlp_ratio, r, scaling)
            for i in range(depth)])
        self.downsample = PatchMerging(dim, resolution) if downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class PatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class SwinEncoder(nn.Module):
    """(N, 3, S, S) -> (N, 1 + L, vision_width): [token mean, tokens] after the final LayerNorm."""

    def __init__(self, cfg: RAMConfig):
        super().__init__()
        if cfg.image_size % cfg.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        self.image_size = cfg.image_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        res = cfg.image_size // cfg.patch_size
        n = len(cfg.depths)
        self.layers = nn.ModuleList([
            SwinStage(cfg.embed_dim * 2 ** i, res // 2 ** i, cfg.depths[i], cfg.num_heads[i], cfg.window_size,
                      cfg.mlp_ratio, i < n - 1, cfg.lora_rank, cfg.lora_scaling) for i in range(n)])
        self.norm = nn.LayerNorm(cfg.vision_width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"RAM takes {self.image_size}x{self.image_size} inputs, got {tuple(x.shape[-2:])}")
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return torch.cat([x.mean(1, keepdim=True), x], 1)


# --------------------------------------------------------------------------------------------
# Query2Label tagging head (BERT cross-attention layers without embeddings or self-attention)


class _Output(nn.Module):
    """BERT's `dense` + residual `LayerNorm` (BertSelfOutput / BertOutput)."""

    def __init__(self, n_in: int, n_out: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _CrossSelf(nn.Module):
    def __init__(self, cfg: RAMConfig):
        super().__init__()
        r, s = cfg.lora_rank, cfg.lora_scaling
        self.heads = cfg.num_attention_heads
        self.query = LoRALinear(cfg.hidden_size, cfg.hidden_size, r, s)
        self.key = LoRALinear(cfg.embed_width, cfg.hidden_size, r, s)
        self.value = nn.Linear(cfg.embed_width, cfg.hidden_size)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        B, Lq, D = x.shape
        h = self.heads

        def split(t):
            return t.view(B, t.shape[1], h, D // h).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(self.query(x)), split(self.key(enc)), split(self.value(enc)))
        return out.transpose(1, 2).reshape(B, Lq, D)


class _CrossAttention(nn.Module):
    def __init__(self, cfg: RAMConfig):
        super().__init__()
        self.self = _CrossSelf(cfg)
        self.output = _Output(cfg.hidden_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x, enc), x)


class _Intermediate(nn.Module):
    def __init__(self, cfg: RAMConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # transformers' "gelu" = the erf form


class _TagLayer(nn.Module):
    def __init__(self, cfg: RAMConfig):
        super().__init__()
        self.crossattention = _CrossAttention(cfg)
        self.intermediate = _Intermediate(cfg)
        self.output = _Output(cfg.intermediate_size, cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, enc: torch.Tensor) -> torch.Tensor:
        a = self.crossattention(x, enc)
        return self.output(self.intermediate(a), a)


class _TagEncoder(nn.Module):
    def __init__(self, cfg: RAMConfig):
        super().__init__()
        self.layer = nn.ModuleList([_TagLayer(cfg) for _ in range(cfg.num_hidden_layers)])


class _TaggingHead(nn.Module):
    def __init__(self, cfg: RAMConfig):
        super().__init__()
        self.encoder = _TagEncoder(cfg)

    def forward(self, queries: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        x = queries
        for layer in self.encoder.layer:
            x = layer(x, image_embeds)
        return x


# --------------------------------------------------------------------------------------------
# the model


class RAM(nn.Module):
    """RAM's tagging path with the official parameter names (see the module docstring).

    `forward(x)` takes preprocessed images (N, 3, S, S) (`ram_preprocess`) and returns the logits
    (N, num_classes); `image_embeds(x)` is `image_proj(visual_encoder(x))`.  The class thresholds are
    not part of it (upstream keeps them as a plain fp32 tensor outside the state dict): `class_thresholds`.
    """

    def __init__(self, cfg: RAMConfig = RAM_SWIN_L_384):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = SwinEncoder(cfg)
        self.image_proj = nn.Linear(cfg.vision_width, cfg.embed_width)
        self.label_embed = nn.Parameter(torch.zeros(cfg.num_classes, cfg.embed_width))
        self.wordvec_proj = (nn.Linear(cfg.embed_width, cfg.hidden_size) if cfg.hidden_size != cfg.embed_width
                             else nn.Identity())
        self.tagging_head = _TaggingHead(cfg)
        self.fc = nn.Linear(cfg.hidden_size, 1)

    def lora_modules(self) -> dict[str, nn.Module]:
        return {n: m for n, m in self.named_modules() if isinstance(m, (LoRALinear, LoRAQKV)) and m.r > 0}

    @torch.no_grad()
    def merge_lora_(self, extra: Optional[Mapping[str, torch.Tensor]] = None) -> "RAM":
        """Fold every LoRA update into its weight (what loralib does at `model.eval()`); `extra` maps a
        module name to a further weight update folded in with it (the tied tag-encoder LoRA, see
        `load_ram_weights`).  Idempotent."""
        extra = dict(extra or {})
        for name, m in self.lora_modules().items():
            if m.merged:
                continue
            d = m.delta().float() + extra.pop(name, torch.zeros((), device=m.weight.device)).float()
            m.weight.add_(d.to(m.weight.dtype))
            m.merged = True
        if extra:
            raise KeyError(f"no LoRA module for {sorted(extra)}")
        return self

    def image_embeds(self, x: torch.Tensor) -> torch.Tensor:
        return self.image_proj(self.visual_encoder(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.image_embeds(x)
        q = F.relu(self.wordvec_proj(self.label_embed)).to(emb.dtype)
        q = q.unsqueeze(0).expand(emb.shape[0], -1, -1)
        return self.fc(self.tagging_head(q, emb)).squeeze(-1)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))


# --------------------------------------------------------------------------------------------
# loading

_TIED_LORA = re.compile(r"^tag_encoder\.encoder\.layer\.(\d+)\.crossattention\.self\.(query|key)\.(lora_[AB])$")


@dataclass
class RAMLoadReport:
    """What `load_ram_weights` did: tensors copied, LoRA source, keys skipped on purpose (by reason)."""

    loaded: int = 0
    lora: str = "none"  # "none" (zero updates: the plain RAM), or the file the LoRA came from
    skipped: dict[str, list[str]] = field(default_factory=dict)
    tied: list[str] = field(default_factory=list)  # tag-encoder LoRA folded into the tagging head

    def skip(self, why: str, key: str) -> None:
        self.skipped.setdefault(why, []).append(key)


def _few(xs: Sequence[str], n: int = 6) -> str:
    return ", ".join(list(xs)[:n]) + (f" ... (+{len(xs) - n})" if len(xs) > n else "")


def load_ram_weights(model: RAM, ram_sd: Mapping[str, torch.Tensor],
                     condition_sd: Optional[Mapping[str, torch.Tensor]] = None, *,
                     what: str = "ram_swin_large_14m.pth", condition_what: str = "DAPE.pth",
                     merge: bool = True) -> RAMLoadReport:
    """Copy the RAM checkpoint and DAPE's LoRA (`condition_sd`, optional) into `model`, strictly.

    Mirrors `ram()` of ram_lora.py: the RAM state dict ("vision_multi." renamed "tagging_head."), then
    the condition state dict over it (upstream: `load_state_dict(strict=False)` twice), then the LoRA
    merge of `model.eval()`.  Key map: our names are the official ones; checkpoint keys are
    - used: every non-LoRA tensor of `model` must come from `ram_sd` (or `condition_sd`), same shape;
    - LoRA: with `condition_sd`, every `lora_A`/`lora_B` of the model must be in it (without it the
      updates stay zero: loralib's `lora_B` starts at zero); the tag encoder's
      `layer.<i>.crossattention.self.{query,key}.lora_*` of the tied layers are folded in too (see module doc);
    - skipped, listed in the report: the caption branch (`tag_encoder.*`, `text_decoder.*`) and the Swin
      buffers `relative_position_index` / `attn_mask` (rebuilt here, deleted by upstream's loader too);
    - anything else (or a shape mismatch, or a missing tensor) raises WeightsUnavailable naming the keys.
    """
    report = RAMLoadReport()
    target = model.state_dict()
    lora_names = {k for k in target if k.rsplit(".", 1)[-1] in ("lora_A", "lora_B")}
    base_names = [k for k in target if k not in lora_names]
    src: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    tied_src: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    n_layers = model.cfg.num_hidden_layers

    def take(sd: Mapping[str, torch.Tensor], label: str) -> None:
        for k0, v in sd.items():
            k = "tagging_head." + k0[len("vision_multi."):] if k0.startswith("vision_multi.") else k0
            if not isinstance(v, torch.Tensor):
                continue
            if k in target:
                src[k], origin[k] = v, label
                continue
            m = _TIED_LORA.match(k)
            if m and int(m.group(1)) < n_layers and model.cfg.lora_rank > 0:
                tied_src[k] = v
                continue
            if k.startswith(SKIPPED_PREFIXES):
                report.skip("caption branch (tag_encoder / text_decoder), not used for tagging", k)
            elif k.startswith("visual_encoder.") and k.endswith((".relative_position_index", ".attn_mask")):
                report.skip("Swin buffer rebuilt from the config", k)
            else:
                unexpected.append(f"{label}: {k0}")

    take(ram_sd, what)
    if condition_sd is not None:
        take(condition_sd, condition_what)
        report.lora = condition_what
    missing = [k for k in base_names if k not in src]
    if condition_sd is not None:
        missing += [k for k in sorted(lora_names) if k not in src]
    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}" for k, v in src.items()
           if tuple(v.shape) != tuple(target[k].shape)]
    for k, v in tied_src.items():
        own = k.replace("tag_encoder.", "tagging_head.", 1)
        if own in target and tuple(v.shape) != tuple(target[own].shape):
            bad.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[own].shape)}")
    if missing or unexpected or bad:
        parts = ([f"missing {len(missing)}: {_few(missing)}"] if missing else []) + \
                ([f"unexpected {len(unexpected)}: {_few(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatch {len(bad)}: {_few(bad)}"] if bad else [])
        raise WeightsUnavailable(f"the RAM/DAPE weights ({what}" + (f" + {condition_what}" if condition_sd is not None
                                                                    else "") +
                                 ") do not fit the tagging model: " + "; ".join(parts))
    with torch.no_grad():
        for k, t in target.items():
            if k in src:
                t.copy_(src[k].to(dtype=t.dtype))
                report.loaded += 1
            elif k in lora_names:
                t.zero_()
    extra: dict[str, torch.Tensor] = {}
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in tied_src.items():
        mod = k.replace("tag_encoder.", "tagging_head.", 1).rsplit(".", 1)[0]
        pairs.setdefault(mod, {})[k.rsplit(".", 1)[1]] = v.float()
    for mod, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise WeightsUnavailable(f"{condition_what}: the tied tag-encoder LoRA of {mod} lacks "
                                     f"{'lora_B' if 'lora_A' in ab else 'lora_A'}")
        extra[mod] = (ab["lora_B"] @ ab["lora_A"]) * model.cfg.lora_scaling
        report.tied.append(mod)
    if merge:
        model.merge_lora_(extra)
    elif extra:
        raise ValueError("the tied tag-encoder LoRA is only applied by merging (merge=True)")
    return report
