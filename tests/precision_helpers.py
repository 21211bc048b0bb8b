"""Shared check of the half-precision tests: a method's fp16/bf16 path against its fp32 run."""

import torch

from sr_core import metrics


def assert_half_close(out: torch.Tensor, ref: torch.Tensor, min_db: float, shape=(1, 3, 64, 64)) -> None:
    """`out` (the half-precision run) is fp32 in [0, 1] of `shape`, more than `min_db` PSNR from `ref` (fp32), and
    not bit-equal to it (it was really computed in the half type)."""
    assert out.dtype == torch.float32 and out.shape == ref.shape == shape
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    psnr = metrics.psnr(out.numpy(), ref.numpy(), data_range=1.0)
    assert min_db < psnr < 200.0, psnr
