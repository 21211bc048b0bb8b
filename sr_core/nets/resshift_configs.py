"""Configurations of the released ResShift and SinSR checkpoints, as plain dicts, plus small "mini" ones.

Transcribed from the official configs: ResShift (zsyOAOA/ResShift @ 3ce1d81) `configs/
realsr_swinunet_realesrgan256.yaml` (v1, v2), `configs/realsr_swinunet_realesrgan256_journal.yaml` (v3),
`configs/bicx4_swinunet_lpips.yaml` (bicubic x4); SinSR (wyf0912/SinSR @ f173549) `configs/SinSR.yaml`
(v1 and v2 share it).  Download addresses are the ones in `inference_resshift.py` (`_LINK`) and in
SinSR's `inference.py`/`app.py`.  Each entry holds: `unet` (the keyword arguments of
`ResShiftUNet`, i.e. the official `model.params`), `autoencoder` (of `VQModel`), `diffusion` (the
official `diffusion.params`: steps T, kappa, min_noise_level, etas_end, the exponential schedule's
power p, predict x0, `scale_factor` applied to latents after encoding (1.0: none), `normalize_input`
+ `latent_flag`: the network input is x_t / sqrt(kappa^2 eta_t + 1)), the image normalisation
(images enter the autoencoder and the UNet's LR input as (x - 0.5) / 0.5, i.e. in [-1, 1]), the LR
padding multiple (the sampler reflect-pads the LR to a multiple of 64 px = the latent size the Swin
windows need), and the weight file (name, URL).  All six released denoisers share one architecture
(118.6 M parameters, 564 state-dict entries); they differ in training and diffusion settings.
SinSR's UNet class takes `in_channels: 6` (LR channels included, `direct_lq`), ResShift's takes 3 and
adds the LR's 3 itself; the two give identical parameters.
"""

from __future__ import annotations

import copy
from typing import Any, Optional, Sequence

__all__ = ["CONFIGS", "AUTOENCODER_VQ_F4", "RESSHIFT_RELEASE", "SINSR_RELEASE", "mini_config", "get_config"]

RESSHIFT_RELEASE = "https://github.com/zsyOAOA/ResShift/releases/download/v2.0/"
SINSR_RELEASE = "https://github.com/wyf0912/SinSR/releases/download/v1.0/"

# `autoencoder.params` of every ResShift/SinSR SR config (VQ-f4, 3 x 8192 codebook).
AUTOENCODER_VQ_F4: dict[str, Any] = {
    "embed_dim": 3,
    "n_embed": 8192,
    "ddconfig": {
        "double_z": False,
        "z_channels": 3,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
        "ch_mult": [1, 2, 4],
        "num_res_blocks": 2,
        "attn_resolutions": [],
        "dropout": 0.0,
        "padding_mode": "zeros",  # present in the official yaml, ignored by the official code too
    },
}

# `model.params` of the ResShift SR configs (identical in the v1/v2, v3 and bicubic yamls).
_RESSHIFT_UNET: dict[str, Any] = {
    "image_size": 64,
    "in_channels": 3,
    "model_channels": 160,
    "out_channels": 3,
    "attention_resolutions": [64, 32, 16, 8],
    "dropout": 0.0,
    "channel_mult": [1, 2, 2, 4],
    "num_res_blocks": [2, 2, 2, 2],
    "conv_resample": True,
    "dims": 2,
    "use_fp16": False,
    "num_head_channels": 32,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "swin_depth": 2,
    "swin_embed_dim": 192,
    "window_size": 8,
    "mlp_ratio": 4,
    "cond_lq": True,
    "lq_size": 64,
}

# SinSR's `model.params`: same network, LR channels counted in `in_channels`, no `lq_size`.
_SINSR_UNET: dict[str, Any] = {k: v for k, v in _RESSHIFT_UNET.items() if k != "lq_size"}
_SINSR_UNET.update({"in_channels": 6, "direct_lq": True})


