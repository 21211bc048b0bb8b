"""Training packs: seeded random HR crops from image folders, stored as one small .npz, and the batch
source the trainer draws from.

A pack is built once from the training folders (`../shared/data/train/*` by default; anything under
an `eval` folder is refused so benchmark images never leak into training): crops of `hr_size` px
(256) are placed at random in each image (the number of crops per image grows with its area), a
random flip/rot90 is applied, and the crops are written with the matching MATLAB-bicubic LR
(`imaging.imresize`, the benchmark protocol) into one `.npz` small enough (~50 MiB) to carry to a GPU
machine: the arrays zlib-compressed (codec "raw", ~0.155 MiB per 256-px crop), or each crop as lossless
WebP (codec "webp", ~0.08 MiB: twice the crops in the same bytes, decoded bit for bit on load).
`PackSource` draws training batches from it: random sub-patches, random dihedral augmentation, all
decided by a torch.Generator seeded from (seed, step, rank), so a run is reproducible and resumes
exactly.  Real-world degradations are applied to the HR batch afterwards (`degradations.py`).  Data
handling in the spirit of the SRDiff/Real-ESRGAN data pipelines; the code is ours.
"""

from __future__ import annotations

import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import numpy as np
import torch

from .. import imaging

PathLike = Union[str, Path]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TRAIN_ROOT = (REPO_ROOT.parent / "shared" / "data" / "train")
IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
PACK_VERSION = 1
PACK_CODECS = ("raw", "webp")
EXTRA_PREFIX = "extra_"  # per-crop arrays on the LR grid stored beside hr / lr (`derive_pack`)


class EvalPathError(ValueError):
    """A training source lies under an evaluation folder."""


def check_not_eval(path: PathLike) -> Path:
    """Resolve `path` and refuse it when any component is `eval` (benchmark images)."""
    p = Path(path).resolve()
    if any(part.lower() == "eval" for part in p.parts):
        raise EvalPathError(f"refusing to train on {path}: it lies under an 'eval' folder (benchmark images)")
    return p


def default_folders(root: PathLike = DEFAULT_TRAIN_ROOT) -> list[Path]:
    """Every data set folder under the training root (T91, BSD200, Kodak24, WikipediaPhotos20 ...)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"training root {root} does not exist")
    return sorted(p for p in root.iterdir() if p.is_dir())


def list_images(folder: PathLike) -> list[Path]:
    """Image files of a data set folder (its `HR/` subfolder when there is one), sorted."""
    folder = check_not_eval(folder)
    base = folder / "HR" if (folder / "HR").is_dir() else folder
    files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    for f in files:
        check_not_eval(f)
    return files


def dihedral(a: np.ndarray, k: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HxWxC array: rot90 by k % 4, then a horizontal flip if k >= 4."""
    a = np.rot90(a, k % 4, axes=(0, 1))
    if k >= 4:
        a = a[:, ::-1]
    return np.ascontiguousarray(a)


def _load_rgb(path: Path) -> np.ndarray:
    a = np.asarray(imaging.load_image(path, max_pixels=1 << 28))
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return np.ascontiguousarray(a[..., :3])


