"""OSEDiff: one-step x4 super-resolution from the LQ latent of Stable Diffusion 2.1 with LoRA.

This is the inference path of the official `OSEDiff_test` (cswry/OSEDiff, `osediff.py`, driven by
`test_osediff.py`) and the paper's one-step generator: the LR image in [0, 1] is upsampled x4 with
Pillow's bicubic on 8 bits (as `test_osediff.py`) and mapped to [-1, 1]; the VAE encoder with LoRA gives z_L times the VAE's
`scaling_factor` (the posterior mean: upstream draws `latent_dist.sample()` with the unseeded global
RNG, whose spread is small for the SD VAE; the mean keeps the method deterministic); the UNet with
LoRA (and its fine-tuned `conv_in`) predicts
epsilon once at t = 999 with the text context c (the empty prompt by default, or the user's prompt
through the CLIP text encoder); z_H = (z_L - sqrt(1 - abar_999) eps) / sqrt(abar_999) (what
`DDPMScheduler.step` returns at the last step); the frozen decoder gives the image, clamped to
[-1, 1].  The networks are diffusers `AutoencoderKL` / `UNet2DConditionModel` read from an SD-2.1-base
folder in diffusers layout; LoRA is attached with peft exactly as the official code does (rank from
the checkpoint, lora_alpha 8 = peft's default there, adapters "default_encoder" on the VAE encoder
and "default_encoder" / "default_decoder" / "default_others" on the UNet's down / up / middle
modules), and `osediff.pkl` (a torch-saved dict of module-name lists, ranks and the LoRA + conv_in
state dicts) is loaded strictly.  Large inputs run in Gaussian-blended latent tiles (96 latent px,
overlap 32, as the official defaults) with a tiled VAE encode/decode.  `OSEDiff("mini")` runs the
project's mini (same folder layout, small widths) through the same class.  The code is ours.

DAPE prompts (`sr_core.methods.dape`): the official script tags the x4 bicubic image with DAPE (RAM
Swin-L/384 + `DAPE.pth`'s LoRA) and runs with the prompt f"{tags}, {user prompt},".  `OSEDiff("official")`
does the same when DAPE's four files are found locally (`$OSEDIFF_DAPE_DIR` or `$SR_WEIGHTS_DIR`:
ram_swin_large_14m.pth, DAPE.pth, ram_tag_list.txt, ram_tag_list_threshold.txt; never downloaded), and
otherwise runs on the user prompt alone; `dape=False` turns it off, `dape=True` requires it.  The tags
and the prompt used are reported (`RunContext.report`, and `RunContext.info` -> `Result.info`
"dape_tags" / "prompt").  The mini (no text encoder) never uses DAPE.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .. import tiling
from .. import weights as W
from ..types import Availability, InputError, MethodInfo, RunContext, StepsSpec, WeightSpec, WeightsUnavailable
from .dape import DAPE_ENV

__all__ = ["OSEDiff", "OSEDiffModel", "official_lora_targets", "attach_lora", "load_osediff_weights",
           "save_osediff_weights", "merge_lora_", "lora_state_dicts", "pil_bicubic", "SD_SUBFOLDERS", "DTYPES",
           "compute_dtype", "mini_prior_folder"]

DTYPES = ("auto", "fp32", "fp16", "bf16")


def compute_dtype(device: torch.device, choice: str) -> torch.dtype:
    """The weights' dtype for a `DTYPES` choice on `device`: fp32 on the CPU and for "fp32"; bf16 or fp16
    on CUDA ("auto" = fp16)."""
    if device.type != "cuda" or choice == "fp32":
        return torch.float32
    return torch.bfloat16 if choice == "bf16" else torch.float16
SD_ENV = "OSEDIFF_SD_PATH"  # a local SD-2.1-base folder in diffusers layout
SD_REPO_ENV = "OSEDIFF_SD_REPO"  # a Hugging Face repo id holding SD-2.1-base (a mirror of the removed original)
DEFAULT_SD_REPO = "stabilityai/stable-diffusion-2-1-base"  # removed upstream in 2025; found only in an existing cache
WEIGHTS_ENV = "OSEDIFF_WEIGHTS"
OFFICIAL_URL = "https://raw.githubusercontent.com/cswry/OSEDiff/main/preset/models/osediff.pkl"
SD_SUBFOLDERS = ("unet", "vae", "scheduler")  # required; text_encoder/ + tokenizer/ needed for prompts
EMPTY_EMBEDS_FILE = "empty_prompt_embeds.safetensors"  # fixed context of a mini trained without text
SD_ALLOW = ["model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder/model.safetensors", "tokenizer/*"]
TIMESTEP = 999  # the one step (t = T - 1 of SD's 1000 training steps)
LORA_ALPHA = 8  # peft's LoraConfig default, which the official training relied on (scaling = 8 / rank)
UNET_GROUPS = ("default_encoder", "default_decoder", "default_others")
VAE_ADAPTER = "default_encoder"
DEFAULT_LATENT_TILE = 96  # latent px (= 768 output px), official --latent_tiled_size
DEFAULT_VAE_ENCODER_TILE = 1024  # px of the upsampled image, official --vae_encoder_tiled_size
DEFAULT_VAE_DECODER_TILE = 224  # latent px, official --vae_decoder_tiled_size (used on CUDA)
CPU_VAE_DECODER_TILE = 128  # latent px on the CPU (a 1792-px decoder tile needs several GB of activations)
DEFAULT_VAE_OVERLAP = 16  # latent px between VAE tiles (ours; the official hook shares GroupNorm stats instead)
LICENCE = "Apache-2.0 (OSEDiff); SD-2.1 weights: CreativeML Open RAIL++-M"

_PKL_LISTS = ("vae_lora_encoder_modules", "unet_lora_encoder_modules", "unet_lora_decoder_modules",
              "unet_lora_others_modules")
_PKL_KEYS = _PKL_LISTS + ("rank_unet", "rank_vae", "state_dict_unet", "state_dict_vae")


# --------------------------------------------------------------------------------------------
# LoRA layout and the osediff.pkl format


def official_lora_targets(unet: torch.nn.Module, vae: torch.nn.Module) -> dict[str, list[str]]:
    """The LoRA target-module lists the official training builds (`initialize_vae` / `initialize_unet`).

    VAE: every non-norm weight of the encoder whose name contains one of conv1, conv2, conv_in,
    conv_shortcut, conv, conv_out, to_k, to_q, to_v, to_out.0 (a name is listed once per matching
    pattern, so most appear twice, as upstream), plus `quant_conv` (not `post_quant_conv`) once per
    pattern.  UNet: the first matching pattern among to_k, to_q, to_v, to_out.0, conv, conv1, conv2,
    conv_in, conv_shortcut, conv_out, proj_out, proj_in, ff.net.2, ff.net.0.proj puts a non-norm
    weight into the "encoder" group (down_blocks or conv_in), the "decoder" group (up_blocks or
    conv_out) or else "others" (the middle block).  Names are module names (".weight" removed).
    """
    vae_grep = ["conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0"]
    vae_list: list[str] = []
    for n, _p in vae.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in vae_grep:
            if pattern in n and "encoder" in n:
                vae_list.append(n.replace(".weight", ""))
            elif "quant_conv" in n and "post_quant_conv" not in n:
                vae_list.append(n.replace(".weight", ""))
    unet_grep = ["to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                 "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj"]
    enc: list[str] = []
    dec: list[str] = []
    oth: list[str] = []
    for n, _p in unet.named_parameters():
        if "bias" in n or "norm" in n:
            continue
        for pattern in unet_grep:
            if pattern not in n:
                continue
            name = n.replace(".weight", "")
            if "down_blocks" in n or "conv_in" in n:
                enc.append(name)
            elif "up_blocks" in n or "conv_out" in n:
                dec.append(name)
            else:
                oth.append(name)
            break
    return {"vae_lora_encoder_modules": vae_list, "unet_lora_encoder_modules": enc,
            "unet_lora_decoder_modules": dec, "unet_lora_others_modules": oth}


def _check_targets(model: torch.nn.Module, names: Sequence[str], what: str) -> None:
    mods = dict(model.named_modules())
    bad = sorted({n for n in names if not isinstance(mods.get(n), (torch.nn.Linear, torch.nn.Conv2d))})
    if bad:
        raise WeightsUnavailable(
            f"the OSEDiff weights do not fit this Stable Diffusion {what}: {len(bad)} LoRA target module(s) are "
            f"not Linear/Conv2d layers of it ({', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}); "
            f"the weights were trained on another base model")


def attach_lora(unet: torch.nn.Module, vae: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """Add the official adapters to `unet` and `vae` (in place) from a checkpoint's lists and ranks."""
    from peft import LoraConfig

    with warnings.catch_warnings():  # three adapters on one UNet is what upstream does; peft warns about it
        warnings.filterwarnings("ignore", message=".*peft_config.*multiple adapters.*")
        _attach_lora(unet, vae, meta, LoraConfig)


