"""A perceptual distance without torchvision: shift-tolerant LPIPS (AlexNet) written in the project.

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric")
compares two images through a frozen feature network: at each of five layers the features are
unit-normalised along the channels, the squared difference is weighted per channel by a learned
1x1 linear head (non-negative weights), averaged over space, and the five layers are summed.  The
weights used here are those of the shift-tolerant variant (Ghildyal & Liu 2022, "Shift-tolerant
Perceptual Similarity Metric", abhijay9/ShiftTolerant-LPIPS), shipped inside the `stlpips-pytorch`
wheel as `stlpips_pytorch/weights/vST0.0/alex_shift_tolerant.pth`: a full state dict (input
scaling, AlexNet convolutions, blur filters, linear heads).  Its AlexNet is the "shift_tolerant"
variant of that repo's `invariant_networks.alexnet`: the first convolution has stride 1 and every
down-sampling is a blur-pool (reflect padding by 2, a [1, 2, 1] x [1, 2, 1] / 16 depthwise filter,
stride 2, after a stride-1 max-pool where AlexNet had a stride-2 one).  This module rebuilds
exactly that network under our own parameter names and reads the file through an explicit key map
with shape checks; nothing of the package is imported (its __init__ chain imports torchvision,
which cannot be installed here without replacing the CPU torch).  One numerical change: the
channel normalisation divides by sqrt(sum f^2 + 1e-20) instead of sqrt(sum f^2) + 1e-10, which
agrees to ~1e-10 and keeps the gradient finite where a feature vector is exactly zero.  The file is
found through $SR_LPIPS_WEIGHTS or the installed package (located with importlib's find_spec,
without importing it); `pip install --no-deps stlpips-pytorch` is enough.  Used by the training
kit as the perceptual term of the mini-sd VAE and OSEDiff-mini objectives (and usable as an
optional metric); the code is ours.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ShiftTolerantLPIPS", "resolve_lpips_weights", "load_perceptual", "LPIPS_ENV", "LPIPS_FILE",
           "CHANNELS", "min_input_size"]

LPIPS_ENV = "SR_LPIPS_WEIGHTS"
LPIPS_FILE = Path("weights") / "vST0.0" / "alex_shift_tolerant.pth"  # inside the stlpips_pytorch package
# where the README (and scripts/device.sh prep) unzip it: the repository's git-ignored packs/ folder
LOCAL_LPIPS = Path(__file__).resolve().parents[2] / "packs" / "alex_shift_tolerant.pth"
CHANNELS = (64, 192, 384, 256, 256)  # AlexNet's five ReLU outputs
_BLUR = torch.tensor([1.0, 2.0, 1.0])

# our name -> the name in alex_shift_tolerant.pth
_KEY_MAP = {
    "shift": "scaling_layer.shift", "scale": "scaling_layer.scale",
    "conv1.weight": "net.slice1.0.weight", "conv1.bias": "net.slice1.0.bias",
    "conv2.weight": "net.slice2.5.weight", "conv2.bias": "net.slice2.5.bias",
    "conv3.weight": "net.slice3.9.weight", "conv3.bias": "net.slice3.9.bias",
    "conv4.weight": "net.slice4.11.weight", "conv4.bias": "net.slice4.11.bias",
    "conv5.weight": "net.slice5.13.weight", "conv5.bias": "net.slice5.13.bias",
    **{f"heads.{i}.weight": f"lin{i}.model.1.weight" for i in range(5)},
}
# blur filters stored in the file (derived constants here; checked on load)
_BLUR_KEYS = ("net.slice1.1.filt", "net.slice2.4.filt", "net.slice3.8.filt")


def _blur_pool(x: torch.Tensor) -> torch.Tensor:
    """Reflect-pad by 2, depthwise [1,2,1]x[1,2,1]/16 filter, stride 2 (the file's `Downsample`, pad_more)."""
    c = x.shape[1]
    k = (_BLUR[:, None] * _BLUR[None, :] / 16.0).to(x.dtype).to(x.device)
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), k.expand(c, 1, 3, 3), stride=2, groups=c)


def min_input_size() -> int:
    """The smallest image side the network accepts (the last blur-pool reflects a 3-pixel map)."""
    s = 8
    while True:
        h = s - 6  # conv1: kernel 11, padding 2, stride 1
        h = (h + 4 - 3) // 2 + 1  # blur-pool
        ok = True
        for _ in range(2):  # max-pool 3/1, then blur-pool (reflect padding 2 needs a side >= 3)
            h = h - 2
            if h < 3:
                ok = False
                break
            h = (h + 4 - 3) // 2 + 1
        if ok:
            return s
        s += 1