def build_pack(out: PathLike, folders: Optional[Sequence[PathLike]] = None, *, n_crops: int = 320,
               hr_size: int = 256, scale: int = 4, seed: int = 0, augment: bool = True,
               max_mib: float = 50.0, codec: str = "raw", verbose: bool = False) -> dict:
    """Write a training pack to `out` (.npz) and return its metadata.

    Crops are allocated to images in proportion to the number of non-overlapping crops each could
    hold (at least one per image that is big enough; smaller images are skipped and counted).  With
    fewer crops than usable images, a seeded random subset of the images gives one crop each.
    Stored arrays: `hr` (N, hr_size, hr_size, 3) uint8, `lr` (N, hr_size/scale, ..., 3) uint8 made by
    MATLAB bicubic, `source` (N,) index into `meta['files']`, `meta` a JSON string.  With `codec="webp"`
    `hr` and `lr` are stored instead as `hr_webp` / `lr_webp` (the crops' lossless WebP files end to end,
    uint8) and `hr_len` / `lr_len` (their byte lengths); `load_pack` gives the same arrays either way.
    """
    t0 = time.time()
    if codec not in PACK_CODECS:
        raise ValueError(f"codec must be one of {', '.join(PACK_CODECS)}, not {codec!r}")
    if codec == "webp":
        _check_webp()
    folders = [Path(f) for f in (folders if folders else default_folders())]
    files: list[Path] = []
    for f in folders:
        files += list_images(f)
    if not files:
        raise FileNotFoundError(f"no training images in {[str(f) for f in folders]}")
    if hr_size % scale:
        raise ValueError(f"hr_size {hr_size} is not a multiple of scale {scale}")
    rng = np.random.default_rng(seed)
    sizes = []
    for p in files:
        from PIL import Image

        with Image.open(p) as im:
            sizes.append(im.size[::-1])  # (h, w)
    usable = [i for i, (h, w) in enumerate(sizes) if h >= hr_size and w >= hr_size]
    skipped = [str(files[i]) for i in range(len(files)) if i not in set(usable)]
    if not usable:
        raise ValueError(f"no image is at least {hr_size}x{hr_size}")
    if n_crops < len(usable):  # a small pack (e.g. one that must travel to a lent GPU): a seeded subset of images
        usable = [usable[i] for i in sorted(rng.choice(len(usable), size=n_crops, replace=False))]
    capacity = np.array([max(1.0, (sizes[i][0] / hr_size) * (sizes[i][1] / hr_size)) for i in usable])
    share = capacity / capacity.sum() * n_crops
    counts = np.maximum(1, np.floor(share)).astype(int)
    # hand out the remainder by largest fractional part (deterministic), or trim the largest
    while counts.sum() < n_crops:
        counts[np.argmax(share - counts)] += 1
    while counts.sum() > n_crops and (counts > 1).any():  # every usable image keeps one crop
        counts[np.argmax(np.where(counts > 1, counts - share, -np.inf))] -= 1
    hr_list, lr_list, src = [], [], []
    for i, c in zip(usable, counts):
        if c <= 0:
            continue
        img = _load_rgb(files[i])
        h, w = img.shape[:2]
        for _ in range(int(c)):
            y = int(rng.integers(0, h - hr_size + 1))
            x = int(rng.integers(0, w - hr_size + 1))
            crop = img[y:y + hr_size, x:x + hr_size]
            if augment:
                crop = dihedral(crop, int(rng.integers(0, 8)))
            hr_list.append(crop)
            lr_list.append(imaging.imresize(np.ascontiguousarray(crop), 1.0 / scale))
            src.append(i)
    hr = np.stack(hr_list)
    lr = np.stack(lr_list)
    per_folder = {}
    for f in folders:
        fr = check_not_eval(f)
        per_folder[f.name] = int(sum(1 for s in src if fr in files[s].resolve().parents))
    meta = {
        "version": PACK_VERSION, "codec": codec, "hr_size": hr_size, "scale": scale, "seed": seed,
        "augment": augment,
        "n": int(hr.shape[0]), "lr_degradation": "bicubic (MATLAB imresize, uint8)",
        "folders": [f.name for f in folders], "crops_per_folder": per_folder,
        "files": [str(p.relative_to(p.parents[2])) if len(p.parents) > 2 else str(p) for p in files],
        "skipped_small": len(skipped), "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    arrays = {"hr": hr, "lr": lr} if codec == "raw" else {**_webp_arrays("hr", hr), **_webp_arrays("lr", lr)}
    np.savez_compressed(buf, **arrays, source=np.asarray(src, dtype=np.int32),
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    size_mib = buf.tell() / 2 ** 20
    if size_mib > max_mib:
        raise ValueError(f"pack would be {size_mib:.1f} MiB > {max_mib} MiB; use fewer crops "
                         f"(about {int(n_crops * max_mib / size_mib)})")
    out.write_bytes(buf.getvalue())
    meta["size_mib"] = round(size_mib, 2)
    meta["seconds"] = round(time.time() - t0, 1)
    if verbose:
        print(f"pack {out}: {meta['n']} crops of {hr_size}px from {len(usable)} images "
              f"({meta['skipped_small']} too small), {size_mib:.1f} MiB, {meta['seconds']} s")
    return meta


def _check_webp() -> None:
    from PIL import features

    if not features.check("webp"):
        raise RuntimeError("this Pillow has no WebP support: build the pack with codec 'raw'")


def _webp_arrays(name: str, crops: np.ndarray) -> dict:
    """{name_webp: the crops' lossless WebP files end to end, name_len: their lengths}."""
    from PIL import Image

    blobs = []
    for a in crops:
        b = io.BytesIO()
        Image.fromarray(a).save(b, "WEBP", lossless=True, quality=80, method=4, exact=True)
        blobs.append(b.getvalue())
    return {f"{name}_webp": np.frombuffer(b"".join(blobs), dtype=np.uint8),
            f"{name}_len": np.asarray([len(b) for b in blobs], dtype=np.int64)}


def _webp_decode(data: np.ndarray, lengths: np.ndarray, what: str) -> np.ndarray:
    from PIL import Image

    _check_webp()
    ends = np.cumsum(lengths)
    if len(ends) and int(ends[-1]) != data.size:
        raise ValueError(f"pack: {what} holds {data.size} bytes, its lengths add up to {int(ends[-1])}")
    raw = data.tobytes()
    return np.stack([np.asarray(Image.open(io.BytesIO(raw[e - n:e])).convert("RGB"))
                     for n, e in zip(lengths.tolist(), ends.tolist())])


@dataclass
class Pack:
    hr: np.ndarray  # (N, H, W, 3) uint8
    lr: Optional[np.ndarray]  # (N, H/s, W/s, 3) uint8 bicubic LR, or None
    meta: dict
    # name -> (N, H/s, W/s, C) float32 on the LR grid, pixel for pixel (e.g. a model's cached latents: a VQ-f4
    # latent of an x4 pair has the LR's size); `PackSource` crops and transforms them with the LR
    extras: dict = field(default_factory=dict)
    source: Optional[np.ndarray] = None  # (N,) index of each crop's image in meta['files']

    @property
    def scale(self) -> int:
        return int(self.meta.get("scale", 4))


def load_pack(path: PathLike) -> Pack:
    path = check_not_eval(path)
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(bytes(z["meta"]).decode())
        if "hr_webp" in z.files:
            hr = _webp_decode(z["hr_webp"], z["hr_len"], "hr")
            lr = _webp_decode(z["lr_webp"], z["lr_len"], "lr") if "lr_webp" in z.files else None
        else:
            hr = z["hr"]
            lr = z["lr"] if "lr" in z.files else None
        extras = {k[len(EXTRA_PREFIX):]: z[k] for k in z.files if k.startswith(EXTRA_PREFIX)}
        source = z["source"] if "source" in z.files else None
    return Pack(hr=hr, lr=lr, meta=meta, extras=extras, source=source)


def derive_pack(src: Pack, out: PathLike, rows: Sequence[int], extras: dict, note: dict) -> Path:
    """Write a pack of crops `rows` of `src` (hr and lr as stored, raw codec) with per-crop float arrays
    `extras` (name -> (len(rows), H/s, W/s, C), on the LR grid) -- e.g. what a model computed from each
    crop's LR, so a run can train on it without recomputing it every step.  `meta` is the source pack's
    with `n`, `codec` and `derived` (`note`: what the extras are and how they were made) updated."""
    if src.lr is None:
        raise ValueError("derive_pack needs a pack with stored LR crops")
    rows = [int(r) for r in rows]
    n, h, w = len(rows), src.lr.shape[1], src.lr.shape[2]
    arrays = {}
    for name, a in extras.items():
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 4 or a.shape[:3] != (n, h, w):
            raise ValueError(f"extra {name!r} has shape {a.shape}; expected ({n}, {h}, {w}, C): one array per "
                             "crop on the LR grid")
        arrays[EXTRA_PREFIX + name] = a
    meta = {**src.meta, "n": n, "codec": "raw", "derived": note}
    files = src.meta.get("files")
    if src.source is not None and files:  # the crops per folder of these rows (files are "<folder>/...")
        per_folder = {k: 0 for k in src.meta.get("crops_per_folder", {})}
        for r in rows:
            k = Path(files[int(src.source[r])]).parts[0]
            per_folder[k] = per_folder.get(k, 0) + 1
        meta["crops_per_folder"] = per_folder
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    more = {} if src.source is None else {"source": np.asarray(src.source)[rows].astype(np.int32)}
    np.savez_compressed(out, hr=src.hr[rows], lr=src.lr[rows], **arrays, **more,
                        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    return out


class PackSource:
    """Seeded batches of (HR, bicubic LR) float patches in [0, 1] from a pack.

    `batch(step, rank)` is a pure function of (seed, step, rank): random crop index, an aligned
    LR/HR sub-patch position and one of 8 dihedral transforms per sample.
    """

    def __init__(self, pack: Pack, patch_lr: int = 32, scale: int = 4, seed: int = 0):
        self.pack = pack
        self.patch_lr = int(patch_lr)
        self.scale = int(scale)
        self.seed = int(seed)
        n, h, w, _ = pack.hr.shape
        if h < patch_lr * scale or w < patch_lr * scale:
            raise ValueError(f"pack crops ({h}x{w}) are smaller than the HR patch {patch_lr * scale}")
        self.use_stored_lr = pack.lr is not None and pack.scale == scale
        self.hr = torch.from_numpy(pack.hr)  # uint8, stays on CPU
        self.lr = torch.from_numpy(pack.lr) if self.use_stored_lr else None
        self.extras = {}
        for name, a in pack.extras.items():
            if a.shape[:3] != (n, h // scale, w // scale):
                raise ValueError(f"pack extra {name!r} has shape {a.shape}, not ({n}, {h // scale}, {w // scale}, C)")
            self.extras[name] = torch.from_numpy(a)

    def __len__(self) -> int:
        return int(self.hr.shape[0])

    def generator(self, step: int, rank: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed((self.seed * 1_000_003 + step * 9_973 + rank * 7_919) % (2 ** 63))

    def batch(self, step: int, batch_size: int, rank: int = 0) -> dict:
        g = self.generator(step, rank)
        p, s = self.patch_lr, self.scale
        n, H, W, _ = self.hr.shape
        idx = torch.randint(0, n, (batch_size,), generator=g)
        ys = torch.randint(0, H // s - p + 1, (batch_size,), generator=g)
        xs = torch.randint(0, W // s - p + 1, (batch_size,), generator=g)
        ks = torch.randint(0, 8, (batch_size,), generator=g)
        hrs, lrs, extra = [], [], {name: [] for name in self.extras}
        for i, y, x, k in zip(idx.tolist(), ys.tolist(), xs.tolist(), ks.tolist()):
            hr = self.hr[i, y * s:(y + p) * s, x * s:(x + p) * s]
            hrs.append(_dihedral_t(hr, k))
            if self.use_stored_lr:
                lrs.append(_dihedral_t(self.lr[i, y:y + p, x:x + p], k))
            for name, a in self.extras.items():
                extra[name].append(_dihedral_t(a[i, y:y + p, x:x + p], k))
        hr_b = torch.stack(hrs).permute(0, 3, 1, 2).contiguous()
        if self.use_stored_lr:
            lr_b = torch.stack(lrs).permute(0, 3, 1, 2).contiguous()
        else:
            lr_b = imaging.imresize(hr_b, 1.0 / s)  # uint8 in, uint8 out: MATLAB rounding per pass
        out = {"hr": hr_b.float() / 255.0, "lr": lr_b.float() / 255.0, "generator": g}
        for name, parts in extra.items():  # (b, C, p, p) float32, cropped and transformed as the LR
            out[name] = torch.stack(parts).permute(0, 3, 1, 2).contiguous().float()
        return out


def _dihedral_t(a: torch.Tensor, k: int) -> torch.Tensor:
    a = torch.rot90(a, k % 4, dims=(0, 1))
    if k >= 4:
        a = torch.flip(a, dims=(1,))
    return a


def pack_summary(meta: dict) -> str:
    parts = ", ".join(f"{k} {v}" for k, v in meta.get("crops_per_folder", {}).items())
    return (f"{meta.get('n')} crops of {meta.get('hr_size')} px (seed {meta.get('seed')}) from "
            f"{', '.join(meta.get('folders', []))} [{parts}]")