def _attach_lora(unet, vae, meta, LoraConfig) -> None:
    r_u, r_v = int(meta["rank_unet"]), int(meta["rank_vae"])
    groups = {"default_encoder": meta["unet_lora_encoder_modules"],
              "default_decoder": meta["unet_lora_decoder_modules"],
              "default_others": meta["unet_lora_others_modules"]}
    for name, targets in groups.items():
        _check_targets(unet, targets, "UNet")
        unet.add_adapter(LoraConfig(r=r_u, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian",
                                    target_modules=list(targets)), adapter_name=name)
    unet.set_adapter(list(UNET_GROUPS))
    _check_targets(vae, meta["vae_lora_encoder_modules"], "VAE encoder")
    vae.add_adapter(LoraConfig(r=r_v, lora_alpha=LORA_ALPHA, init_lora_weights="gaussian",
                               target_modules=list(meta["vae_lora_encoder_modules"])), adapter_name=VAE_ADAPTER)
    vae.set_adapter([VAE_ADAPTER])


def lora_state_dicts(unet: torch.nn.Module, vae: torch.nn.Module) -> tuple[dict, dict]:
    """The tensors an osediff.pkl holds: UNet entries with "lora" or "conv_in" in the name, VAE "lora"."""
    su = {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k}
    sv = {k: v for k, v in vae.state_dict().items() if "lora" in k}
    return su, sv