def _diffusion(steps: int, min_noise_level: float) -> dict[str, Any]:
    return {
        "sf": 4,  # SR scale; the LR is bicubic-upsampled x4 before encoding
        "schedule_name": "exponential",
        "power": 0.3,  # schedule_kwargs.power: time axis warped by (t/(T-1))^p
        "etas_end": 0.99,  # sqrt(eta_T)
        "steps": steps,  # T
        "min_noise_level": min_noise_level,  # sqrt(eta_1) = min(min_noise_level / kappa, min_noise_level)
        "kappa": 2.0,
        "weighted_mse": False,
        "predict_type": "xstart",
        "timestep_respacing": None,
        "scale_factor": 1.0,  # latent = encode(x) * scale_factor
        "normalize_input": True,
        "latent_flag": True,  # with normalize_input: x_t / sqrt(eta_t kappa^2 + 1)
    }


_COMMON = {
    "autoencoder": AUTOENCODER_VQ_F4,
    "autoencoder_name": "autoencoder_vq_f4",
    "image_mean": 0.5,  # images (HR, LR, decoded) are (x - mean) / std: [0, 1] -> [-1, 1]
    "image_std": 0.5,
    "lr_pad_multiple": 64,  # LR reflect-padded (bottom/right) to a multiple of this before sampling
    "scale": 4,
}


def _entry(name: str, unet: dict, diffusion: dict, url: str, source: str, licence: str, notes: str) -> dict:
    e = copy.deepcopy(_COMMON)
    e.update({
        "name": name,
        "unet": copy.deepcopy(unet),
        "diffusion": diffusion,
        "filename": f"{name}.pth",
        "url": url,
        "source_config": source,
        "licence": licence,
        "notes": notes,
    })
    return e


_SLAB = "NTU S-Lab License 1.0 (non-commercial)"
_CCNC = "CC BY-NC-SA 4.0 (SinSR code/weights); distilled from ResShift (S-Lab licence)"

CONFIGS: dict[str, dict[str, Any]] = {
    "resshift_realsrx4_s15_v1": _entry(
        "resshift_realsrx4_s15_v1", _RESSHIFT_UNET, _diffusion(15, 0.04),
        RESSHIFT_RELEASE + "resshift_realsrx4_s15_v1.pth",
        "zsyOAOA/ResShift configs/realsr_swinunet_realesrgan256.yaml", _SLAB,
        "Real-world x4 (Real-ESRGAN degradations), 15 steps; the SinSR teacher."),
    "resshift_realsrx4_s15_v2": _entry(
        "resshift_realsrx4_s15_v2", _RESSHIFT_UNET, _diffusion(15, 0.04),
        RESSHIFT_RELEASE + "resshift_realsrx4_s15_v2.pth",
        "zsyOAOA/ResShift configs/realsr_swinunet_realesrgan256.yaml", _SLAB,
        "Real-world x4, 15 steps; same config as v1, another training run."),
    "resshift_realsrx4_s4_v3": _entry(
        "resshift_realsrx4_s4_v3", _RESSHIFT_UNET, _diffusion(4, 0.2),
        RESSHIFT_RELEASE + "resshift_realsrx4_s4_v3.pth",
        "zsyOAOA/ResShift configs/realsr_swinunet_realesrgan256_journal.yaml", _SLAB,
        "Real-world x4, 4 steps (journal version; LPIPS-trained)."),
    "resshift_bicsrx4_s4": _entry(
        "resshift_bicsrx4_s4", _RESSHIFT_UNET, _diffusion(4, 0.2),
        RESSHIFT_RELEASE + "resshift_bicsrx4_s4.pth",
        "zsyOAOA/ResShift configs/bicx4_swinunet_lpips.yaml", _SLAB,
        "Bicubic (MATLAB imresize) x4, 4 steps."),
    "SinSR_v1": _entry(
        "SinSR_v1", _SINSR_UNET, _diffusion(15, 0.04),
        SINSR_RELEASE + "SinSR_v1.pth",
        "wyf0912/SinSR configs/SinSR.yaml", _CCNC,
        "One step at t = T-1 of the 15-step ResShift-v1 schedule (RealSet65 / ImageNet-Test model)."),
    "SinSR_v2": _entry(
        "SinSR_v2", _SINSR_UNET, _diffusion(15, 0.04),
        SINSR_RELEASE + "SinSR_v2.pth",
        "wyf0912/SinSR configs/SinSR.yaml", _CCNC,
        "One step; the early-stopped checkpoint SinSR reports on RealSR."),
    "autoencoder_vq_f4": {
        "name": "autoencoder_vq_f4",
        "autoencoder": copy.deepcopy(AUTOENCODER_VQ_F4),
        "filename": "autoencoder_vq_f4.pth",
        "url": RESSHIFT_RELEASE + "autoencoder_vq_f4.pth",
        "source_config": "zsyOAOA/ResShift configs/*.yaml (autoencoder.params)",
        "licence": _SLAB,
        "notes": "VQ-f4 autoencoder shared by all ResShift and SinSR SR models (upstream runs it in fp16).",
    },
}


