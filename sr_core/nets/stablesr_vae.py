"""StableSR's autoencoder with controllable feature wrapping (CFW): a diffusers `AutoencoderKL` plus fusion blocks.

Corresponds to `AutoencoderKLResi` in the official code (IceClear/StableSR, `ldm/models/autoencoder.py`) with
its `Encoder(return_fea=True)` / `Decoder_Mix` / `Fuse_sft_block_RRDB` / `ResBlock` from
`ldm/modules/diffusionmodules/model.py` (RRDB from basicsr `rrdbnet_arch.py`), configured by
`configs/autoencoder/autoencoder_kl_64x64x4_resi.yaml` (SD-2.1 VAE layout, `num_fuse_block` 2, growth 32).
The encoder and decoder are the unmodified SD VAE (`vae`, diffusers layout, so a plain SD VAE loads into it);
the encoder additionally hands out the output of its last resnet at LDM levels 1 and 2 (before their
downsamplers: 1/2 and 1/4 resolution), and at every decoder level i not in {0, last} (LDM numbering) the
decoder features after that level's resnets, before its upsampler, become
`F_d + w * C_i(F_e[i-1], F_d)` with `C_i` = `fusion.fusion_layer_{i}` (ResBlock(2c->c), RRDBs, ResBlock(c->c)).
LDM `decoder.up[i]` is diffusers `decoder.up_blocks[n-1-i]`, so the fusion runs as a forward pre-hook on
`up_blocks[n-1-i].upsamplers[0]`; no diffusers code is forked.  w = 0 (or no encoder features) is the plain
SD decoder exactly.  `convert_ldm_vae` maps official LDM state-dict names (the CFW checkpoint
`vqgan_cfw_00011.ckpt`, or a `first_stage_model.` plain SD VAE) to ours by explicit rules, strictly.
Latents here are unscaled (posterior space); divide diffusion latents by `scaling_factor` (0.18215) first.
The code is ours.
"""

from __future__ import annotations

import copy
import functools
import re
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .rrdbnet import ResidualDenseBlock

__all__ = [
    "FEATURE_LEVELS",
    "CFWResBlock",
    "CFWRRDB",
    "CFWFuseBlock",
    "CFWAutoencoder",
    "stablesr_vae_configs",
    "build_cfw_autoencoder",
    "convert_ldm_vae",
    "infer_cfw_configs",
    "load_cfw_autoencoder",
    "IGNORED_PREFIXES",
]

# LDM encoder levels whose features `Encoder.forward(x, return_fea=True)` returns (in this order).
FEATURE_LEVELS = (1, 2)
# Training-only entries of vqgan_cfw_00011.ckpt's state_dict (LPIPS + discriminator), skipped by the converter.
IGNORED_PREFIXES = ("loss.",)
_DEFAULT_FUSION = {"num_fuse_block": 2, "num_grow_ch": 32, "norm_num_groups": 32}


# --------------------------------------------------------------------------------------------
# fusion blocks (official parameter names inside)


class CFWResBlock(nn.Module):
    """The fusion `ResBlock`: GroupNorm-SiLU-conv3x3 twice, 1x1 `conv_out` skip when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, num_groups: int = 32):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.norm1 = nn.GroupNorm(num_groups, in_channels, eps=1e-6, affine=True)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.norm2 = nn.GroupNorm(num_groups, out_channels, eps=1e-6, affine=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1)
        if self.in_channels != self.out_channels:
            self.conv_out = nn.Conv2d(in_channels, out_channels, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        skip = self.conv_out(x) if self.in_channels != self.out_channels else x
        return h + skip


class CFWRRDB(nn.Module):
    """basicsr's RRDB: three residual dense blocks `rdb1..rdb3`, residual scaled by 0.2."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.2 * self.rdb3(self.rdb2(self.rdb1(x)))