def _strict_copy(model: torch.nn.Module, target: Mapping[str, torch.Tensor], ckpt: Mapping[str, Any],
                 what: str) -> None:
    """Copy ckpt into model's entries listed in `target`: same key set, same shapes, or an error."""
    missing = [k for k in target if k not in ckpt]
    unexpected = [k for k in ckpt if k not in target]
    bad = [f"{k}: checkpoint {tuple(ckpt[k].shape)} vs model {tuple(target[k].shape)}" for k in target
           if k in ckpt and (not isinstance(ckpt[k], torch.Tensor) or tuple(ckpt[k].shape) != tuple(target[k].shape))]
    if missing or unexpected or bad:
        def few(xs):
            return ", ".join(xs[:6]) + (f" ... (+{len(xs) - 6})" if len(xs) > 6 else "")

        parts = ([f"missing {len(missing)}: {few(missing)}"] if missing else []) + \
                ([f"unexpected {len(unexpected)}: {few(unexpected)}"] if unexpected else []) + \
                ([f"shape mismatch {len(bad)}: {few(bad)}"] if bad else [])
        raise WeightsUnavailable(f"OSEDiff {what} weights do not fit the model: " + "; ".join(parts))
    with torch.no_grad():
        for k, t in target.items():
            t.copy_(ckpt[k].to(dtype=t.dtype))


def load_osediff_weights(path: os.PathLike | str) -> dict[str, Any]:
    """Read an OSEDiff checkpoint without running pickled code.

    `.pkl`/`.pt`/`.pth`: the official `torch.save` dict (lists of str, ints, dicts of tensors), read
    with `torch.load(weights_only=True)`.  `.safetensors`: our flat form, tensors under "unet." and
    "vae." and the lists/ranks as JSON in the metadata field "osediff".  Checks the keys.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("osediff", "{}"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta["state_dict_unet"] = {k[5:]: v for k, v in tensors.items() if k.startswith("unet.")}
        meta["state_dict_vae"] = {k[4:]: v for k, v in tensors.items() if k.startswith("vae.")}
        obj: Any = meta
    else:
        obj = W.load_file(path)
    if not isinstance(obj, Mapping):
        raise WeightsUnavailable(f"{path} is not an OSEDiff checkpoint (a {type(obj).__name__}, not a dict)")
    missing = [k for k in _PKL_KEYS if k not in obj]
    if missing:
        raise WeightsUnavailable(f"{path} is not an OSEDiff checkpoint: missing {', '.join(missing)}")
    for k in _PKL_LISTS:
        if not isinstance(obj[k], (list, tuple)) or not all(isinstance(s, str) for s in obj[k]):
            raise WeightsUnavailable(f"{path}: {k} must be a list of module names")
    return dict(obj)


def save_osediff_weights(path: os.PathLike | str, unet: torch.nn.Module, vae: torch.nn.Module,
                         meta: Mapping[str, Any]) -> Path:
    """Write adapted `unet`/`vae` as an OSEDiff checkpoint: the official pkl layout (`.pkl`), or
    `.safetensors` (see `load_osediff_weights`).  `meta` holds the four module lists and the ranks."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    su, sv = lora_state_dicts(unet, vae)
    head = {k: list(meta[k]) for k in _PKL_LISTS}
    head.update(rank_unet=int(meta["rank_unet"]), rank_vae=int(meta["rank_vae"]))
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        flat = {"unet." + k: v.detach().cpu().contiguous() for k, v in su.items()}
        flat.update({"vae." + k: v.detach().cpu().contiguous() for k, v in sv.items()})
        save_file(flat, str(path), metadata={"osediff": json.dumps(head)})
    else:
        torch.save(dict(head, state_dict_unet={k: v.detach().cpu() for k, v in su.items()},
                        state_dict_vae={k: v.detach().cpu() for k, v in sv.items()}), str(path))
    return path


