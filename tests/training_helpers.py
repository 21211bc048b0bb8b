"""Shared test data for the training tests: small smooth synthetic images and a tiny kit (train
folders, a Set5-like eval folder and a pack built from the train folders)."""

from pathlib import Path

import numpy as np
from PIL import Image

from sr_core.training import data as D


def write_images(folder: Path, n: int, size=(72, 88), seed=0) -> None:
    """`n` smooth random PNGs of `size` (h, w): bicubic-enlarged noise, so crops have structure."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    for i in range(n):
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        Image.fromarray(base).resize((w, h), Image.BICUBIC).save(folder / f"img{i}.png")


def tiny_kit(root: Path, n_train: int, n_eval: int, train_size=(72, 88)) -> dict:
    """root/train/SetA/HR (n_train images), root/eval/Set5/HR (n_eval images) and root/pack.npz."""
    write_images(root / "train" / "SetA" / "HR", n_train, size=train_size)
    write_images(root / "eval" / "Set5" / "HR", n_eval, size=(48, 40), seed=3)
    pack = root / "pack.npz"
    D.build_pack(pack, D.default_folders(root / "train"), n_crops=8, hr_size=48, scale=4, seed=0)
    return {"root": root, "pack": pack, "eval": root / "eval"}
