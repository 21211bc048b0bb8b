"""Stable Diffusion 2.1-base component configs (diffusers layout) and a writer of SD-format folders.

OSEDiff (cswry/OSEDiff, `osediff.py`) builds its generator from the SD-2.1-base diffusers folder:
`vae/` (AutoencoderKL, f8, 4 latent channels, scaling factor 0.18215), `unet/` (UNet2DConditionModel,
320/640/1280/1280 channels, linear-projection transformers, 1024-dim cross attention), `scheduler/`
(DDPM-compatible scaled-linear betas 0.00085 -> 0.012 over 1000 steps, epsilon prediction),
`text_encoder/` (the OpenCLIP ViT-H text tower as a transformers CLIPTextModel: 1024 wide, 23
layers, 16 heads, GELU) and `tokenizer/`.  The dicts below restate those public configs (facts;
the upstream repo `stabilityai/stable-diffusion-2-1-base` was removed in 2025).  `mini_sd_config`
and `tiny_sd_config` keep the same layout (same block types, same module names, so the same LoRA
target lists) at small widths: the first for the project's bundled mini, the second for tests and
parity.  `write_sd_folder` writes a diffusers-format folder from such a config with deterministic
name-seeded weights (`sr_core.nets.init.deterministic_fill_`) and a small byte-level CLIP tokenizer,
which is what the tests and the parity script load through `from_pretrained`.  The code is ours.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Mapping, Optional

__all__ = ["SD21_BASE", "sd21_base_config", "mini_sd_config", "tiny_sd_config", "write_sd_folder",
           "write_byte_tokenizer", "build_components"]

# SD-2.1-base, diffusers layout (unet/config.json, vae/config.json, scheduler/scheduler_config.json,
# text_encoder/config.json).  Only architecture-defining keys are listed; the rest are library defaults.
SD21_BASE: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 1024,
        "attention_head_dim": [5, 10, 20, 20],
        "use_linear_projection": True,
        "dual_cross_attention": False,
        "upcast_attention": False,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,
        "prediction_type": "epsilon",
        "steps_offset": 1,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 512,
        "bos_token_id": 0,
        "pad_token_id": 1,
        "eos_token_id": 2,
    },
    "tokenizer": {"model_max_length": 77},
}


def sd21_base_config() -> dict[str, dict[str, Any]]:
    """A deep copy of `SD21_BASE`."""
    return copy.deepcopy(SD21_BASE)


def _shrink(unet_ch, head_dims, vae_ch, groups, cross, text_width, text_layers, text_heads, vocab,
            layers_per_block, vae_layers, max_len) -> dict[str, dict[str, Any]]:
    cfg = sd21_base_config()
    cfg["unet"].update(block_out_channels=list(unet_ch), attention_head_dim=list(head_dims),
                       norm_num_groups=groups, cross_attention_dim=cross, layers_per_block=layers_per_block,
                       sample_size=32)
    cfg["vae"].update(block_out_channels=list(vae_ch), norm_num_groups=groups, layers_per_block=vae_layers,
                      sample_size=256)
    cfg["text_encoder"].update(hidden_size=text_width, intermediate_size=4 * text_width,
                               num_hidden_layers=text_layers, num_attention_heads=text_heads,
                               vocab_size=vocab, projection_dim=text_width, max_position_embeddings=max_len)
    cfg["tokenizer"] = {"model_max_length": max_len}
    return cfg


def mini_sd_config() -> dict[str, dict[str, Any]]:
    """`mini-sd`: the SD-2.1-base layout at a small width (same block types and module names).

    UNet 32/64/128/128 channels (1 layer per block, 5.9 M parameters), VAE 16/32/64/64 (1 layer per
    block, no mid-block self-attention, 0.95 M), 8 GroupNorm groups, 128-dim cross attention.  Sized so
    the bundle stays ~12 MB (fp16 UNet) and a one-step 256 -> 1024 run takes a few seconds on a CPU
    (the f8 VAE at full resolution dominates; measured in scripts/train_sd_minis.sh).  UNet widths stay
    multiples of 32 because StableSR's SFT layers normalise with 32 groups.  16 latent channels instead of
    SD's 4 (UNet in/out follow): an f8 latent of 4 channels holds 1/48 of an image's values, three times
    fewer than its x4 LR (1/16), so a small autoencoder's reconstruction -- the ceiling of every generator
    that decodes through it -- would have to beat bicubic x4 with a third of the values; 16 channels (1/12)
    keep more than the LR (a reasoned choice, not an ablation; the card reports the reconstruction PSNR).
    A mini trained without text keeps a fixed empty-prompt context (`empty_prompt_embeds.safetensors` in
    its folder) and may omit text_encoder/ and tokenizer/.
    """
    cfg = _shrink((32, 64, 128, 128), (1, 2, 4, 4), (16, 32, 64, 64), 8, 128, 128, 2, 4, 1000, 1, 1, 77)
    cfg["vae"]["mid_block_add_attention"] = False
    cfg["vae"]["latent_channels"] = cfg["unet"]["in_channels"] = cfg["unet"]["out_channels"] = 16
    return cfg


def tiny_sd_config() -> dict[str, dict[str, Any]]:
    """The SD layout at test width: every block type and module name of SD-2.1-base, ~1 M parameters."""
    return _shrink((32, 32, 64, 64), (2, 2, 4, 4), (16, 16, 32, 32), 8, 32, 32, 2, 2, 1000, 1, 1, 16)


def build_components(config: Mapping[str, Mapping[str, Any]], *, text: bool = True):
    """Randomly initialised diffusers/transformers modules for `config`: (unet, vae, scheduler, text_encoder).

    `text_encoder` is None when `text` is False.  Imports are lazy (diffusers/transformers are heavy).
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    unet = UNet2DConditionModel(**dict(config["unet"]))
    vae = AutoencoderKL(**dict(config["vae"]))
    sched = DDPMScheduler(**dict(config["scheduler"]))
    te = None
    if text:
        from transformers import CLIPTextConfig, CLIPTextModel

        te = CLIPTextModel(CLIPTextConfig(**dict(config["text_encoder"])))
    return unet, vae, sched, te


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable unicode character table."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1))
          + list(range(ord("\u00ae"), ord("\u00ff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_byte_tokenizer(folder: os.PathLike | str, model_max_length: int = 77) -> Path:
    """A CLIP tokenizer folder with a byte-level vocabulary and no merges (514 tokens).

    Stands in for SD's 49408-token BPE vocabulary in tests: same classes, same special tokens
    (<|startoftext|> / <|endoftext|>, padding with <|endoftext|>), each character one token.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": i + len(chars) for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    tok_cfg = dict(special, model_max_length=int(model_max_length), tokenizer_class="CLIPTokenizer",
                   do_lower_case=True, add_prefix_space=False, errors="replace")
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg), encoding="utf-8")
    return folder


def _save_text_encoder(te, folder: Path, scale: float) -> None:
    """Save a CLIPTextModel in the SD checkpoint layout (`text_model.` prefixed keys, as in SD-2.1's
    text_encoder/model.safetensors) with values seeded by those prefixed names, so transformers 4.x
    (nested `text_model`) and 5.x (flat) load the same tensors."""
    from safetensors.torch import save_file

    from .init import deterministic_tensor

    folder.mkdir(parents=True, exist_ok=True)
    sd = {}
    for n, p in te.named_parameters():
        key = n if n.startswith("text_model.") else "text_model." + n
        sd[key] = deterministic_tensor(key, tuple(p.shape), scale=scale).contiguous()
    te.config.save_pretrained(str(folder))
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})


def write_sd_folder(folder: os.PathLike | str, config: Optional[Mapping[str, Mapping[str, Any]]] = None, *,
                    text: bool = True, empty_prompt_embeds: bool = False, scale: float = 1.0) -> Path:
    """Write a diffusers-format SD folder (unet/, vae/, scheduler/, text_encoder/, tokenizer/).

    Weights are deterministic: every tensor filled from its state-dict name (`deterministic_fill_`),
    so two processes (ours and the official code) get equal networks from equal configs.  `text=False`
    leaves out text_encoder/ and tokenizer/ (a mini trained with a fixed context); then
    `empty_prompt_embeds=True` also writes `empty_prompt_embeds.safetensors` (key "prompt_embeds",
    name-seeded values of shape (1, model_max_length, cross_attention_dim)).
    """
    from .init import deterministic_fill_, deterministic_tensor

    cfg = copy.deepcopy(dict(config or tiny_sd_config()))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    unet, vae, sched, te = build_components(cfg, text=text)
    deterministic_fill_(unet, scale=scale)
    deterministic_fill_(vae, scale=scale)
    unet.save_pretrained(str(folder / "unet"))
    vae.save_pretrained(str(folder / "vae"))
    sched.save_pretrained(str(folder / "scheduler"))
    del unet, vae
    if te is not None:
        _save_text_encoder(te, folder / "text_encoder", scale)
        write_byte_tokenizer(folder / "tokenizer", int(cfg["tokenizer"]["model_max_length"]))
    elif empty_prompt_embeds:
        from safetensors.torch import save_file

        shape = (1, int(cfg["tokenizer"]["model_max_length"]), int(cfg["unet"]["cross_attention_dim"]))
        save_file({"prompt_embeds": deterministic_tensor("empty_prompt_embeds", shape).mul_(shape[-1] ** 0.5)
                   .contiguous()}, str(folder / "empty_prompt_embeds.safetensors"))
    return folder
