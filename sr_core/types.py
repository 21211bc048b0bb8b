"""Shared types: what a method declares about itself and what a caller asks of it.

`MethodInfo` is the capability card of a method (scales, steps, fidelity weight, seed, tiling
space, size multiple, colour fix, licence, weight files) kept as plain data so the registry, the
CLI and the UI can all read it without running anything.  `Settings` is one request's knobs, a
frozen dataclass whose defaults are the project's defaults; presets override fields of it.
`SRMethod` is the protocol every method module implements (baselines and diffusion alike).
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from typing import Callable, Literal, Optional, Protocol, runtime_checkable

import torch

ColorFix = Literal["adain", "wavelet", "none"]
COLOR_FIXES: tuple[str, ...] = ("adain", "wavelet", "none")
TilingSpace = Literal["none", "pixel", "latent"]
DeviceName = Literal["auto", "cpu", "cuda"]

# progress(fraction in [0, 1], message) -- called by methods and the facade; may be None.
ProgressFn = Callable[[float, str], None]


class SRError(Exception):
    """Base class of the errors a user should see as they are (no traceback needed)."""


class InputError(SRError):
    """The input image or a setting is not acceptable (bad file, too large, bad scale ...)."""


class WeightsUnavailable(SRError):
    """A method's weight file is missing and cannot be downloaded here; the text says where to put it."""


@dataclass(frozen=True)
class WeightSpec:
    """One weight file a method needs."""

    key: str  # name the method uses for it, e.g. "model" or "autoencoder"
    filename: str  # file name on disk (bundled, local folder, or download target)
    bundled: Optional[str] = None  # path relative to assets/weights/ when we ship it
    url: Optional[str] = None  # direct download address (official release page), if any
    hf_repo: Optional[str] = None  # Hugging Face repo id holding `filename`, if any
    sha256: Optional[str] = None  # expected digest; checked after download and for bundled files
    env: Optional[str] = None  # environment variable that may hold an explicit path
    size_mb: Optional[float] = None  # approximate size, shown to users before a download
    licence: str = ""  # licence of the weights themselves


@dataclass(frozen=True)
class StepsSpec:
    """How many network evaluations a method allows: fixed when min == max."""

    min: int
    max: int
    default: int

    @property
    def fixed(self) -> bool:
        return self.min == self.max


@dataclass(frozen=True)
class MethodInfo:
    """Capabilities of a method, as data."""

    id: str  # registry id, e.g. "bicubic", "rrdb-mini", "sinsr"
    label: str  # human name for menus
    description: str  # one or two sentences for the UI / `methods` listing
    scales: tuple[int, ...] = (4,)  # supported integer upscaling factors
    default_scale: int = 4
    steps: Optional[StepsSpec] = None  # None: not a sampler (no steps slider)
    supports_fidelity: bool = False  # accepts a fidelity-realism weight w in [0, 1]
    default_fidelity: float = 0.5  # the w the app and the CLI start from (Settings() itself keeps 0.5)
    uses_seed: bool = False  # output depends on the seed
    supports_prompt: bool = False  # accepts a text prompt (Settings.prompt)
    tiling_space: TilingSpace = "none"  # "pixel": the facade tiles the LR; "latent": the method tiles itself
    default_tile: int = 0  # LR tile size in px (0: whole image unless the user asks)
    size_multiple: int = 1  # LR sides are reflect-padded to a multiple of this, then cropped back
    default_color_fix: str = "none"  # one of COLOR_FIXES
    licence: str = ""  # licence of code+weights combination users must respect
    weights: tuple[WeightSpec, ...] = ()  # files the method needs
    family: str = "baseline"  # "baseline", "regression", "diffusion" -- grouping in menus
    max_input_pixels: Optional[int] = None  # method-specific input limit, None: the global one
    supports_interpolation: bool = False  # latent interpolation / content fusion (sr_core.studio): the
    # method object offers `prepare(lr, ctx)` sessions that diffuse a residual to step t and run the reverse chain

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["weights"] = [dataclasses.asdict(w) for w in self.weights]
        return d


@dataclass(frozen=True)
class Settings:
    """One request's knobs.  A field a method does not declare is ignored by it."""

    scale: int = 4  # upscaling factor; must be in the method's scales
    steps: Optional[int] = None  # sampler steps; None: the method's default
    fidelity: float = 0.5  # StableSR-style w: 0 = realism, 1 = fidelity
    seed: int = 0  # seed of the one torch.Generator made for this request
    tile: int = 0  # LR tile size in px; 0: the method's default_tile (0 = no tiling)
    tile_overlap: int = 32  # overlap between LR tiles in px
    color_fix: Optional[str] = None  # None: the method's default_color_fix
    device: str = "auto"  # "auto" (cuda when available), "cpu" or "cuda"
    prompt: str = ""  # text prompt for methods that accept one

    def replace(self, **changes) -> "Settings":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""  # why not, and what to do about it, when ok is False


