"""DAPE: OSEDiff's optional prompt tagger (RAM Swin-L/384 + the degradation-aware LoRA of `DAPE.pth`).

The official `test_osediff.py` (cswry/OSEDiff) tags every input before the one diffusion step:

* the image tagged is the x4 Pillow-bicubic upscale of the LQ (`lq`, the same tensor the generator gets,
  before its mapping to [-1, 1]), resized to 384 x 384 and normalised (`ram_preprocess`);
* the tagger is `ram(pretrained=ram_swin_large_14m.pth, pretrained_condition=DAPE.pth, image_size=384,
  vit='swin_l')` of its `ram/models/ram_lora.py` (`sr_core.nets.ram.RAM` here), run in the script's weight
  dtype (fp16 by default on CUDA);
* `inference_ram` returns the chosen tags joined with ", " and the prompt is
  `f"{tags}, {args.prompt},"` (`compose_prompt`; `--prompt` defaults to "", giving e.g. "dog, grass, ,").

Files (never downloaded here; all four in one folder, `$OSEDIFF_DAPE_DIR`, or in `$SR_WEIGHTS_DIR`):
`ram_swin_large_14m.pth` (RAM's Swin-L checkpoint, Hugging Face `xinyu1205/recognize_anything_model`),
`DAPE.pth` (OSEDiff's / SeeSR's released DAPE weights), and the tag lists `ram_tag_list.txt` and
`ram_tag_list_threshold.txt` (`ram/data/` of the OSEDiff repository; they are not in the checkpoints).
The .pth files are read with `torch.load(weights_only=True)` (memory-mapped), falling back to the
restricted unpickler of `sr_core.ckpt` (nothing pickled is run).  The code is ours.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from .. import weights as W
from ..nets.ram import (RAM, RAMConfig, RAMLoadReport, class_thresholds, join_tags, load_ram_weights,
                        ram_preprocess, select_tags)
from ..types import Availability, WeightSpec, WeightsUnavailable

__all__ = ["DAPETagger", "DAPE_ENV", "DAPE_FILES", "DAPE_SPECS", "compose_prompt", "dape_files", "dape_missing",
           "read_tag_list", "read_thresholds", "load_pth"]

DAPE_ENV = "OSEDIFF_DAPE_DIR"  # a folder holding the four files below
RAM_FILE = "ram_swin_large_14m.pth"
DAPE_FILE = "DAPE.pth"
TAG_LIST_FILE = "ram_tag_list.txt"
THRESHOLD_FILE = "ram_tag_list_threshold.txt"
DAPE_FILES = (RAM_FILE, DAPE_FILE, TAG_LIST_FILE, THRESHOLD_FILE)
RAM_HF_REPO = "xinyu1205/recognize_anything_model"
DAPE_SPECS: tuple[WeightSpec, ...] = (
    WeightSpec(key="ram", filename=RAM_FILE, env=DAPE_ENV, size_mb=5600, licence="Apache-2.0 (RAM)"),
    WeightSpec(key="dape", filename=DAPE_FILE, env=DAPE_ENV, licence="Apache-2.0 (OSEDiff / SeeSR)"),
    WeightSpec(key="tag_list", filename=TAG_LIST_FILE, env=DAPE_ENV, licence="Apache-2.0 (RAM)"),
    WeightSpec(key="thresholds", filename=THRESHOLD_FILE, env=DAPE_ENV, licence="Apache-2.0 (RAM)"),
)


def compose_prompt(tags: str, user_prompt: str = "") -> str:
    """`test_osediff.py`'s `get_validation_prompt`: f"{tags}, {user prompt}," (verbatim, even when empty)."""
    return f"{tags}, {user_prompt or ''},"


def dape_missing(missing: Sequence[str], why: str = "") -> str:
    """The error text when DAPE's files are not all there."""
    return (f"OSEDiff's DAPE prompt tagger is not available: missing {', '.join(missing)}"
            f"{' (' + why + ')' if why else ''}. Put {', '.join(DAPE_FILES)} into one folder and set {DAPE_ENV}=that folder "
            f"(or put them into ${W.ENV_WEIGHTS_DIR}). {RAM_FILE} (~5.6 GB) is RAM's Swin-L checkpoint (Hugging Face "
            f"{RAM_HF_REPO}); {DAPE_FILE} is the DAPE release of OSEDiff / SeeSR; the tag lists {TAG_LIST_FILE} and "
            f"{THRESHOLD_FILE} are not in the checkpoints: copy them from ram/data/ of the OSEDiff repository. "
            f"Nothing is downloaded automatically.")


def dape_files(folder: Optional[os.PathLike | str] = None) -> dict[str, Path]:
    """{spec key: local path} of the four files; raises WeightsUnavailable naming the missing ones.

    `folder` (explicit) is the only place looked at when given; otherwise `$OSEDIFF_DAPE_DIR`,
    `$SR_WEIGHTS_DIR` and the cache folder, as `sr_core.weights.locate` (local files only)."""
    found: dict[str, Path] = {}
    missing: list[str] = []
    for spec in DAPE_SPECS:
        p = W.locate(spec, Path(folder) / spec.filename if folder else None)
        if p is None:
            missing.append(spec.filename)
        else:
            found[spec.key] = p
    if missing:
        where = f"not in {folder}" if folder else \
            "looked in " + "; ".join(f"{label} {p.parent}" for label, p in W.candidates(DAPE_SPECS[0]))
        raise WeightsUnavailable(dape_missing(missing, where))
    return found


def read_tag_list(path: os.PathLike | str) -> list[str]:
    """ram_lora's `load_tag_list`: the file's lines (utf-8, `splitlines`)."""
    return Path(path).read_text(encoding="utf-8").splitlines()