def merge_lora_(model: torch.nn.Module) -> torch.nn.Module:
    """Fold every LoRA layer into its base layer and put the base layer back (peft's merge_and_unload)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, mod in list(model.named_modules()):
        if not isinstance(mod, BaseTunerLayer):
            continue
        names = [a for a in getattr(mod, "lora_A", {}).keys()]
        mod.merge(adapter_names=names)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, mod.get_base_layer())
    return model


# --------------------------------------------------------------------------------------------
# the loaded model


def _to(net: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    # cast only when needed (diffusers warns on every dtype cast through `.to`)
    net = net.to(device)
    return net if dtype == torch.float32 else net.to(dtype=dtype)


class OSEDiffModel(torch.nn.Module):
    """The networks of one OSEDiff checkpoint on one device: VAE + UNet (with LoRA), text path.

    `forward(x)` maps an upsampled image in [-1, 1] (1, 3, H, W), H and W multiples of 8, to the
    output in [-1, 1]; `encode`, `eps` and `decode` are its stages (the parity test checks each).
    """

    def __init__(self, sd_folder: Path, ckpt: Mapping[str, Any], *, device: torch.device, dtype: torch.dtype,
                 merge: bool = False, vae_encoder_tile: int = DEFAULT_VAE_ENCODER_TILE,
                 vae_decoder_tile: Optional[int] = None, vae_overlap: int = DEFAULT_VAE_OVERLAP):
        super().__init__()
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

        self.sd_folder = Path(sd_folder)
        unet = UNet2DConditionModel.from_pretrained(str(sd_folder), subfolder="unet")
        vae = AutoencoderKL.from_pretrained(str(sd_folder), subfolder="vae")
        sched = DDPMScheduler.from_pretrained(str(sd_folder), subfolder="scheduler")
        if sched.config.prediction_type != "epsilon":
            raise WeightsUnavailable(f"{sd_folder}: OSEDiff needs an epsilon-prediction SD model, "
                                     f"not {sched.config.prediction_type!r} (use SD-2.1-base, not SD-2.1-768)")
        attach_lora(unet, vae, ckpt)
        su, sv = lora_state_dicts(unet, vae)
        _strict_copy(unet, su, ckpt["state_dict_unet"], "UNet")
        _strict_copy(vae, sv, ckpt["state_dict_vae"], "VAE")
        if merge:
            merge_lora_(unet)
            merge_lora_(vae)
        self.unet = _to(unet.eval().requires_grad_(False), device, dtype)
        self.vae = _to(vae.eval().requires_grad_(False), device, dtype)
        abar = sched.alphas_cumprod[TIMESTEP]  # float32, as the official scheduler.step uses it
        self.register_buffer("sqrt_abar", abar.sqrt().to(device), persistent=False)
        self.register_buffer("sqrt_one_minus_abar", (1 - abar).sqrt().to(device), persistent=False)
        self.register_buffer("timesteps", torch.tensor([TIMESTEP], dtype=torch.long, device=device), persistent=False)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.device_, self.dtype_ = device, dtype
        self.vae_encoder_tile = int(vae_encoder_tile)
        if vae_decoder_tile is None:
            vae_decoder_tile = DEFAULT_VAE_DECODER_TILE if device.type == "cuda" else CPU_VAE_DECODER_TILE
        self.vae_decoder_tile = int(vae_decoder_tile)
        self.vae_overlap = int(vae_overlap)
        self.tokenizer = None
        self.text_encoder = None
        self._prompt_cache: dict[str, torch.Tensor] = {}
        self._text_lock = threading.Lock()

    # ---- text

    def has_text_encoder(self) -> bool:
        return (self.sd_folder / "text_encoder").is_dir() and (self.sd_folder / "tokenizer").is_dir()

    def _load_text(self) -> None:
        if self.text_encoder is None:
            from transformers import AutoTokenizer, CLIPTextModel

            self.tokenizer = AutoTokenizer.from_pretrained(str(self.sd_folder), subfolder="tokenizer")
            te = CLIPTextModel.from_pretrained(str(self.sd_folder), subfolder="text_encoder")
            self.text_encoder = _to(te.eval().requires_grad_(False), self.device_, self.dtype_)

    def _empty_cache_path(self) -> Optional[Path]:
        """A per-SD-folder disk cache of the empty-prompt context, keyed by the text files' sizes/mtimes."""
        h = hashlib.sha256(f"{self.sd_folder.resolve()}|{self.dtype_}".encode())
        for sub in ("text_encoder", "tokenizer"):
            for p in sorted((self.sd_folder / sub).glob("*")):
                if p.is_file():
                    st = p.stat()
                    h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        return W.cache_dir() / "osediff" / f"empty_prompt_{h.hexdigest()[:16]}.safetensors"

    @torch.no_grad()
    def prompt_embeds(self, prompt: str = "") -> torch.Tensor:
        """Text context (1, L, D): the tokenizer pads to its max length, the CLIP encoder's last hidden
        state, as the official `encode_prompt`.  The empty prompt is computed once and cached (memory;
        on disk under the sr_core cache folder), or read from `empty_prompt_embeds.safetensors`."""
        from safetensors.torch import load_file, save_file

        prompt = (prompt or "").strip()
        with self._text_lock:
            if prompt in self._prompt_cache:
                return self._prompt_cache[prompt]
            emb: Optional[torch.Tensor] = None
            if not prompt and (self.sd_folder / EMPTY_EMBEDS_FILE).is_file():
                emb = load_file(str(self.sd_folder / EMPTY_EMBEDS_FILE))["prompt_embeds"]
            elif not self.has_text_encoder():
                if prompt:
                    raise InputError("this OSEDiff model has no text encoder (it uses a fixed empty-prompt "
                                     "context); clear the prompt")
                raise WeightsUnavailable(f"{self.sd_folder} has neither text_encoder/ + tokenizer/ "
                                         f"nor {EMPTY_EMBEDS_FILE}")
            else:
                cache = self._empty_cache_path() if not prompt else None
                if cache is not None and cache.is_file():
                    try:
                        emb = load_file(str(cache))["prompt_embeds"]
                    except Exception:
                        emb = None
                if emb is None:
                    self._load_text()
                    tok = self.tokenizer
                    ids = tok(prompt, max_length=tok.model_max_length, padding="max_length", truncation=True,
                              return_tensors="pt").input_ids.to(self.device_)
                    emb = self.text_encoder(ids)[0]
                    if cache is not None:
                        with contextlib.suppress(OSError):
                            cache.parent.mkdir(parents=True, exist_ok=True)
                            save_file({"prompt_embeds": emb.float().cpu().contiguous()}, str(cache))
            emb = emb.to(self.device_, self.dtype_)
            if len(self._prompt_cache) > 16:
                self._prompt_cache.clear()
            self._prompt_cache[prompt] = emb
            return emb

    # ---- stages

    def _encode_tile(self, x: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(x.to(self.dtype_)).latent_dist.mode() * self.scaling_factor

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """z_L = E_lora(x) * scaling_factor (posterior mean); Gaussian-blended pixel tiles above
        `vae_encoder_tile` px (tiles cut on the latent grid, 8 px per latent px)."""
        H, W_ = int(x.shape[-2]), int(x.shape[-1])
        if H % 8 or W_ % 8:
            raise ValueError(f"OSEDiff encodes images whose sides are multiples of 8, got {H}x{W_}")
        t = self.vae_encoder_tile // 8
        if max(H, W_) <= self.vae_encoder_tile or t < 2:
            return self._encode_tile(x)
        grid = torch.zeros(1, 1, H // 8, W_ // 8, device=x.device)

        def fn(_z, box):
            y0, x0, y1, x1 = box
            return self._encode_tile(x[:, :, 8 * y0:8 * y1, 8 * x0:8 * x1]).float()

        return tiling.blend_tiles(fn, grid, tile=t, overlap=min(self.vae_overlap, t - 1), with_box=True).to(self.dtype_)

    @torch.no_grad()
    def eps(self, z: torch.Tensor, context: torch.Tensor, *, tile: int = 0, overlap: int = 0) -> torch.Tensor:
        """The UNet's epsilon at t = 999; Gaussian-blended latent tiles when a side exceeds `tile` > 0."""
        def fn(t):
            return self.unet(t.to(self.dtype_), self.timesteps, encoder_hidden_states=context).sample

        if tile <= 0 or max(z.shape[-2:]) <= tile:
            return fn(z)
        return tiling.blend_tiles(fn, z, tile=int(tile), overlap=min(int(overlap), int(tile) - 1))

    def x0(self, z: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z_H = (z_L - sqrt(1 - abar_T) eps) / sqrt(abar_T) (DDPMScheduler.step's x0 at the last step)."""
        return (z - self.sqrt_one_minus_abar.to(z.dtype) * eps) / self.sqrt_abar.to(z.dtype)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """D(z / scaling_factor), clamped to [-1, 1]; Gaussian-blended latent tiles above `vae_decoder_tile`."""
        def fn(t):
            return self.vae.decode(t.to(self.dtype_) / self.scaling_factor).sample

        t = self.vae_decoder_tile
        if t <= 0 or max(z.shape[-2:]) <= t:
            out = fn(z)
        else:
            out = tiling.run_tiled(fn, z, scale=8, tile=t, overlap=min(self.vae_overlap, t - 1), blend="gaussian")
        return out.clamp(-1, 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, prompt: str = "", *, context: Optional[torch.Tensor] = None,
                tile: int = 0, overlap: int = 0, report=None) -> torch.Tensor:
        rep = report or (lambda f, m="": None)
        c = self.prompt_embeds(prompt) if context is None else context.to(self.device_, self.dtype_)
        rep(0.05, "OSEDiff: encoding")
        z = self.encode(x.to(self.device_))
        rep(0.35, "OSEDiff: one UNet step")
        e = self.eps(z, c, tile=tile, overlap=overlap)
        zh = self.x0(z.float(), e.float())
        rep(0.65, "OSEDiff: decoding")
        return self.decode(zh).float()


# --------------------------------------------------------------------------------------------
# the method


def pil_bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Upsample (N, 3, h, w) in [0, 1] by `scale` exactly as `test_osediff.py` does: Pillow's BICUBIC on
    the 8-bit image (it stores uint8 between its horizontal and vertical passes, so overshoot is clipped
    per pass; MATLAB-style or torch bicubic differ from it by up to ~20 levels on noisy content)."""
    import numpy as np
    from PIL import Image

    outs = []
    for img in lr.detach().float().clamp(0, 1).cpu():
        a = (img.permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
        im = Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale), Image.BICUBIC)
        outs.append(torch.from_numpy(np.asarray(im).copy()).permute(2, 0, 1).float() / 255.0)
    return torch.stack(outs)


def _sd_missing(why: str, repo: str) -> str:
    return (f"Stable Diffusion 2.1-base (diffusers layout: unet/, vae/, scheduler/, text_encoder/, tokenizer/) "
            f"is not available: {why}. Put a local copy in a folder and set {SD_ENV}=that folder (or pass "
            f"sd_path=), or set {SD_REPO_ENV} to a Hugging Face mirror id of {DEFAULT_SD_REPO} (the original "
            f"repo was removed in 2025; now looked for: {repo}) and allow downloads "
            f"(unset SR_OFFLINE / HF_HUB_OFFLINE).")


def _check_sd_folder(p: Path) -> Optional[str]:
    """None when `p` is usable, else what is missing."""
    if not p.is_dir():
        return f"{p} is not a folder"
    miss = [s for s in SD_SUBFOLDERS if not (p / s).is_dir()]
    if miss:
        return f"{p} lacks {', '.join(s + '/' for s in miss)}"
    if not (p / "text_encoder").is_dir() and not (p / EMPTY_EMBEDS_FILE).is_file():
        return f"{p} lacks text_encoder/ (and has no {EMPTY_EMBEDS_FILE})"
    return None


def mini_prior_folder(folder: Path) -> Path:
    """The diffusers folder a mini runs on: the mini's own folder when it holds unet/, else the folder its
    config.json names under "prior_folder" (relative to the mini; an exported osediff-mini ships only its
    LoRA file next to the `mini-sd` prior it was trained on, as stablesr-mini does)."""
    folder = Path(folder)
    cfg = folder / "config.json"
    if (folder / "unet").is_dir() or not cfg.is_file():
        return folder
    try:
        ref = json.loads(cfg.read_text()).get("prior_folder")
    except (OSError, ValueError):
        ref = None
    if not ref:
        return folder
    p = Path(str(ref))
    return p if p.is_absolute() else (folder / p).resolve()


class OSEDiff:
    """SRMethod for OSEDiff: `OSEDiff("official")` (SD-2.1-base + osediff.pkl) or `OSEDiff("mini")`.

    `sd_path`: a local diffusers folder (otherwise $OSEDIFF_SD_PATH, then the hub id $OSEDIFF_SD_REPO
    or the original id, from the cache or downloaded).  `weights`: the checkpoint (official pkl or our
    .safetensors; otherwise $OSEDIFF_WEIGHTS, $SR_WEIGHTS_DIR, the cache, or the GitHub download).  A mini
    is one folder holding unet/, vae/, scheduler/, optional text_encoder/ + tokenizer/ or
    empty_prompt_embeds.safetensors, and osediff.safetensors (or osediff.pkl); or just the latter and a
    config.json whose "prior_folder" names the folder with the rest (`mini_prior_folder`).  `dtype` "auto" is fp16
    on CUDA and fp32 on CPU ("bf16"/"fp16" only on CUDA).  `dape`: None (default) tags each input with
    DAPE when its files are found locally (`dape_dir`, else $OSEDIFF_DAPE_DIR / $SR_WEIGHTS_DIR; see
    `sr_core.methods.dape`), as the official script does, else uses the user prompt alone; False: never;
    True: required (unavailable without the files).  The mini never uses DAPE.  `merge=True` folds the
    LoRA into the base weights at load time (faster, same output within float error).  Settings.tile and
    tile_overlap are in LR pixels like every method's; the UNet tiles the latent at half that (1 latent
    px = 2 LR px = 8 output px; default 192 LR px = 96 latent px as upstream); the VAE tiles on its own above `vae_encoder_tile` px / `vae_decoder_tile` latent px (None: 224
    on CUDA as upstream, 128 on the CPU).
    """

    def __init__(self, variant: str = "official", *, sd_path: Optional[os.PathLike | str] = None,
                 weights: Optional[os.PathLike | str] = None, bundle_dir: Optional[os.PathLike | str] = None,
                 method_id: Optional[str] = None, dtype: str = "auto", merge: bool = False,
                 vae_encoder_tile: int = DEFAULT_VAE_ENCODER_TILE, vae_decoder_tile: Optional[int] = None,
                 vae_overlap: int = DEFAULT_VAE_OVERLAP, dape: Optional[bool] = None,
                 dape_dir: Optional[os.PathLike | str] = None):
        if variant not in ("official", "mini"):
            raise ValueError(f"unknown OSEDiff variant {variant!r}; valid: official, mini")
        if variant == "mini" and dape:
            raise ValueError("the OSEDiff mini has no text encoder: DAPE prompts are for OSEDiff('official')")
        self.dape = None if dape is None else bool(dape)
        self.dape_dir = Path(dape_dir) if dape_dir else None
        self._dape_off = ""  # why the last look for DAPE's files (dape=None) found them incomplete
        self._taggers: dict[tuple[str, str], Any] = {}
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        self.variant, self.dtype, self.merge = variant, dtype, bool(merge)
        self.vae_kw = dict(vae_encoder_tile=vae_encoder_tile, vae_decoder_tile=vae_decoder_tile,
                           vae_overlap=vae_overlap)
        self._models: dict[tuple[str, str], OSEDiffModel] = {}
        self._lock = threading.Lock()
        if variant == "mini":
            mid = method_id or "osediff-mini"
            folder = Path(bundle_dir) if bundle_dir is not None else W.ASSETS_WEIGHTS / mid
            self.sd_explicit: Optional[Path] = Path(sd_path) if sd_path else mini_prior_folder(folder)
            self.spec = WeightSpec(key="osediff", filename=f"{mid}_osediff.safetensors",
                                   bundled=f"{mid}/osediff.safetensors",
                                   licence="weights trained by this project (see the model card)")
            wpath = weights
            if wpath is None:
                for name in ("osediff.safetensors", "osediff.pkl"):
                    if (folder / name).is_file():
                        wpath = folder / name
                        break
            self.weights_explicit = wpath
            self.sd_repo = None
            specs: tuple[WeightSpec, ...] = (self.spec,)
            # a mini trained on a fixed context has no text encoder: no prompt box for it
            prompts = self.sd_explicit is not None and all((self.sd_explicit / d).is_dir()
                                                           for d in ("text_encoder", "tokenizer"))
            label, licence = "OSEDiff mini (1 step)", "code MIT; weights trained by this project (see the model card)"
            desc = ("OSEDiff's one-step LoRA generator on the project's small latent diffusion model "
                    "(mini-sd); same code as the official model.")
        else:
            mid = method_id or "osediff"
            env_sd = os.environ.get(SD_ENV)
            self.sd_explicit = Path(sd_path) if sd_path else (Path(env_sd) if env_sd else None)
            self.sd_repo = os.environ.get(SD_REPO_ENV) or DEFAULT_SD_REPO
            # ~18 MB: rank-4 LoRA + conv_in at the SD-2.1 size (what the official training saves)
            self.spec = WeightSpec(key="osediff", filename="osediff.pkl", url=OFFICIAL_URL, env=WEIGHTS_ENV,
                                   size_mb=18, licence="Apache-2.0")
            self.weights_explicit = weights
            sd_spec = WeightSpec(key="sd", filename="stable-diffusion-2-1-base (diffusers folder)",
                                 hf_repo=self.sd_repo,
                                 env=SD_ENV, size_mb=5200, licence="CreativeML Open RAIL++-M")
            specs = (self.spec, sd_spec)
            label, licence, prompts = "OSEDiff (1 step, SD-2.1)", LICENCE, True
            desc = ("One-step diffusion SR (Wu et al. 2024): LoRA-tuned Stable Diffusion 2.1 maps the LR latent "
                    "to the HR latent in one UNet call; optional text prompt.")
        self.info = MethodInfo(
            id=mid, label=label, description=desc, scales=(4,), default_scale=4, steps=StepsSpec(1, 1, 1),
            supports_fidelity=False, uses_seed=False, supports_prompt=prompts, tiling_space="latent",
            default_tile=2 * DEFAULT_LATENT_TILE, size_multiple=8, default_color_fix="adain", licence=licence,
            weights=specs, family="diffusion")

    # ---- resolution

    def _sd_folder(self, download: bool) -> Path:
        if self.sd_explicit is not None:
            why = _check_sd_folder(self.sd_explicit)
            if why:
                raise WeightsUnavailable(_sd_missing(why, self.sd_repo or "-") if self.variant == "official" else
                                         f"{self.info.label}: the model folder is not usable: {why}")
            return self.sd_explicit
        from huggingface_hub import snapshot_download

        local_only = W.offline() or not download
        try:
            p = Path(snapshot_download(self.sd_repo, allow_patterns=SD_ALLOW, local_files_only=local_only))
        except Exception as e:
            why = (("offline and not in the Hugging Face cache" if W.offline() else "not in the Hugging Face cache")
                   if local_only else
                   f"download of {self.sd_repo} failed ({type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''})")
            raise WeightsUnavailable(_sd_missing(why, self.sd_repo)) from e
        why = _check_sd_folder(p)
        if why:
            raise WeightsUnavailable(_sd_missing(why, self.sd_repo))
        return p

    def dape_enabled(self) -> bool:
        """Whether runs tag the input with DAPE: never for the mini or with dape=False; with dape=None when
        its files are found locally; with dape=True always (raises WeightsUnavailable when they are not)."""
        if self.variant == "mini" or self.dape is False:
            return False
        from .dape import dape_files

        try:
            dape_files(self.dape_dir)
        except WeightsUnavailable as e:
            if self.dape:
                raise
            self._dape_off = str(e)
            return False
        return True

    def _weights_path(self, download: bool) -> Path:
        return W.resolve(self.spec, self.weights_explicit, download=download)

    def availability(self) -> Availability:
        try:
            if self.weights_explicit or W.offline() or not self.spec.url:
                self._weights_path(download=False)
            # the original hub repo is gone: without a configured mirror only an existing cache can serve it
            if self.sd_explicit is not None or W.offline() or self.sd_repo == DEFAULT_SD_REPO:
                self._sd_folder(download=False)
            if self.dape:
                self.dape_enabled()
        except WeightsUnavailable as e:
            return Availability(False, str(e))
        return Availability(True)

    # ---- loading

    def model(self, device: torch.device | str = "cpu") -> OSEDiffModel:
        """The loaded networks for `device` (loaded once per device)."""
        device = torch.device(device)
        key = (str(device), self.dtype)
        with self._lock:
            if key not in self._models:
                ckpt = load_osediff_weights(self._weights_path(download=True))
                sd = self._sd_folder(download=True)
                self._models[key] = OSEDiffModel(sd, ckpt, device=device, dtype=compute_dtype(device, self.dtype),
                                                 merge=self.merge, **self.vae_kw)
            return self._models[key]

    def tagger(self, device: torch.device | str = "cpu"):
        """The DAPE tagger for `device` (`sr_core.methods.dape.DAPETagger`, loaded once per device), or None
        when DAPE is off (`dape_enabled`).  It runs in the model's dtype (fp16 on CUDA by default, as the
        official script's DAPE) and fp32 on the CPU."""
        if not self.dape_enabled():
            return None
        from .dape import DAPETagger

        device = torch.device(device)
        key = (str(device), self.dtype)
        with self._lock:
            if key not in self._taggers:
                self._taggers[key] = DAPETagger.load(self.dape_dir, device=device,
                                                     dtype=compute_dtype(device, self.dtype))
            return self._taggers[key]

    # ---- running

    @torch.inference_mode()
    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor:
        s = int(ctx.settings.scale)
        if s != 4:
            raise InputError(f"{self.info.id} upscales x4, not x{s}")
        ctx.report(0.0, f"{self.info.id}: loading")
        m = self.model(ctx.device)
        up = pil_bicubic(lr, s)
        prompt = ctx.settings.prompt or ""
        tagger = self.tagger(ctx.device)
        if tagger is not None:  # the official script: tags of the x4 bicubic image, then f"{tags}, {prompt},"
            from .dape import compose_prompt

            ctx.report(0.01, f"{self.info.id}: DAPE tagging")
            h, w = ctx.full_size if all(ctx.full_size) else (int(lr.shape[-2]), int(lr.shape[-1]))
            padded = (h, w) != (int(lr.shape[-2]), int(lr.shape[-1]))  # the facade's padding to a multiple of 8
            tags = tagger.tags(pil_bicubic(lr[:1, :, :h, :w], s) if padded else up[:1])[0]
            prompt = compose_prompt(tags, prompt)
            ctx.info.update(dape_tags=tags, prompt=prompt)
            ctx.report(0.03, f"{self.info.id}: DAPE tags: {tags or '(none)'}")
        elif self.variant == "official" and self.dape is None and (self.dape_dir or os.environ.get(DAPE_ENV)):
            # a DAPE folder was named but is incomplete: say why the prompt has no tags
            ctx.report(0.01, f"{self.info.id}: DAPE off: {self._dape_off}")
        x = up.to(ctx.device) * 2 - 1
        tile = max(int(ctx.settings.tile or self.info.default_tile) // 2, 8)  # LR px -> latent px
        overlap = tiling.request_overlap(tile, int(ctx.settings.tile_overlap) // 2)
        out = m(x, prompt, tile=tile, overlap=overlap, report=ctx.report)
        ctx.report(1.0, f"{self.info.id}: done")
        return ((out + 1) / 2).clamp(0, 1)