@dataclass
class RunContext:
    """What the facade hands a method for one call (one tile, when the facade tiles).

    Randomness: `randn` gives the noise of the region this call covers as a pure function of the
    request's seed, a key and the position in the whole image, so overlapping tiles see the same
    noise and results do not depend on the order tiles run in.
    """

    settings: Settings
    device: torch.device
    generator: torch.Generator  # the one source of randomness of the request (on CPU)
    progress: Optional[ProgressFn] = None
    full_size: tuple[int, int] = (0, 0)  # (H, W) of the whole LR image
    tile_box: Optional[tuple[int, int, int, int]] = None  # (y0, x0, y1, x1) LR pixels this call covers
    tile_index: int = 0
    tile_count: int = 1
    info: dict = field(default_factory=dict)  # facts a method reports about this run (e.g. the prompt it
    # built); `api.upscale` adds them to `Result.info`
    _base_seed: Optional[int] = field(default=None, repr=False)

    def report(self, fraction: float, message: str = "") -> None:
        """Progress of this call in [0, 1], mapped into this tile's share of the whole request."""
        if self.progress is not None:
            f = float(min(max(fraction, 0.0), 1.0))
            self.progress((self.tile_index + f) / max(self.tile_count, 1), message)

    def randn(self, key, channels: int, height: int, width: int, factor: int = 1) -> torch.Tensor:
        """Standard normal noise (1, channels, height, width) on the CPU for this call's region.

        The noise at a position depends only on the request's seed, `key`, `channels`, `factor` and
        the position in the whole image: the plane is cut into NOISE_BLOCK x NOISE_BLOCK blocks, each
        drawn from a generator seeded by a hash of those values.  So overlapping tiles see the same
        noise, results do not depend on the order tiles run in, and nothing image-sized is stored.
        `factor` is noise pixels per LR pixel (1 for a latent at LR size, the scale for pixel-space
        diffusion); `height`/`width` are the size the method needs (its padded input times
        `factor`); `key` names the draw, e.g. ("x_T",) or ("step", 7) (str/int/tuples only).
        """
        if self._base_seed is None:  # drawn once from the request's generator
            self._base_seed = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
        y0, x0 = (self.tile_box or (0, 0, 0, 0))[:2]
        oy, ox = y0 * factor, x0 * factor
        B = NOISE_BLOCK
        out = torch.empty(1, channels, height, width)
        for by in range(oy // B, (oy + height - 1) // B + 1):
            for bx in range(ox // B, (ox + width - 1) // B + 1):
                digest = hashlib.blake2b(repr((self._base_seed, key, int(channels), int(factor), by, bx)).encode(),
                                         digest_size=8).digest()
                g = torch.Generator().manual_seed(int.from_bytes(digest, "little") >> 1)
                block = torch.randn(1, channels, B, B, generator=g)
                ys, xs = max(oy, by * B), max(ox, bx * B)
                ye, xe = min(oy + height, (by + 1) * B), min(ox + width, (bx + 1) * B)
                out[:, :, ys - oy:ye - oy, xs - ox:xe - ox] = block[:, :, ys - by * B:ye - by * B,
                                                                     xs - bx * B:xe - bx * B]
        return out


NOISE_BLOCK = 64  # side of the independently seeded noise blocks of RunContext.randn


@runtime_checkable
class SRMethod(Protocol):
    """What every method implements.

    `run` takes the LR image as a float tensor (1, 3, h, w) in [0, 1] on `ctx.device` and returns
    the SR image (1, 3, h*scale, w*scale) in [0, 1].  Tiling in pixel space, colour fix, alpha,
    device choice and input validation happen in the facade (`sr_core.api`), not in the method.
    """

    info: MethodInfo

    def availability(self) -> Availability: ...

    def run(self, lr: torch.Tensor, ctx: RunContext) -> torch.Tensor: ...


@dataclass
class Result:
    """What `sr_core.api.upscale` returns."""

    image: "object"  # PIL.Image.Image, RGB or RGBA (alpha restored when the input had one)
    bicubic: "object"  # PIL.Image.Image: the input upscaled by MATLAB bicubic, same size (for sliders)
    method_id: str
    settings: Settings  # the settings actually used (defaults filled in, seed included)
    seconds: float
    info: dict = field(default_factory=dict)  # extra facts (tiles used, device, dtype ...)