def read_thresholds(path: os.PathLike | str) -> list[float]:
    """One float per line (ram_lora reads `float(s.strip())` per line); blank lines are an error."""
    out = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        try:
            out.append(float(line.strip()))
        except ValueError as e:
            raise WeightsUnavailable(f"{path}, line {i + 1}: {line!r} is not a threshold") from e
    return out


def load_pth(path: os.PathLike | str) -> dict[str, torch.Tensor]:
    """{name: tensor} of a RAM / DAPE `.pth` without running pickled code.

    `torch.load(weights_only=True, mmap=True)`; if torch refuses the file (a non-tensor object in the
    pickle), the restricted unpickler of `sr_core.ckpt` (unknown classes become inert records).  The
    "model" wrapper of RAM's checkpoint and "module." prefixes are removed (`weights.canonicalize`)."""
    import zipfile

    path = Path(path)
    try:
        obj: Any = torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as first:
        from ..ckpt import load_checkpoint_object

        try:
            obj = load_checkpoint_object(path)
        except Exception as e:
            raise WeightsUnavailable(f"{path} could not be read as a checkpoint ({type(first).__name__}: "
                                     f"{str(first).splitlines()[0] if str(first) else ''})") from e
    try:
        return W.canonicalize(obj, prefer=("model", "state_dict", "params", "module"))
    except ValueError as e:
        raise WeightsUnavailable(f"{path}: {e}") from e


class DAPETagger:
    """RAM + DAPE from local files; `tags(img)` -> the joined tag string of each image.

    `files`: {"ram", "dape", "tag_list", "thresholds"} -> paths (`dape_files`), or pass the state dicts and
    lists directly with `from_state_dicts` (the tests do).  `cfg` defaults to Swin-L/384 with as many
    classes as the tag list has lines.  The LoRA is merged at load time as upstream's `eval()` does.
    """

    def __init__(self, model: RAM, tag_list: Sequence[str], thresholds: torch.Tensor, *,
                 report: Optional[RAMLoadReport] = None):
        if len(tag_list) != model.cfg.num_classes:
            raise WeightsUnavailable(f"the tag list has {len(tag_list)} tags, the RAM checkpoint "
                                     f"{model.cfg.num_classes} classes")
        self.model = model.eval().requires_grad_(False)
        self.tag_list = list(tag_list)
        self.thresholds = thresholds.float().cpu()  # fp32 whatever the model's dtype, as upstream
        self.report = report
        self._lock = threading.Lock()

    @classmethod
    def from_state_dicts(cls, ram_sd: Mapping[str, torch.Tensor], dape_sd: Optional[Mapping[str, torch.Tensor]],
                         tag_list: Sequence[str], thresholds: Sequence[float], *, cfg: Optional[RAMConfig] = None,
                         device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> "DAPETagger":
        if cfg is None:
            emb = ram_sd.get("label_embed")
            n = int(emb.shape[0]) if isinstance(emb, torch.Tensor) else len(tag_list)
            if n != len(tag_list):
                raise WeightsUnavailable(f"{TAG_LIST_FILE} has {len(tag_list)} tags but the RAM checkpoint's "
                                         f"label_embed has {n} classes: use the tag list that came with it")
            cfg = RAMConfig(num_classes=n)
        model = RAM(cfg)
        rep = load_ram_weights(model, ram_sd, dape_sd)
        thr = class_thresholds(list(thresholds), cfg.num_classes)
        model = model.to(device=torch.device(device), dtype=dtype)
        return cls(model, tag_list, thr, report=rep)

    @classmethod
    def from_files(cls, files: Mapping[str, os.PathLike | str], *, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32, cfg: Optional[RAMConfig] = None) -> "DAPETagger":
        tags = read_tag_list(files["tag_list"])
        thr = read_thresholds(files["thresholds"])
        if len(thr) > len(tags):
            raise WeightsUnavailable(f"{files['thresholds']} has {len(thr)} thresholds for {len(tags)} tags")
        ram_sd = load_pth(files["ram"])
        dape_sd = load_pth(files["dape"])
        return cls.from_state_dicts(ram_sd, dape_sd, tags, thr, cfg=cfg, device=device, dtype=dtype)

    @classmethod
    def load(cls, folder: Optional[os.PathLike | str] = None, **kw) -> "DAPETagger":
        return cls.from_files(dape_files(folder), **kw)

    @staticmethod
    def availability(folder: Optional[os.PathLike | str] = None) -> Availability:
        try:
            dape_files(folder)
        except WeightsUnavailable as e:
            return Availability(False, str(e))
        return Availability(True)

    @property
    def image_size(self) -> int:
        return self.model.cfg.image_size

    @torch.no_grad()
    def probabilities(self, img: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [0, 1] (the x4 bicubic image) -> (N, classes) sigmoid probabilities (float32)."""
        p = next(self.model.parameters())
        x = ram_preprocess(img.to(p.device), self.image_size).to(p.dtype)
        with self._lock:
            return torch.sigmoid(self.model(x)).float()

    def tag_lists(self, img: torch.Tensor) -> list[list[str]]:
        return select_tags(self.probabilities(img), self.thresholds, self.tag_list)

    def tags(self, img: torch.Tensor) -> list[str]:
        """The joined tag string per image (", "-joined, class order), as `inference_ram`."""
        return [join_tags(t) for t in self.tag_lists(img)]

    def prompt(self, img: torch.Tensor, user_prompt: str = "") -> tuple[str, str]:
        """(tags, prompt) for one image: the prompt OSEDiff's script builds."""
        tags = self.tags(img[:1])[0]
        return tags, compose_prompt(tags, user_prompt)

