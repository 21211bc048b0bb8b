"""The OpenCLIP ViT-H/14 text tower that StableSR conditions its UNet on, with OpenCLIP's names.

StableSR's cross-attention context is `FrozenOpenCLIPEmbedder(layer="penultimate")`
(ldm/modules/encoders/modules.py of IceClear/StableSR, on open_clip_torch 2.0.2): tokens ->
`token_embedding` + `positional_embedding` -> the first L-1 of the L pre-LN residual blocks
(`text_transformer_forward` stops one block early for "penultimate"; "last" runs all) with a causal
mask -> `ln_final`, giving (B, 77, width); `text_projection` and pooling are not used.  Each block
(OpenCLIP `ResidualAttentionBlock`): x = x + MHA(ln_1(x)) (nn.MultiheadAttention, fused
`attn.in_proj_weight/bias`, `attn.out_proj`, causal additive -inf mask above the diagonal);
x = x + c_proj(GELU(c_fc(ln_2(x)))) (exact-erf GELU, 4x width).  ViT-H/14: width 1024, 24 layers,
16 heads (head width 64), context 77, vocabulary 49408.  The official samplers always use the empty
prompt "", which OpenCLIP's tokenizer turns into [49406 (<start_of_text>), 49407 (<end_of_text>), 0 x 75]
(open_clip `SimpleTokenizer`: 256 byte tokens + 256 byte</w> tokens + 48894 merges = 49406, then the
two specials; `tokenize` pads with 0), so `empty_prompt_embedding` computes that one (1, 77, width)
tensor once from the checkpoint's `cond_stage_model.model.*` weights.  The code is ours.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Mapping, Optional

import torch
from torch import nn

__all__ = ["OpenCLIPTextTower", "empty_prompt_tokens", "empty_prompt_embedding", "infer_text_config",
           "SOT_TOKEN", "EOT_TOKEN", "CONTEXT_LENGTH", "VOCAB_SIZE"]

SOT_TOKEN = 49406
EOT_TOKEN = 49407
CONTEXT_LENGTH = 77
VOCAB_SIZE = 49408
_LAYER_SKIP = {"last": 0, "penultimate": 1}


class _ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer block with OpenCLIP parameter names (ln_1, attn, ln_2, mlp.c_fc, mlp.c_proj)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.resblocks = nn.ModuleList([_ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers)])


class OpenCLIPTextTower(nn.Module):
    """OpenCLIP text transformer; `state_dict()` names equal OpenCLIP's (`cond_stage_model.model.` stripped).

    forward(tokens (B, context_length) int64, layer="penultimate"|"last") -> (B, context_length, width)
    float, as `FrozenOpenCLIPEmbedder.encode_with_transformer`.
    """

    def __init__(self, width: int = 1024, layers: int = 24, heads: int = 16, context_length: int = CONTEXT_LENGTH,
                 vocab_size: int = VOCAB_SIZE, mlp_ratio: float = 4.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.width, self.layers, self.heads, self.context_length = width, layers, heads, context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.zeros(context_length, width))
        self.transformer = _Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        mask = torch.full((context_length, context_length), float("-inf")).triu_(1)
        self.register_buffer("attn_mask", mask, persistent=False)

    def forward(self, tokens: torch.Tensor, layer: str = "penultimate") -> torch.Tensor:
        if layer not in _LAYER_SKIP:
            raise ValueError(f"layer must be one of {sorted(_LAYER_SKIP)}, got {layer!r}")
        if tokens.dim() != 2 or tokens.shape[1] != self.context_length:
            raise ValueError(f"tokens must be (B, {self.context_length}), got {tuple(tokens.shape)}")
        x = self.token_embedding(tokens) + self.positional_embedding
        mask = self.attn_mask.to(x.dtype)
        for block in self.transformer.resblocks[: self.layers - _LAYER_SKIP[layer]]:
            x = block(x, mask)
        return self.ln_final(x)


def empty_prompt_tokens(context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """OpenCLIP's tokenisation of "": (1, context_length) int64 = [49406, 49407, 0, ...]."""
    t = torch.zeros(1, context_length, dtype=torch.long)
    t[0, 0], t[0, 1] = SOT_TOKEN, EOT_TOKEN
    return t


_IGNORED = ("text_projection", "logit_scale", "visual.")


def _text_keys(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if not k.startswith(_IGNORED)}


def infer_text_config(state_dict: Mapping[str, torch.Tensor], prefix: str = "cond_stage_model.model.",
                      heads: Optional[int] = None) -> dict:
    """Constructor kwargs implied by a state dict (heads = width // 64, OpenCLIP's head width, unless given)."""
    sd = _text_keys(state_dict, prefix)
    if "positional_embedding" not in sd or "token_embedding.weight" not in sd:
        raise KeyError(f"no OpenCLIP text tower under prefix {prefix!r} (need {prefix}positional_embedding and "
                       f"{prefix}token_embedding.weight)")
    context_length, width = (int(s) for s in sd["positional_embedding"].shape)
    vocab_size = int(sd["token_embedding.weight"].shape[0])
    idx = {int(k.split(".")[2]) for k in sd if k.startswith("transformer.resblocks.")}
    if not idx or idx != set(range(max(idx) + 1)):
        raise KeyError(f"resblock indices under {prefix}transformer.resblocks are not 0..L-1: {sorted(idx)}")
    hidden = int(sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    return {"width": width, "layers": max(idx) + 1, "heads": int(heads) if heads else max(1, width // 64),
            "context_length": context_length, "vocab_size": vocab_size, "mlp_ratio": hidden / width}


@torch.no_grad()
def empty_prompt_embedding(state_dict: Mapping[str, torch.Tensor], prefix: str = "cond_stage_model.model.",
                           layer: str = "penultimate", *, heads: Optional[int] = None) -> torch.Tensor:
    """The context StableSR feeds its UNet: FrozenOpenCLIPEmbedder([""]) -> (1, 77, width) float32.

    Builds the tower at the size the state dict implies, loads it strictly (every text-tower key used,
    none missing; `text_projection`, `logit_scale` and `visual.*` are ignored) and runs it once on the
    CPU in float32.
    """
    cfg = infer_text_config(state_dict, prefix, heads)
    tower = OpenCLIPTextTower(**cfg)
    sd = {k: v.to(torch.float32) for k, v in _text_keys(state_dict, prefix).items()}
    tower.load_state_dict(sd, strict=True)
    tower.eval()
    return tower(empty_prompt_tokens(cfg["context_length"]), layer=layer)