def get_config(name: str) -> dict[str, Any]:
    """A deep copy of `CONFIGS[name]`; unknown names list the valid ones."""
    if name not in CONFIGS:
        raise KeyError(f"unknown ResShift/SinSR config {name!r}; valid: {', '.join(CONFIGS)}")
    return copy.deepcopy(CONFIGS[name])


def mini_config(
    base: str = "resshift_realsrx4_s15_v1",
    *,
    model_channels: int = 32,
    channel_mult: Optional[Sequence[int]] = (1, 2, 2, 2),
    num_res_blocks: Optional[Sequence[int]] = None,
    swin_embed_dim: int = 64,
    num_head_channels: int = 32,
    window_size: Optional[int] = None,
    ae_ch: int = 32,
    ae_ch_mult: Optional[Sequence[int]] = (1, 2, 2),
    ae_num_res_blocks: Optional[int] = None,
    n_embed: Optional[int] = None,
    **unet_overrides: Any,
) -> dict[str, Any]:
    """The `base` release's architecture at a small width, same keys as a `CONFIGS` entry.

    Defaults (the proposed project mini, ~3.3 M UNet + ~1.3 M autoencoder parameters): UNet width 32
    (multipliers 1,2,2,2 instead of 1,2,2,4), Swin width 64 (2 heads), the release's depths, windows,
    attention levels and LR conditioning; autoencoder width 32 with multipliers 1,2,2 (still f4,
    3 latent channels, 8192 codes).  Pass `channel_mult=None` / `ae_ch_mult=None` to keep the release's
    multipliers.  Widths must be multiples of 32 (GroupNorm with 32 groups).  `url` is None: minis are
    trained by this project and shipped as its own files.
    """
    cfg = get_config(base)
    if "unet" not in cfg:
        raise ValueError(f"{base!r} has no UNet; use a denoiser config as the base")
    u = cfg["unet"]
    u.update({"model_channels": model_channels, "swin_embed_dim": swin_embed_dim,
              "num_head_channels": num_head_channels})
    if channel_mult is not None:
        u["channel_mult"] = list(channel_mult)
    if num_res_blocks is not None:
        u["num_res_blocks"] = list(num_res_blocks)
    if window_size is not None:
        u["window_size"] = window_size
    u.update(unet_overrides)
    ae = cfg["autoencoder"]
    ae["ddconfig"]["ch"] = ae_ch
    if ae_ch_mult is not None:
        ae["ddconfig"]["ch_mult"] = list(ae_ch_mult)
    if ae_num_res_blocks is not None:
        ae["ddconfig"]["num_res_blocks"] = ae_num_res_blocks
    if n_embed is not None:
        ae["n_embed"] = n_embed
    for name, width in [("model_channels", model_channels), ("swin_embed_dim", swin_embed_dim), ("ae_ch", ae_ch)]:
        if width % 32:
            raise ValueError(f"{name}={width} must be a multiple of 32 (GroupNorm groups)")
    cfg.update({"name": f"{base}-mini", "filename": None, "url": None, "licence": "",
                "notes": f"mini of {base}: same code, smaller width"})
    return cfg
