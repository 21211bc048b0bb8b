"""Tiled inference: cut an image (or a latent) into overlapping tiles, run a model on each, blend.

Diffusion SR models are trained on fixed crop sizes and run out of memory on large inputs, so the
official code bases all tile, in one of three styles (see docs/METHODS.md, "Tiling"): ResShift and
SinSR chop the LR image into pixel tiles and average the overlaps uniformly; StableSR blends
*latent* tiles with a Gaussian window at every sampling step ("progressive patch aggregation");
OSEDiff blends latent tiles with a Gaussian window once.  This module is our own implementation of
those behaviours: `plan_tiles` lays out tiles that cover the image exactly (the last tile of a row or
column is shifted back to end at the border, so there are no slivers), `run_tiled` runs an upscaler
on LR pixel tiles and blends the outputs ("uniform" = the ResShift/SinSR averaging, "gaussian" =
seam-free weighting), and `blend_tiles` is the same-size latent variant a sampler calls once per
step.  Blending is done in place into one output buffer plus one weight buffer, so memory grows
with the output image, not with the number of tiles.  `pad_to_multiple`/`crop_to` implement the
"reflect-pad the LR to the method's size multiple, then crop back" rule of `MethodInfo`.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from sr_core.types import ProgressFn

__all__ = [
    "DEFAULT_SIGMA_FRAC",
    "pad_to_multiple",
    "crop_to",
    "plan_tiles",
    "request_overlap",
    "gaussian_weights",
    "run_tiled",
    "blend_tiles",
]

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1), end-exclusive

# Standard deviation of the Gaussian window as a fraction of the tile side.  A wide window
# (e.g. 0.3) keeps ~25% of its peak weight at the tile edge, which leaves a visible step where a
# tile's edge enters an overlap; 0.15 keeps the edge weight at ~0.4% of the peak (still strictly
# positive) while the cross-fade stays a few pixels wide.
DEFAULT_SIGMA_FRAC = 0.15

_BLENDS = ("gaussian", "uniform")


# --------------------------------------------------------------------------------------------
# padding


def _pad_axis(x: torch.Tensor, amount: int, axis: int, mode: str) -> torch.Tensor:
    """Pad `amount` pixels at the end of `axis` (-1: width, -2: height)."""
    if amount <= 0:
        return x
    size = x.shape[axis]
    if mode == "reflect" and amount >= size:
        mode = "replicate"  # reflect needs pad < side (a 1-pixel side cannot be reflected)
    pad = (0, amount, 0, 0) if axis == -1 else (0, 0, 0, amount)
    if mode == "constant":
        return F.pad(x, pad, mode="constant", value=0.0)
    return F.pad(x, pad, mode=mode)


def pad_to_multiple(
    x: torch.Tensor, multiple: int, mode: str = "reflect"
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad a (N, C, H, W) tensor at the bottom/right so H and W are multiples of `multiple`.

    `mode` is "reflect" (default; per axis it falls back to "replicate" when that side is too
    short to reflect), "replicate" or "constant" (zeros).  Returns the padded tensor and the
    original (H, W), for `crop_to`.  `multiple` <= 1 returns `x` itself.
    """
    if x.dim() != 4:
        raise ValueError(f"pad_to_multiple expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if mode not in ("reflect", "replicate", "constant"):
        raise ValueError(f"unknown padding mode {mode!r}; use 'reflect', 'replicate' or 'constant'")
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if multiple is None or multiple <= 1:
        return x, (h, w)
    ph = (-h) % multiple
    pw = (-w) % multiple
    x = _pad_axis(x, pw, -1, mode)
    x = _pad_axis(x, ph, -2, mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Top-left crop of the last two dimensions to (h, w) (undoes `pad_to_multiple`)."""
    if x.shape[-2] < h or x.shape[-1] < w:
        raise ValueError(f"cannot crop a {tuple(x.shape[-2:])} tensor to ({h}, {w})")
    return x[..., :h, :w]


# --------------------------------------------------------------------------------------------
# planning and weights


def _axis_starts(n: int, t: int, stride: int) -> list[int]:
    """Starts of tiles of length t covering [0, n) with neighbours at most `stride` apart.

    The count is the smallest that respects `stride`; the first tile starts at 0, the last ends at
    n, and the rest are spread evenly in between (so overlaps are >= tile - stride and all about the
    same, instead of one nearly duplicate last tile).
    """
    if t >= n:
        return [0]
    count = -(-(n - t) // stride) + 1  # ceil((n - t) / stride) + 1
    span = n - t
    return [(i * span) // (count - 1) for i in range(count)]


def request_overlap(tile: int, overlap: int) -> int:
    """The overlap a request's tiles get: the asked one, at most half the tile.

    A larger overlap adds little to the blend (every pixel is already under four Gaussian windows) but
    multiplies the number of model calls as (tile / (tile - overlap))^2: a 40-px tile with the default
    32-px overlap steps 8 px, 6x the calls of a 20-px overlap, and a 16-px latent tile with a 15-px one
    steps 1 px.  Methods pass user tile settings through this; `plan_tiles` itself keeps refusing
    overlap >= tile.
    """
    return max(0, min(int(overlap), int(tile) // 2))


def plan_tiles(h: int, w: int, tile: int, overlap: int) -> list[Box]:
    """Tiles (y0, x0, y1, x1) covering an h x w image, row by row.

    Every tile is min(tile, h) x min(tile, w) (no thin slivers).  Along each axis the first tile
    starts at 0, the last ends at the border, and the fewest tiles whose neighbours start at most
    `tile - overlap` apart are spread evenly in between, so every overlap is >= `overlap` (plain
    "stride tile - overlap, last tile shifted back" would leave one odd, often near-total, overlap).  `tile` <= 0 means one tile covering
    everything.  An image no larger than a tile gives one tile.  Raises ValueError when
    overlap < 0 or overlap >= tile (with tile > 0), or when h or w < 1.
    """
    h, w, tile, overlap = int(h), int(w), int(tile), int(overlap)
    if h < 1 or w < 1:
        raise ValueError(f"cannot tile an empty image ({h} x {w})")
    if tile <= 0:
        return [(0, 0, h, w)]
    if overlap < 0:
        raise ValueError(f"tile overlap must be >= 0, got {overlap}")
    if overlap >= tile:
        raise ValueError(
            f"tile overlap ({overlap}) must be smaller than the tile size ({tile}); "
            f"lower the overlap or raise the tile size"
        )
    th, tw = min(tile, h), min(tile, w)
    stride = tile - overlap
    ys = _axis_starts(h, th, stride)
    xs = _axis_starts(w, tw, stride)
    return [(y, x, y + th, x + tw) for y in ys for x in xs]


def _gauss_1d(n: int, sigma_frac: float) -> torch.Tensor:
    centre = (n - 1) / 2.0
    sigma = sigma_frac * n
    pos = torch.arange(n, dtype=torch.float64)
    g = torch.exp(-0.5 * ((pos - centre) / sigma) ** 2)
    return g / g.max()


def gaussian_weights(
    th: int,
    tw: int,
    *,
    sigma_frac: float = DEFAULT_SIGMA_FRAC,
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device | str] = None,
) -> torch.Tensor:
    """A (th, tw) separable Gaussian window, 1 at the centre, standard deviation sigma_frac * side.

    Strictly positive everywhere (values are floored at 1e-12 of the peak after the cast), so a
    sum of windows never divides by zero at the border of an image.
    """
    if th < 1 or tw < 1:
        raise ValueError(f"window size must be positive, got ({th}, {tw})")
    if not sigma_frac > 0:
        raise ValueError(f"sigma_frac must be > 0, got {sigma_frac}")
    win = torch.outer(_gauss_1d(int(th), sigma_frac), _gauss_1d(int(tw), sigma_frac))
    win = win.clamp_min(1e-12)
    win = win.to(dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny if dtype.is_floating_point else 1
    return win.clamp_min(tiny)


# --------------------------------------------------------------------------------------------
# blending


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # Accumulate low-precision outputs in float32; the result is cast back at the end.
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        return torch.float32
    return dtype


class _Accumulator:
    """Weighted sum of tile outputs in one buffer, plus the sum of the weights."""

    def __init__(self, out_h: int, out_w: int, blend: str, sigma_frac: float):
        self.out_h, self.out_w = out_h, out_w
        self.blend = blend
        self.sigma_frac = sigma_frac
        self.buf: Optional[torch.Tensor] = None
        self.wsum: Optional[torch.Tensor] = None
        self.out_dtype: Optional[torch.dtype] = None
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    def _window(self, h: int, w: int) -> torch.Tensor:
        key = (h, w)
        if key not in self._windows:
            assert self.buf is not None
            if self.blend == "gaussian":
                win = gaussian_weights(
                    h, w, sigma_frac=self.sigma_frac, dtype=self.buf.dtype, device=self.buf.device
                )
            else:
                win = torch.ones(h, w, dtype=self.buf.dtype, device=self.buf.device)
            self._windows[key] = win
        return self._windows[key]

    def add(self, y: torch.Tensor, box: Box) -> None:
        y0, x0, y1, x1 = box
        if self.buf is None:
            self.out_dtype = y.dtype
            acc = _acc_dtype(y.dtype)
            n, c = y.shape[0], y.shape[1]
            self.buf = torch.zeros(n, c, self.out_h, self.out_w, dtype=acc, device=y.device)
            self.wsum = torch.zeros(1, 1, self.out_h, self.out_w, dtype=acc, device=y.device)
        assert self.wsum is not None
        if y.shape[:2] != self.buf.shape[:2]:
            raise ValueError(
                f"tile function returned (N, C) = {tuple(y.shape[:2])} for one tile and "
                f"{tuple(self.buf.shape[:2])} for an earlier one"
            )
        win = self._window(y1 - y0, x1 - x0)
        self.buf[:, :, y0:y1, x0:x1].add_(y.to(device=self.buf.device, dtype=self.buf.dtype) * win)
        self.wsum[:, :, y0:y1, x0:x1].add_(win)

    def result(self) -> torch.Tensor:
        assert self.buf is not None and self.wsum is not None and self.out_dtype is not None
        self.buf.div_(self.wsum)
        out = self.buf if self.buf.dtype == self.out_dtype else self.buf.to(self.out_dtype)
        self.buf = self.wsum = None
        self._windows.clear()
        return out


def _check_blend(blend: str) -> None:
    if blend not in _BLENDS:
        raise ValueError(f"unknown blend {blend!r}; valid: {', '.join(_BLENDS)}")


def _run_padded(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, multiple: int) -> torch.Tensor:
    """fn on x padded to `multiple`, output cropped back to x's size times `scale`."""
    xp, (h, w) = pad_to_multiple(x, multiple)
    y = fn(xp)
    if not isinstance(y, torch.Tensor) or y.dim() != 4:
        raise ValueError("the tile function must return a (N, C, H, W) tensor")
    want = (xp.shape[-2] * scale, xp.shape[-1] * scale)
    if tuple(y.shape[-2:]) != want:
        raise ValueError(
            f"the tile function returned {tuple(y.shape[-2:])} for a {tuple(xp.shape[-2:])} input; "
            f"expected {want} (scale {scale})"
        )
    return crop_to(y, h * scale, w * scale)


def run_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    scale: int,
    tile: int,
    overlap: int,
    multiple: int = 1,
    blend: str = "gaussian",
    progress: Optional[ProgressFn] = None,
    sigma_frac: float = DEFAULT_SIGMA_FRAC,
    with_box: bool = False,
) -> torch.Tensor:
    """Upscale `x` (N, C, H, W) by running `fn` on overlapping LR tiles and blending the outputs.

    `fn` maps an LR tile (N, C, h, w) to (N, C', h*scale, w*scale); each tile is first padded to
    `multiple` (reflect, see `pad_to_multiple`) and its output cropped back.  Tiles come from
    `plan_tiles(H, W, tile, overlap)`; when that is a single tile, `fn` is called once on the whole
    (padded) image and nothing is blended.  Otherwise outputs are weighted by a window at output
    resolution ("gaussian": `gaussian_weights`, seam-free; "uniform": plain averaging of overlaps,
    as ResShift/SinSR do) and accumulated in place into one buffer, then divided by the summed
    weights.  `progress(fraction, message)` is called after every tile, ending at 1.0.  With
    `with_box=True`, `fn` is called as `fn(tile, box, index, count)` with box = (y0, x0, y1, x1) in LR
    pixels, so a method can cut position-dependent inputs (noise) for its tile.  The result
    has the dtype and device of `fn`'s output (accumulation runs in float32 for half types).
    """
    if x.dim() != 4:
        raise ValueError(f"run_tiled expects a (N, C, H, W) tensor, got shape {tuple(x.shape)}")
    if int(scale) != scale or scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    scale = int(scale)
    _check_blend(blend)
    h, w = int(x.shape[-2]), int(x.shape[-1])
    boxes = plan_tiles(h, w, tile, overlap)
    n = len(boxes)
    if with_box:
        fn_box = fn
        state = {}

        def fn(t: torch.Tensor) -> torch.Tensor:  # noqa: F811 - binds the current box
            return fn_box(t, state["box"], state["i"], n)
    else:
        state = {}
    if n == 1:
        state.update(box=(0, 0, h, w), i=0)
        y = _run_padded(fn, x, scale, multiple)
        if progress is not None:
            progress(1.0, "tile 1/1")
        return y
    acc = _Accumulator(h * scale, w * scale, blend, sigma_frac)
    for i, (y0, x0, y1, x1) in enumerate(boxes):
        state.update(box=(y0, x0, y1, x1), i=i)
        y = _run_padded(fn, x[:, :, y0:y1, x0:x1], scale, multiple)
        acc.add(y, (y0 * scale, x0 * scale, y1 * scale, x1 * scale))
        del y
        if progress is not None:
            progress((i + 1) / n, f"tile {i + 1}/{n}")
    return acc.result()


def blend_tiles(
    fn: Callable[..., torch.Tensor],
    z: torch.Tensor,
    *,
    tile: int,
    overlap: int,
    sigma_frac: float = DEFAULT_SIGMA_FRAC,
    with_box: bool = False,
) -> torch.Tensor:
    """Apply a same-size map `fn` to overlapping tiles of a latent `z` (N, C, H, W), Gaussian-blended.

    `fn` takes a latent tile (N, C, th, tw) and returns (N, C', th, tw) (e.g. a denoiser's epsilon
    or x0 prediction at the current step).  A sampler calls this once per step with a closure over
    the step's timestep/conditioning, which is StableSR's progressive patch aggregation (and, called
    once, OSEDiff's latent tiling).  With `with_box=True`, `fn` is called as `fn(tile, box)` with
    box = (y0, x0, y1, x1) in latent pixels, so it can crop matching conditioning tensors.  When
    the latent fits in one tile, `fn` is called once on all of `z`.  Same planner and validation
    as `run_tiled`; memory is one output buffer plus one weight map.
    """
    if z.dim() != 4:
        raise ValueError(f"blend_tiles expects a (N, C, H, W) tensor, got shape {tuple(z.shape)}")
    h, w = int(z.shape[-2]), int(z.shape[-1])
    boxes = plan_tiles(h, w, tile, overlap)

    def call(t: torch.Tensor, box: Box) -> torch.Tensor:
        y = fn(t, box) if with_box else fn(t)
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or tuple(y.shape[-2:]) != tuple(t.shape[-2:]):
            got = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(
                f"blend_tiles: fn must return (N, C, {t.shape[-2]}, {t.shape[-1]}) for a tile of that size, got {got}"
            )
        return y

    if len(boxes) == 1:
        return call(z, boxes[0])
    acc = _Accumulator(h, w, "gaussian", sigma_frac)
    for box in boxes:
        y0, x0, y1, x1 = box
        acc.add(call(z[:, :, y0:y1, x0:x1], box), box)
    return acc.result()