class ShiftTolerantLPIPS(nn.Module):
    """Shift-tolerant LPIPS (AlexNet).  forward(a, b) -> (N,) distances for images in [-1, 1]
    (`normalize=True`: inputs in [0, 1]).  Frozen and in eval mode after loading."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.zeros(1, 3, 1, 1))
        self.register_buffer("scale", torch.ones(1, 3, 1, 1))
        self.conv1 = nn.Conv2d(3, 64, 11, stride=1, padding=2)
        self.conv2 = nn.Conv2d(64, 192, 5, padding=2)
        self.conv3 = nn.Conv2d(192, 384, 3, padding=1)
        self.conv4 = nn.Conv2d(384, 256, 3, padding=1)
        self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)

    # ---- construction

    @classmethod
    def from_file(cls, path: os.PathLike | str) -> "ShiftTolerantLPIPS":
        """Load `alex_shift_tolerant.pth` (a plain state dict, read with weights_only) or a
        .safetensors with the same keys; every key of the map must be present with its shape."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        net = cls()
        own = net.state_dict()
        problems = []
        for ours, theirs in _KEY_MAP.items():
            if theirs not in sd:
                problems.append(f"missing {theirs}")
            elif tuple(sd[theirs].shape) != tuple(own[ours].shape):
                problems.append(f"{theirs}: {tuple(sd[theirs].shape)} vs {tuple(own[ours].shape)}")
        blur = (_BLUR[:, None] * _BLUR[None, :] / 16.0)
        for k in _BLUR_KEYS:
            if k in sd and not torch.allclose(sd[k].float()[0, 0], blur, atol=1e-6):
                problems.append(f"{k} is not the [1,2,1] binomial blur this network implements")
        if problems:
            raise ValueError(f"{path} is not a shift-tolerant AlexNet LPIPS state dict: " + "; ".join(problems[:6]))
        net.load_state_dict({ours: sd[theirs].float() for ours, theirs in _KEY_MAP.items()}, strict=True)
        return net.requires_grad_(False).eval()

    @classmethod
    def seeded(cls) -> "ShiftTolerantLPIPS":
        """Name-seeded weights (`sr_core.nets.init.deterministic_fill_`; heads made non-negative as
        LPIPS training keeps them) and the published input scaling: for tests and smoke runs only."""
        from ..nets.init import deterministic_fill_

        net = cls()
        deterministic_fill_(net)
        with torch.no_grad():
            for h in net.heads:
                h.weight.abs_()
            net.shift.copy_(torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
            net.scale.copy_(torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        return net.requires_grad_(False).eval()

    # ---- the distance

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five ReLU outputs of the shift-tolerant AlexNet for x in [-1, 1] (N, 3, H, W)."""
        h = (x - self.shift) / self.scale
        f1 = F.relu(_blur_pool(self.conv1(h)))
        f2 = F.relu(self.conv2(_blur_pool(F.max_pool2d(f1, 3, stride=1))))
        f3 = F.relu(self.conv3(_blur_pool(F.max_pool2d(f2, 3, stride=1))))
        f4 = F.relu(self.conv4(f3))
        f5 = F.relu(self.conv5(f4))
        return [f1, f2, f3, f4, f5]

    @staticmethod
    def _unit(f: torch.Tensor) -> torch.Tensor:
        f = f.float()  # float32 even under fp16 autocast (1e-20 underflows in fp16)
        return f * torch.rsqrt(f.pow(2).sum(dim=1, keepdim=True) + 1e-20)

    def forward(self, a: torch.Tensor, b: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"LPIPS compares images of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        m = min_input_size()
        if min(a.shape[-2:]) < m:
            raise ValueError(f"shift-tolerant LPIPS needs images of at least {m}x{m} px, got {tuple(a.shape[-2:])}")
        if normalize:
            a, b = a * 2 - 1, b * 2 - 1
        n = a.shape[0]
        fa = self.features(torch.cat([a, b]).to(self.conv1.weight.dtype))  # one pass for both images
        total = 0.0
        for f, head in zip(fa, self.heads):
            d = (self._unit(f[:n]) - self._unit(f[n:])).pow(2)
            total = total + F.conv2d(d, head.weight.float()).mean(dim=(2, 3))
        return total.flatten()


def resolve_lpips_weights(explicit: Optional[os.PathLike | str] = None) -> Path:
    """The weight file: `explicit`, else $SR_LPIPS_WEIGHTS, else packs/alex_shift_tolerant.pth in the
    repository, else inside the installed stlpips_pytorch package (found without importing it).  Raises
    FileNotFoundError saying how to provide it."""
    tried = []
    for cand in (explicit, os.environ.get(LPIPS_ENV), LOCAL_LPIPS):
        if cand:
            p = Path(cand)
            if p.is_file():
                return p
            tried.append(str(p))
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            p = Path(loc) / LPIPS_FILE
            if p.is_file():
                return p
            tried.append(str(p))
    raise FileNotFoundError(
        "the shift-tolerant LPIPS weights (alex_shift_tolerant.pth) were not found"
        + (f" (tried {', '.join(tried)})" if tried else "")
        + f": set {LPIPS_ENV}=/path/to/alex_shift_tolerant.pth, or `pip install --no-deps stlpips-pytorch` "
        "(the wheel ships the file; its torchvision dependency is not needed), or train with "
        "--set lambda_lpips=0 (no perceptual term)")


def load_perceptual(spec: str = "auto") -> ShiftTolerantLPIPS:
    """'auto' (env var or installed package), 'seeded' (name-seeded, tests only) or a file path."""
    if spec == "seeded":
        return ShiftTolerantLPIPS.seeded()
    return ShiftTolerantLPIPS.from_file(resolve_lpips_weights(None if spec in ("", "auto") else spec))
