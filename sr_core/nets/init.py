"""Deterministic, name-derived parameter filling for parity tests against official code.

ARCHITECTURE.md, "Parity with the official code": the official network and ours are both built from
the same config and filled by this function; each tensor's values depend only on its state-dict
name and shape (a CPU `torch.Generator` seeded by the first 8 hex digits of sha256(name)), never on
module construction order or on which implementation holds it, so equal names give equal weights
and the outputs can be compared directly.  Values are scaled so that activations stay O(1) through
deep networks: matrices and kernels ~ N(0, 1/fan_in), 1-D `weight`s (norm scales) ~ 1 + N(0, 0.1^2),
other 1-D/0-D tensors (biases) ~ N(0, 0.02^2).  Integer buffers and (by default) all buffers are left
alone: the ones in our networks are derived constants (Swin relative-position indices and masks).
"""

from __future__ import annotations

import hashlib
from typing import Callable, Optional

import torch
from torch import nn

__all__ = ["deterministic_fill_", "name_seed", "deterministic_tensor"]


def name_seed(name: str) -> int:
    """The generator seed of a state-dict name: int of the first 8 hex digits of its sha256."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:8], 16)


def _fill_values_(out: torch.Tensor, name: str, scale: float) -> torch.Tensor:
    """Write the values of `name` into the float32 CPU tensor `out` (in place, no extra copy)."""
    g = torch.Generator().manual_seed(name_seed(name))
    out.normal_(generator=g)
    shape = tuple(out.shape)
    if len(shape) >= 2:
        fan_in = max(1, out.numel() // max(1, shape[0]))
        return out.mul_(scale / fan_in ** 0.5)
    if len(shape) == 1 and name.endswith("weight"):
        return out.mul_(0.1 * scale).add_(1.0)
    return out.mul_(0.02 * scale)


def deterministic_tensor(name: str, shape: tuple, *, scale: float = 1.0) -> torch.Tensor:
    """The float32 CPU values `deterministic_fill_` gives to a tensor called `name` of `shape`."""
    return _fill_values_(torch.empty(tuple(int(s) for s in shape), dtype=torch.float32), name, scale)


@torch.no_grad()
def deterministic_fill_(module: nn.Module, *, scale: float = 1.0, buffers: bool = False,
                        skip: Optional[Callable[[str], bool]] = None) -> nn.Module:
    """Fill every parameter of `module` (and floating buffers if `buffers`) from its name; in place.

    `skip(name) -> True` leaves a tensor untouched; tensors on the meta device are skipped.
    Returns the module for chaining.
    """
    tensors = dict(module.named_parameters())
    if buffers:
        tensors.update({k: v for k, v in module.named_buffers() if v is not None and v.is_floating_point()})
    for name, t in tensors.items():
        if (skip is not None and skip(name)) or t.device.type == "meta":
            continue
        if t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous():
            _fill_values_(t.data, name, scale)
        else:
            t.copy_(deterministic_tensor(name, tuple(t.shape), scale=scale).to(dtype=t.dtype, device=t.device))
    return module