class CFWFuseBlock(nn.Module):
    """`Fuse_sft_block_RRDB`: C(F_e, F_d) from concat(F_e, F_d); returns F_d + w * C."""

    def __init__(self, channels: int, num_block: int = 2, num_grow_ch: int = 32, num_groups: int = 32):
        super().__init__()
        self.encode_enc_1 = CFWResBlock(2 * channels, channels, num_groups)
        self.encode_enc_2 = nn.Sequential(*[CFWRRDB(channels, num_grow_ch) for _ in range(int(num_block))])
        self.encode_enc_3 = CFWResBlock(channels, channels, num_groups)

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: Union[float, torch.Tensor] = 1.0):
        c = self.encode_enc_3(self.encode_enc_2(self.encode_enc_1(torch.cat([enc_feat, dec_feat], dim=1))))
        return dec_feat + w * c


# --------------------------------------------------------------------------------------------
# the autoencoder


def _fusion_levels(n_levels: int) -> list[int]:
    return list(range(1, n_levels - 1))


class CFWAutoencoder(nn.Module):
    """SD VAE (`vae`, diffusers AutoencoderKL) + CFW fusion blocks (`fusion.fusion_layer_{i}`).

    Args:
        vae_config: diffusers AutoencoderKL config (SD layout: DownEncoderBlock2D / UpDecoderBlock2D, 3 or 4
            levels; 4 in every released model).
        fusion_config: {"num_fuse_block", "num_grow_ch", "norm_num_groups"} (defaults 2, 32, 32 as upstream).
        fusion: False builds the plain SD VAE (no fusion modules; `decode` then needs w = 0 or no features),
            which is what a `first_stage_model.` checkpoint converts to.
    """

    def __init__(self, vae_config: Mapping[str, Any], fusion_config: Optional[Mapping[str, Any]] = None, *,
                 fusion: bool = True):
        super().__init__()
        from diffusers import AutoencoderKL

        cfg = dict(vae_config)
        downs, ups = list(cfg.get("down_block_types", ())), list(cfg.get("up_block_types", ()))
        chans = list(cfg.get("block_out_channels", ()))
        if any(t != "DownEncoderBlock2D" for t in downs) or any(t != "UpDecoderBlock2D" for t in ups):
            raise ValueError(f"CFWAutoencoder needs the SD VAE block types, got {downs} / {ups}")
        if not 3 <= len(chans) <= 4 or len(downs) != len(chans) or len(ups) != len(chans):
            raise ValueError(f"CFWAutoencoder needs 3 or 4 resolution levels (official Decoder_Mix indexes the two "
                             f"encoder features by level), got block_out_channels={chans}")
        self.vae = AutoencoderKL(**cfg)
        self.n_levels = len(chans)
        self.fusion_config = dict(_DEFAULT_FUSION, **dict(fusion_config or {}))
        fc = self.fusion_config
        self.fusion = nn.ModuleDict()
        if fusion:
            for i in _fusion_levels(self.n_levels):
                self.fusion[f"fusion_layer_{i}"] = CFWFuseBlock(chans[i], fc["num_fuse_block"], fc["num_grow_ch"],
                                                                fc["norm_num_groups"])
        self._capture: Optional[dict] = None
        self._fuse: Optional[tuple] = None
        enc, dec = self.vae.encoder, self.vae.decoder
        for lvl in FEATURE_LEVELS:
            enc.down_blocks[lvl].resnets[-1].register_forward_hook(functools.partial(self._capture_hook, lvl))
        for i in _fusion_levels(self.n_levels):
            up = dec.up_blocks[self.n_levels - 1 - i]
            up.upsamplers[0].register_forward_pre_hook(functools.partial(self._fuse_hook, i))

    # ---- hooks
    def _capture_hook(self, level: int, module, args, output):
        if self._capture is not None:
            self._capture[level] = output

    def _fuse_hook(self, level: int, module, args):
        if self._fuse is None:
            return None
        feats, w = self._fuse
        h = args[0]
        f = feats[level - 1]
        if tuple(f.shape[-2:]) != tuple(h.shape[-2:]) or f.shape[0] != h.shape[0]:
            raise ValueError(f"encoder feature {level - 1} has shape {tuple(f.shape)} but the decoder features at "
                             f"LDM level {level} are {tuple(h.shape)}: the features must come from encoding the "
                             f"image whose latent is decoded (8x the latent size)")
        out = self.fusion[f"fusion_layer_{level}"](f.to(h.dtype), h, w)
        return (out,) + tuple(args[1:])

    # ---- properties
    @property
    def has_fusion(self) -> bool:
        return len(self.fusion) > 0

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    # ---- encode / decode
    def encode(self, x: torch.Tensor, *, sample: bool = False,
               generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """x (N, 3, H, W) in [-1, 1], H and W multiples of 8 -> (latent, [F_e level 1, F_e level 2]).

        The latent is the posterior mean (unscaled), or with `sample=True` a posterior sample
        mean + std * noise (logvar clamped to [-30, 20], as LDM's DiagonalGaussianDistribution.sample, which
        the official script uses for the init latent).  The features are exactly those of the official
        `Encoder.forward(x, return_fea=True)`: (N, c1, H/2, W/2) and (N, c2, H/4, W/4).
        """
        self._capture = {}
        try:
            h = self.vae.encoder(x)
            caps = self._capture
        finally:
            self._capture = None
        moments = self.vae.quant_conv(h) if self.vae.quant_conv is not None else h
        mean, logvar = torch.chunk(moments, 2, dim=1)
        if sample:
            std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
            noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
            mean = mean + std * noise
        return mean, [caps[lvl] for lvl in FEATURE_LEVELS]

    def decode(self, z: torch.Tensor, enc_feats: Optional[Sequence[torch.Tensor]] = None,
               w: float = 0.0) -> torch.Tensor:
        """z (N, 4, h, w) unscaled latent -> image (N, 3, 8h, 8w), nominally in [-1, 1] (not clamped).

        With encoder features (from `encode` of the 8h x 8w LR image) and w != 0 the CFW fusion runs
        (w = 0: realism / plain SD decoder, 1: fidelity).  `enc_feats=None` or w = 0 gives the plain decoder.
        """
        use = enc_feats is not None and not (isinstance(w, (int, float)) and float(w) == 0.0)
        if use:
            if not self.has_fusion:
                raise ValueError("this CFWAutoencoder has no CFW fusion layers (a plain SD VAE); decode with w=0 "
                                 "or enc_feats=None")
            if len(enc_feats) != len(FEATURE_LEVELS):
                raise ValueError(f"expected {len(FEATURE_LEVELS)} encoder features, got {len(enc_feats)}")
            if torch.is_grad_enabled() and getattr(self.vae.decoder, "gradient_checkpointing", False):
                raise NotImplementedError("CFW fusion runs in hooks that gradient checkpointing would not replay; "
                                          "disable gradient checkpointing on the VAE decoder")
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        self._fuse = (list(enc_feats), w) if use else None
        try:
            return self.vae.decoder(z)
        finally:
            self._fuse = None

    def forward(self, x: torch.Tensor, w: float = 0.0) -> torch.Tensor:
        """Reconstruction: decode(posterior mean of x, features of x, w)."""
        z, feats = self.encode(x)
        return self.decode(z, feats, w)

    # ---- tiled variants
    def encode_tiled(self, x: torch.Tensor, tile_px: int, overlap_px: int, *,
                     sigma_frac: Optional[float] = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`encode` (posterior mean) on overlapping pixel tiles, Gaussian-blended at every output resolution.

        H, W, `tile_px` and `overlap_px` must be multiples of 8 (tiles are laid out on the latent grid by
        `sr_core.tiling.plan_tiles`, so tile borders fall on latent and feature pixels).  One tile (the image
        fits) is exactly `encode`.  Each tile is a full, independent pass (its own GroupNorm statistics and mid-block
        attention, as in diffusers' VAE tiling and in the official script, which runs whole 1280 px patches), so a
        tiled result approximates the untiled one; use tiles as large as memory allows.
        """
        from sr_core.tiling import DEFAULT_SIGMA_FRAC, gaussian_weights, plan_tiles

        H, W = int(x.shape[-2]), int(x.shape[-1])
        for name, v in (("height", H), ("width", W), ("tile_px", tile_px), ("overlap_px", overlap_px)):
            if int(v) % 8:
                raise ValueError(f"encode_tiled: {name} must be a multiple of 8, got {v}")
        boxes = plan_tiles(H // 8, W // 8, int(tile_px) // 8, int(overlap_px) // 8)
        if len(boxes) == 1:
            return self.encode(x)
        sf = DEFAULT_SIGMA_FRAC if sigma_frac is None else float(sigma_frac)
        # pixels per latent pixel of each output: latent x1, level-1 features x4, level-2 features x2
        ratios = [1] + [8 >> lvl for lvl in FEATURE_LEVELS]
        bufs: list[Optional[torch.Tensor]] = [None] * len(ratios)
        wsums: list[Optional[torch.Tensor]] = [None] * len(ratios)
        for (y0, x0, y1, x1) in boxes:
            mean, feats = self.encode(x[:, :, y0 * 8:y1 * 8, x0 * 8:x1 * 8])
            for k, (t, r) in enumerate(zip([mean] + list(feats), ratios)):
                if bufs[k] is None:
                    acc = torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype
                    shape = (t.shape[0], t.shape[1], H // 8 * r, W // 8 * r)
                    bufs[k] = torch.zeros(shape, dtype=acc, device=t.device)
                    wsums[k] = torch.zeros((1, 1) + shape[2:], dtype=acc, device=t.device)
                win = gaussian_weights(t.shape[-2], t.shape[-1], sigma_frac=sf, dtype=bufs[k].dtype, device=t.device)
                bufs[k][:, :, y0 * r:y1 * r, x0 * r:x1 * r].add_(t.to(bufs[k].dtype) * win)
                wsums[k][:, :, y0 * r:y1 * r, x0 * r:x1 * r].add_(win)
            del mean, feats
        outs = [(b / ws).to(x.dtype) for b, ws in zip(bufs, wsums)]
        return outs[0], outs[1:]

    def decode_tiled(self, z: torch.Tensor, enc_feats: Optional[Sequence[torch.Tensor]], w: float,
                     tile_latent: int, overlap_latent: int, *, sigma_frac: Optional[float] = None) -> torch.Tensor:
        """`decode` on overlapping latent tiles (features cropped to match), Gaussian-blended in pixels.

        Uses `sr_core.tiling.run_tiled` (scale 8); a latent that fits one tile is exactly `decode`.  Tiles are
        independent passes (see `encode_tiled`).
        """
        from sr_core.tiling import DEFAULT_SIGMA_FRAC, run_tiled

        h, wd = int(z.shape[-2]), int(z.shape[-1])
        if enc_feats is not None:
            for f, lvl in zip(enc_feats, FEATURE_LEVELS):
                r = 8 >> lvl
                if tuple(f.shape[-2:]) != (h * r, wd * r):
                    raise ValueError(f"decode_tiled: encoder feature of level {lvl} should be {(h * r, wd * r)} for a "
                                     f"{(h, wd)} latent, got {tuple(f.shape[-2:])}")

        def fn(t, box, i, n):
            y0, x0, y1, x1 = box
            feats = None
            if enc_feats is not None:
                feats = [f[:, :, y0 * (8 >> lvl):y1 * (8 >> lvl), x0 * (8 >> lvl):x1 * (8 >> lvl)]
                         for f, lvl in zip(enc_feats, FEATURE_LEVELS)]
            return self.decode(t, feats, w)

        sf = DEFAULT_SIGMA_FRAC if sigma_frac is None else float(sigma_frac)
        return run_tiled(fn, z, scale=8, tile=int(tile_latent), overlap=int(overlap_latent), with_box=True,
                         sigma_frac=sf)


# --------------------------------------------------------------------------------------------
# configs and construction


def stablesr_vae_configs(variant: str = "sd21") -> tuple[dict, dict]:
    """(diffusers AutoencoderKL config, fusion config) of the released CFW VAE ("sd21") or the test-width
    "tiny" (same layout, 32/64/64/64 channels, 32 GroupNorm groups like the official `Normalize`)."""
    from .sd_configs import SD21_BASE

    vae = copy.deepcopy(SD21_BASE["vae"])
    if variant == "sd21":
        pass
    elif variant == "tiny":
        vae.update(block_out_channels=[32, 64, 64, 64], norm_num_groups=32, layers_per_block=2, sample_size=64)
    else:
        raise ValueError(f"unknown StableSR VAE variant {variant!r}; valid: 'sd21', 'tiny'")
    return vae, dict(_DEFAULT_FUSION)


def build_cfw_autoencoder(variant: Union[str, tuple] = "sd21", *, fusion: bool = True,
                          device: Optional[Union[str, torch.device]] = None,
                          dtype: Optional[torch.dtype] = None) -> CFWAutoencoder:
    """A (randomly initialised) CFWAutoencoder of a variant name or a (vae_config, fusion_config) pair.

    `device="meta"` builds it without allocating weights (names and shapes only).
    """
    vae_cfg, fus_cfg = stablesr_vae_configs(variant) if isinstance(variant, str) else variant
    if device is not None:
        with torch.device(device):
            model = CFWAutoencoder(vae_cfg, fus_cfg, fusion=fusion)
    else:
        model = CFWAutoencoder(vae_cfg, fus_cfg, fusion=fusion)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model


# --------------------------------------------------------------------------------------------
# LDM -> ours state-dict conversion

_RES = r"(norm1|conv1|norm2|conv2|nin_shortcut)\.(weight|bias)"
_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def _strip(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in sd.items():
        if prefix and not k.startswith(prefix):
            continue  # another component of a full checkpoint
        k = k[len(prefix):]
        if any(k.startswith(p) for p in IGNORED_PREFIXES):
            continue
        out[k] = v
    return out


def _n_levels(sd: Mapping[str, Any]) -> int:
    idx = [int(m.group(1)) for k in sd for m in [re.match(r"(?:encoder\.down|decoder\.up)\.(\d+)\.", k)] if m]
    if not idx:
        raise ValueError("no LDM encoder.down.* / decoder.up.* keys found (wrong prefix?)")
    return max(idx) + 1


def _map_key(k: str, n: int) -> Optional[str]:
    """Our name for the LDM name `k` (prefix stripped), or None if no rule applies."""
    res = lambda s: s.replace("nin_shortcut", "conv_shortcut")  # noqa: E731
    m = re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)", k)
    if m:
        return f"vae.{m[1]}.conv_{m[2]}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.norm_out\.(weight|bias)", k)
    if m:
        return f"vae.{m[1]}.conv_norm_out.{m[2]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.block\.(\d+)\." + _RES, k)
    if m:
        return f"vae.encoder.down_blocks.{m[1]}.resnets.{m[2]}.{res(m[3])}.{m[4]}"
    m = re.fullmatch(r"encoder\.down\.(\d+)\.downsample\.conv\.(weight|bias)", k)
    if m:
        return f"vae.encoder.down_blocks.{m[1]}.downsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.block\.(\d+)\." + _RES, k)
    if m:
        return f"vae.decoder.up_blocks.{n - 1 - int(m[1])}.resnets.{m[2]}.{res(m[3])}.{m[4]}"
    m = re.fullmatch(r"decoder\.up\.(\d+)\.upsample\.conv\.(weight|bias)", k)
    if m:
        return f"vae.decoder.up_blocks.{n - 1 - int(m[1])}.upsamplers.0.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.block_([12])\." + _RES, k)
    if m:
        return f"vae.{m[1]}.mid_block.resnets.{int(m[2]) - 1}.{res(m[3])}.{m[4]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)", k)
    if m:
        return f"vae.{m[1]}.mid_block.attentions.0.{_ATTN[m[2]]}.{m[3]}"
    m = re.fullmatch(r"(quant_conv|post_quant_conv)\.(weight|bias)", k)
    if m:
        return f"vae.{m[1]}.{m[2]}"
    m = re.fullmatch(r"decoder\.fusion_layer_(\d+)\.(encode_enc_[13]\.(?:norm1|conv1|norm2|conv2|conv_out)"
                     r"|encode_enc_2\.\d+\.rdb[123]\.conv[1-5])\.(weight|bias)", k)
    if m:
        return f"fusion.fusion_layer_{m[1]}.{m[2]}.{m[3]}"
    return None


def _shape(v) -> tuple:
    return tuple(int(s) for s in v.shape)


def infer_cfw_configs(state_dict: Mapping[str, Any], *, prefix: str = "") -> tuple[dict, Optional[dict]]:
    """(vae_config, fusion_config or None) of an LDM-format VAE state dict, from its key names and shapes.

    GroupNorm groups cannot be read from weights; the official `Normalize` always uses 32.
    """
    from .sd_configs import SD21_BASE

    sd = _strip(state_dict, prefix)
    n = _n_levels(sd)
    try:
        chans = [_shape(sd[f"encoder.down.{i}.block.0.conv1.weight"])[0] for i in range(n)]
        layers = len({m[1] for k in sd for m in [re.match(r"encoder\.down\.0\.block\.(\d+)\.", k)] if m})
        vae = copy.deepcopy(SD21_BASE["vae"])
        vae.update(block_out_channels=chans, layers_per_block=layers, norm_num_groups=32,
                   down_block_types=["DownEncoderBlock2D"] * n, up_block_types=["UpDecoderBlock2D"] * n,
                   in_channels=_shape(sd["encoder.conv_in.weight"])[1],
                   out_channels=_shape(sd["decoder.conv_out.weight"])[0],
                   latent_channels=_shape(sd["decoder.conv_in.weight"])[1])
    except KeyError as e:
        raise ValueError(f"cannot infer the VAE layout: key {prefix}{e.args[0]} is missing") from None
    fus_keys = [k for k in sd if k.startswith("decoder.fusion_layer_")]
    if not fus_keys:
        return vae, None
    lvl = min(int(re.match(r"decoder\.fusion_layer_(\d+)\.", k)[1]) for k in fus_keys)
    pat = re.compile(rf"decoder\.fusion_layer_{lvl}\.encode_enc_2\.(\d+)\.")
    blocks = {m[1] for k in fus_keys for m in [pat.match(k)] if m}
    grow_key = f"decoder.fusion_layer_{lvl}.encode_enc_2.0.rdb1.conv1.weight"
    fusion = dict(_DEFAULT_FUSION, num_fuse_block=len(blocks),
                  num_grow_ch=_shape(sd[grow_key])[0] if grow_key in sd else _DEFAULT_FUSION["num_grow_ch"])
    return vae, fusion


def convert_ldm_vae(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "",
                    target: Optional[Union[nn.Module, Mapping[str, Iterable[int]]]] = None) -> dict[str, torch.Tensor]:
    """Official LDM VAE names -> `CFWAutoencoder.state_dict()` names (strict, shapes checked).

    Accepts `AutoencoderKLResi` state dicts (vqgan_cfw_00011.ckpt: encoder.*, decoder.* incl.
    decoder.fusion_layer_*, quant_conv.*, post_quant_conv.*; its training-only `loss.*` entries are skipped)
    and plain SD VAEs (`prefix="first_stage_model."` in a StableSR/SD checkpoint: keys outside the prefix
    are other components and skipped; the result has no `fusion.*` keys and loads into
    `CFWAutoencoder(..., fusion=False)`).  Rules: encoder.down.i.block.j -> vae.encoder.down_blocks.i.resnets.j
    (nin_shortcut -> conv_shortcut), downsample -> downsamplers.0, decoder.up.i -> vae.decoder.up_blocks.{n-1-i}
    (upsample -> upsamplers.0), mid.block_1/2 -> mid_block.resnets.0/1, mid.attn_1 norm/q/k/v/proj_out ->
    attentions.0 group_norm/to_q/to_k/to_v/to_out.0 (1x1 conv kernels -> linear matrices), norm_out ->
    conv_norm_out, decoder.fusion_layer_i.* -> fusion.fusion_layer_i.*.  Raises ValueError naming the keys
    no rule knows, and (against `target`: a module or {name: shape}; default a meta-device model of the
    layout inferred from the dict) the missing keys, unexpected keys and shape mismatches.  Tensors are not
    copied except the reshaped attention weights.
    """
    sd = _strip(state_dict, prefix)
    if not sd:
        raise ValueError(f"no keys with prefix {prefix!r} in the state dict")
    n = _n_levels(sd)
    out: dict[str, torch.Tensor] = {}
    unknown = []
    bad = []
    for k, v in sd.items():
        name = _map_key(k, n)
        if name is None:
            unknown.append(prefix + k)
            continue
        if re.search(r"mid\.attn_1\.(q|k|v|proj_out)\.weight$", k):
            s = _shape(v)
            if len(s) == 4 and s[2:] == (1, 1):
                v = v.reshape(s[0], s[1])
            elif len(s) != 2:
                bad.append(f"{prefix}{k} {s} (expected a 1x1 conv or linear weight)")
                continue
        out[name] = v
    if unknown:
        raise ValueError(f"convert_ldm_vae: {len(unknown)} unknown key(s): {', '.join(sorted(unknown)[:20])}"
                         + (" ..." if len(unknown) > 20 else ""))
    if bad:
        raise ValueError("convert_ldm_vae: bad shapes: " + "; ".join(bad))
    if target is None:
        vae_cfg, fus_cfg = infer_cfw_configs(sd)
        target = build_cfw_autoencoder((vae_cfg, fus_cfg or {}), fusion=fus_cfg is not None, device="meta")
    expected = ({k: _shape(v) for k, v in target.state_dict().items()} if isinstance(target, nn.Module)
                else {k: tuple(int(s) for s in v) for k, v in target.items()})
    missing = sorted(set(expected) - set(out))
    extra = sorted(set(out) - set(expected))
    shapes = [f"{k}: got {_shape(out[k])}, expected {expected[k]}" for k in sorted(set(out) & set(expected))
              if _shape(out[k]) != expected[k]]
    if missing or extra or shapes:
        msg = []
        if missing:
            msg.append(f"{len(missing)} missing: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else ""))
        if extra:
            msg.append(f"{len(extra)} unexpected: {', '.join(extra[:20])}" + (" ..." if len(extra) > 20 else ""))
        if shapes:
            msg.append(f"{len(shapes)} shape mismatch(es): {'; '.join(shapes[:20])}")
        raise ValueError("convert_ldm_vae: " + " | ".join(msg))
    return out


def load_cfw_autoencoder(state_dict: Mapping[str, torch.Tensor], *, prefix: str = "",
                         device: Optional[Union[str, torch.device]] = None,
                         dtype: Optional[torch.dtype] = None) -> CFWAutoencoder:
    """Build the CFWAutoencoder whose layout the LDM state dict has (fusion iff it has fusion_layer keys),
    load it strictly and return it in eval mode."""
    vae_cfg, fus_cfg = infer_cfw_configs(state_dict, prefix=prefix)
    model = build_cfw_autoencoder((vae_cfg, fus_cfg or {}), fusion=fus_cfg is not None, device="meta")
    converted = convert_ldm_vae(state_dict, prefix=prefix, target=model)
    model.load_state_dict({k: v.detach().clone() if v.requires_grad else v for k, v in converted.items()},
                          strict=True, assign=True)
    left = [k for k, t in list(model.named_parameters()) + list(model.named_buffers()) if t.device.type == "meta"]
    if left:
        raise RuntimeError(f"load_cfw_autoencoder: tensors left unloaded: {left}")
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model.eval()
