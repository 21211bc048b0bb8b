"""Image input/output and MATLAB-compatible bicubic resizing for the super-resolution toolkit.

This module is the project's single door for pixels: `load_image` turns whatever a caller hands
over (path, bytes, file object, PIL image or numpy array) into a fully decoded, EXIF-oriented
PIL image and rejects bad input with a readable `InputError` (not an image, truncated, empty,
zero-sized, or larger than the pixel limit, which is checked from the header before decoding);
`split_alpha`/`merge_alpha` reduce any Pillow mode to RGB plus an optional alpha plane; and
`imresize` is a re-implementation of MATLAB's `imresize(I, scale, 'bicubic')` (cubic kernel
a = -0.5, kernel widened by 1/scale when shrinking, symmetric index folding at the borders,
smaller-scale dimension first, uint8 rounding after each pass) for numpy arrays and torch tensors,
bit-exact with the official MATLAB-made Set5 LR files.  It corresponds to the "data preparation"
part of the usual SR benchmark protocol (mod-crop, bicubic degradation) plus the tensor/PIL
conversions the methods and the facade share.
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from sr_core.types import InputError

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MAX_PIXELS_ENV",
    "max_input_pixels",
    "load_image",
    "split_alpha",
    "merge_alpha",
    "imresize",
    "bicubic_upscale",
    "pil_to_tensor",
    "tensor_to_pil",
    "pil_to_uint8",
    "mod_crop",
    "save_png",
]

DEFAULT_MAX_PIXELS = 16_000_000
MAX_PIXELS_ENV = "SR_MAX_INPUT_PIXELS"

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, io.IOBase, Image.Image, np.ndarray]


# --------------------------------------------------------------------------------------------
# Input limit
# --------------------------------------------------------------------------------------------


def max_input_pixels() -> int:
    """The input pixel limit: `$SR_MAX_INPUT_PIXELS` when set (read now), else DEFAULT_MAX_PIXELS.

    The variable takes a positive number ("25000000", "25_000_000" or "2.5e7"); a value <= 0
    disables our own limit (Pillow's decompression-bomb guard still applies).
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw.replace("_", "")))
    except (ValueError, OverflowError):
        raise InputError(
            f"{MAX_PIXELS_ENV}={raw!r} is not a number; set it to a pixel count such as 25000000"
        ) from None
    return value


def _check_size(width: int, height: int, max_pixels: Optional[int], what: str = "image") -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"the {what} has zero size ({width}x{height} pixels)")
    limit = max_input_pixels() if max_pixels is None else int(max_pixels)
    n = width * height
    if limit > 0 and n > limit:
        raise InputError(
            f"the {what} is too large: {width}x{height} = {n:,} pixels, over the limit of "
            f"{limit:,} pixels; downscale it first, or raise the limit with the environment "
            f"variable {MAX_PIXELS_ENV}"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _describe(src) -> str:
    if isinstance(src, (str, os.PathLike)):
        return f" ({os.fspath(src)})"
    name = getattr(src, "name", None)
    return f" ({name})" if isinstance(name, str) else ""


def _decode(fp, label: str, max_pixels: Optional[int]) -> Image.Image:
    """Open from a binary file object we own, check the header size, decode fully, orient."""
    try:
        with warnings.catch_warnings():
            # Pillow warns (and only later errors) past its own bomb limit: make it an error now.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
    except UnidentifiedImageError:
        raise InputError(
            f"not an image file{label}: Pillow cannot identify it (supported: PNG, JPEG, WebP, "
            f"BMP, TIFF and the other formats Pillow reads)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputError(
            f"the image{label} is too large for Pillow's decompression-bomb guard: {e} "
            f"(limit PIL.Image.MAX_IMAGE_PIXELS = {Image.MAX_IMAGE_PIXELS:,})"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InputError(f"the image file{label} is truncated or corrupt ({e})") from None
    try:
        width, height = im.size
        _check_size(width, height, max_pixels)  # header only: nothing decoded yet
        try:
            im.load()
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"not enough memory to decode the image{label} ({width}x{height})") from None
        except Exception as e:  # OSError (truncated), zlib.error, SyntaxError, struct.error ...
            raise InputError(f"the image file{label} is truncated or corrupt ({e})") from None
        try:
            out = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not make a good image unreadable
            out = None
        if out is None or out is im:
            out = im.copy()
        out.load()
        out.format = im.format  # keep the source format name for callers that show it
        return out
    finally:
        im.close()


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise InputError(
            f"an image array must be HxW, HxWx1, HxWx2, HxWx3 or HxWx4; got shape {tuple(a.shape)}"
        )
    if a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint8:
        pass
    elif a.dtype == np.uint16:
        a = np.floor(a.astype(np.float64) / 257.0 + 0.5).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if a.size and not np.all(np.isfinite(a)):
            raise InputError("the image array contains NaN or infinite values")
        if a.size and (a.min() < -1e-3 or a.max() > 1.0 + 1e-3):
            raise InputError(
                f"a float image array must hold values in [0, 1]; got [{a.min():g}, {a.max():g}]"
            )
        a = np.floor(np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise InputError(f"unsupported image array dtype {a.dtype} (use uint8, uint16 or float in [0, 1])")
    return Image.fromarray(np.ascontiguousarray(a))  # uint8: L, LA, RGB or RGBA by channel count


def load_image(src: ImageSource, *, max_pixels: Optional[int] = None) -> Image.Image:
    """Load an image from a path, bytes, binary file object, PIL image or numpy array.

    The result is a fully decoded PIL image (any mode; use `split_alpha` to get RGB) with the EXIF
    orientation applied.  `max_pixels` defaults to `max_input_pixels()`; the size is checked from
    the file header before the pixels are decoded.  A file object is read to its end and left
    open (it belongs to the caller); files opened here are always closed.  Numpy arrays may be
    HxW, HxWx3 or HxWx4 (also HxWx1 / HxWx2) of uint8, uint16 (scaled by 1/257) or float in
    [0, 1].  Raises `InputError` with a readable message for anything unusable.
    """
    if isinstance(src, Image.Image):
        width, height = src.size
        _check_size(width, height, max_pixels)
        try:
            src.load()
        except Exception as e:
            raise InputError(f"the image is truncated or corrupt ({e})") from None
        try:
            out = ImageOps.exif_transpose(src)
        except Exception:  # a broken EXIF block must not make a good image unreadable
            out = None
        return src.copy() if out is None or out is src else out
    if isinstance(src, np.ndarray):
        if src.ndim >= 2:
            _check_size(int(src.shape[1]), int(src.shape[0]), max_pixels, "image array")
        return _array_to_pil(src)
    if isinstance(src, torch.Tensor):
        raise InputError("load_image does not take tensors; convert with tensor_to_pil first")
    if isinstance(src, (bytes, bytearray, memoryview)):
        data = bytes(src)
        if not data:
            raise InputError("the image data is empty (0 bytes)")
        return _decode(io.BytesIO(data), "", max_pixels)
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        label = _describe(src)
        if not path.exists():
            raise InputError(f"image file not found{label}")
        if path.is_dir():
            raise InputError(f"expected an image file but got a folder{label}")
        if path.stat().st_size == 0:
            raise InputError(f"the image file is empty (0 bytes){label}")
        try:
            with open(path, "rb") as f:
                return _decode(f, label, max_pixels)
        except PermissionError:
            raise InputError(f"cannot read the image file (permission denied){label}") from None
    if hasattr(src, "read"):
        label = _describe(src)
        data = src.read()
        if isinstance(data, str):
            raise InputError(f"the file object{label} is opened in text mode; open it with 'rb'")
        if not data:
            raise InputError(f"the image data is empty (0 bytes){label}")
        return _decode(io.BytesIO(data), label, max_pixels)
    raise InputError(
        f"cannot read an image from a {type(src).__name__}; pass a path, bytes, a binary file "
        f"object, a PIL image or a numpy array"
    )


# --------------------------------------------------------------------------------------------
# Modes and alpha
# --------------------------------------------------------------------------------------------


def _gray_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map a high-depth single-channel plane to uint8 by scaling, never by clipping."""
    if mode.startswith("I;16") or mode == "I":
        a = a.astype(np.int64)
        if mode == "I" and a.size and (a.min() < 0 or a.max() > 65535):
            return _normalise(a.astype(np.float64))
        # 16-bit data (mode I is what Pillow uses for 16-bit PNGs in some versions): 65535 -> 255.
        return np.floor(a / 257.0 + 0.5).astype(np.uint8)
    # mode F
    a = a.astype(np.float64)
    a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = float(a.min()), float(a.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.floor(a * 255.0 + 0.5).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.floor(a + 0.5).astype(np.uint8)
    return _normalise(a)


def _normalise(a: np.ndarray) -> np.ndarray:
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.floor((a - lo) * (255.0 / (hi - lo)) + 0.5).astype(np.uint8)


def split_alpha(img: Image.Image) -> tuple[Image.Image, Optional[Image.Image]]:
    """Split any Pillow image into (RGB image, alpha as mode L or None).

    Alpha is returned for RGBA, RGBa (un-premultiplied first), LA, La, PA and P images with a
    transparency entry or an RGBA palette; other modes give None.  16-bit modes (I;16, I;16B,
    I;16L, and I when its values fit 0..65535) are scaled by 1/257; mode I outside that range
    and mode F outside [0, 255] are stretched from their min..max; F in [0, 1] is scaled by 255.
    CMYK, YCbCr, LAB, HSV and 1 (bilevel) use Pillow's conversions.  The input is not modified.
    """
    mode = img.mode
    if mode == "RGB":
        return img.copy(), None
    if mode in ("RGBA", "RGBa"):
        rgba = img.convert("RGBA") if mode == "RGBa" else img
        return rgba.convert("RGB"), rgba.getchannel("A")
    if mode in ("LA", "La", "PA"):
        la = (img.convert("LA") if mode == "La" else img).convert("RGBA")
        return la.convert("RGB"), la.getchannel("A")
    if mode == "P":
        has_alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        if has_alpha:
            rgba = img.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A")
        return img.convert("RGB"), None
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img)
        g = Image.fromarray(_gray_to_uint8(a, mode))
        return g.convert("RGB"), None
    if mode in ("1", "L", "CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        try:
            return img.convert("RGB"), None
        except ValueError:
            pass
    try:
        if "A" in mode or "a" in mode:
            rgba = img.convert("RGBA")
            return rgba.convert("RGB"), rgba.getchannel("A")
        return img.convert("RGB"), None
    except ValueError:
        raise InputError(f"unsupported image mode {mode!r}") from None


def merge_alpha(rgb: Image.Image, alpha: Optional[Image.Image]) -> Image.Image:
    """Attach `alpha` (mode L, same size) to `rgb`; returns RGBA, or the RGB image when alpha is None."""
    if rgb.mode != "RGB":
        rgb = rgb.convert("RGB")
    if alpha is None:
        return rgb
    if alpha.size != rgb.size:
        raise ValueError(f"alpha size {alpha.size} does not match image size {rgb.size}")
    if alpha.mode != "L":
        alpha = alpha.convert("L")
    out = rgb.copy()
    out.putalpha(alpha)
    return out


# --------------------------------------------------------------------------------------------
# MATLAB-compatible bicubic imresize
# --------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


@lru_cache(maxsize=64)
def _contributions(in_len: int, out_len: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights (out_len, P) and 0-based source indices (out_len, P) for one dimension.

    Output pixel centres are mapped back to input coordinates (1-based, as MATLAB does), the
    kernel is widened by 1/scale when shrinking (antialiasing), each row of weights is
    normalised to sum 1, out-of-range indices are folded symmetrically (mirror with the edge
    pixel repeated), and columns whose weights are all zero are dropped.
    """
    kernel_width = 4.0
    if scale < 1.0:
        def kernel(x):
            return scale * _cubic(scale * x)
        kernel_width = kernel_width / scale
    else:
        kernel = _cubic
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1.0 - 1.0 / scale)
    left = np.floor(u - kernel_width / 2.0)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    w = kernel(u[:, None] - idx)
    w = w / np.sum(w, axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx0 = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(w != 0, axis=0)
    w = np.ascontiguousarray(w[:, keep])
    idx0 = np.ascontiguousarray(idx0[:, keep])
    w.setflags(write=False)
    idx0.setflags(write=False)
    return w, idx0


def _plan(in_hw: tuple[int, int], scale, output_shape) -> tuple[tuple[int, int], tuple[float, float], list[int]]:
    if (scale is None) == (output_shape is None):
        raise ValueError("imresize: give exactly one of scale and output_shape")
    in_h, in_w = in_hw
    if in_h <= 0 or in_w <= 0:
        raise ValueError(f"imresize: empty input of size {in_h}x{in_w}")
    if output_shape is not None:
        out_h, out_w = (int(v) for v in output_shape)
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"imresize: output_shape must be positive, got {output_shape}")
        sh, sw = out_h / in_h, out_w / in_w
    else:
        if isinstance(scale, (tuple, list)):
            sh, sw = float(scale[0]), float(scale[1])
        else:
            sh = sw = float(scale)
        if not (sh > 0 and sw > 0) or not (math.isfinite(sh) and math.isfinite(sw)):
            raise ValueError(f"imresize: scale must be positive, got {scale}")

        def out_len(n: int, s: float) -> int:
            v = n * s
            r = round(v)
            # ceil, as MATLAB; an exact product that lands a hair above an integer (e.g. n * (1/3)
            # with n a multiple of 3) is taken as that integer.
            return int(r) if abs(v - r) <= 1e-9 * max(1.0, v) else int(math.ceil(v))

        out_h, out_w = max(1, out_len(in_h, sh)), max(1, out_len(in_w, sw))
    # MATLAB applies the dimension with the smaller scale first; ties keep height first.
    order = [0, 1] if sh <= sw else [1, 0]
    return (out_h, out_w), (sh, sw), order


_CHUNK_ELEMS = 1 << 21  # float64 elements per work chunk (16 MiB): bounded memory, cache friendly


def _pass_numpy(src: np.ndarray, w: np.ndarray, idx: np.ndarray, store: np.dtype) -> np.ndarray:
    """Resize along axis 0 of contiguous `src`; integer `store` rounds half up and clips.

    Each output row is the sum of its taps in order, accumulated in float64 (as MATLAB does).
    With integer storage the result is rounded half away from zero and clipped to the type's
    range (negative sums clip to 0, so floor(x) + (frac >= 0.5) is exact for every case).
    """
    n_out = w.shape[0]
    rest = src.shape[1:]
    per_row = int(np.prod(rest)) if rest else 1
    step = max(1, _CHUNK_ELEMS // max(per_row, 1))
    integer = np.issubdtype(store, np.integer)
    top = float(np.iinfo(store).max) if integer else 0.0
    out = np.empty((n_out,) + rest, dtype=store)
    acc_buf = np.empty((min(step, n_out),) + rest, dtype=np.float64)
    tmp_buf = np.empty_like(acc_buf)
    tail = (1,) * len(rest)
    for r0 in range(0, n_out, step):
        r1 = min(n_out, r0 + step)
        acc, tmp = acc_buf[: r1 - r0], tmp_buf[: r1 - r0]
        wc = w[r0:r1]
        np.multiply(src[idx[r0:r1, 0]], wc[:, 0].reshape((-1,) + tail), out=acc)
        for p in range(1, w.shape[1]):
            np.multiply(src[idx[r0:r1, p]], wc[:, p].reshape((-1,) + tail), out=tmp)
            acc += tmp
        if integer:
            np.floor(acc, out=tmp)
            acc -= tmp
            tmp += acc >= 0.5
            np.clip(tmp, 0.0, top, out=tmp)
            out[r0:r1] = tmp
        else:
            out[r0:r1] = acc
    return out


def _resize_numpy(x: np.ndarray, scale, output_shape) -> np.ndarray:
    if x.ndim not in (2, 3):
        raise ValueError(f"imresize: numpy input must be HxW or HxWxC, got shape {x.shape}")
    dtype = x.dtype
    integer = np.issubdtype(dtype, np.integer)
    if integer and dtype not in (np.uint8, np.uint16):
        raise ValueError(f"imresize: unsupported integer dtype {dtype} (use uint8, uint16 or float)")
    if not integer and not np.issubdtype(dtype, np.floating):
        raise ValueError(f"imresize: unsupported dtype {dtype}")
    (out_h, out_w), (sh, sw), order = _plan(x.shape[:2], scale, output_shape)
    # MATLAB stores each pass in the input's class: integers are rounded after every pass.
    store = np.dtype(dtype) if integer else np.dtype(np.float64)
    cur = np.ascontiguousarray(x) if integer else x.astype(np.float64)
    for dim in order:
        n_out = out_h if dim == 0 else out_w
        # Work along axis 0 of a contiguous array: row gathers are then plain memory copies.
        src = cur if dim == 0 else np.ascontiguousarray(np.swapaxes(cur, 0, 1))
        w, idx = _contributions(src.shape[0], n_out, sh if dim == 0 else sw)
        res = _pass_numpy(src, w, idx, store)
        cur = res if dim == 0 else np.swapaxes(res, 0, 1)
    return np.ascontiguousarray(cur.astype(dtype, copy=False))


def _resize_torch(x: torch.Tensor, scale, output_shape) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"imresize: tensor input must be (..., H, W), got shape {tuple(x.shape)}")
    in_dtype = x.dtype
    integer = not (in_dtype.is_floating_point or in_dtype.is_complex)
    if in_dtype.is_complex or in_dtype == torch.bool:
        raise ValueError(f"imresize: unsupported tensor dtype {in_dtype}")
    if integer and in_dtype not in (torch.uint8,):
        raise ValueError(f"imresize: unsupported integer tensor dtype {in_dtype} (use uint8 or float)")
    if integer and x.device.type == "cpu":  # same arithmetic, the chunked numpy path is faster on CPU
        lead = tuple(x.shape[:-2])
        hwb = x.detach().reshape((-1,) + tuple(x.shape[-2:])).permute(1, 2, 0).numpy()
        res = torch.from_numpy(_resize_numpy(hwb, scale, output_shape)).permute(2, 0, 1)
        return res.reshape(lead + tuple(res.shape[-2:])).contiguous()
    return _resize_torch_compute(x, scale, output_shape)


def _resize_torch_compute(x: torch.Tensor, scale, output_shape) -> torch.Tensor:
    """The tensor arithmetic of `imresize` (float, or uint8 in float64 with per-pass rounding)."""
    in_dtype = x.dtype
    integer = not in_dtype.is_floating_point
    work = torch.float64 if (integer or in_dtype == torch.float64) else torch.float32
    (out_h, out_w), (sh, sw), order = _plan((int(x.shape[-2]), int(x.shape[-1])), scale, output_shape)
    with torch.no_grad():
        cur = x.detach().to(work)
        for dim in order:
            n_out = out_h if dim == 0 else out_w
            # Resize along dim -2 of a contiguous tensor (the width pass works on the transpose).
            src = cur if dim == 0 else cur.transpose(-1, -2).contiguous()
            w_np, idx_np = _contributions(int(src.shape[-2]), n_out, sh if dim == 0 else sw)
            w = torch.from_numpy(np.array(w_np)).to(device=cur.device, dtype=work)
            idx = torch.from_numpy(np.array(idx_np)).to(device=cur.device)
            acc = src.index_select(-2, idx[:, 0]).mul_(w[:, 0, None])
            tmp = torch.empty_like(acc)
            for p in range(1, w.shape[1]):  # in tap order, as MATLAB accumulates
                torch.index_select(src, -2, idx[:, p], out=tmp)
                acc.add_(tmp.mul_(w[:, p, None]))
            if integer:
                f = torch.floor(acc)
                acc = torch.clamp(f + ((acc - f) >= 0.5).to(work), 0.0, 255.0)
            cur = acc if dim == 0 else acc.transpose(-1, -2)
        return cur.contiguous().to(in_dtype)


def imresize(x, scale=None, *, output_shape: Optional[Sequence[int]] = None):
    """MATLAB-compatible `imresize(x, scale, 'bicubic')` (antialiased when shrinking).

    `scale` is a number or an (sh, sw) pair; alternatively `output_shape=(H, W)` (then the scale
    of each dimension is out/in, as in MATLAB).  Output size is ceil(in * scale).
      * numpy uint8 / uint16, HxW or HxWxC: computed in float64 and rounded half away from zero
        and clipped after each pass, as MATLAB does for integer images; same dtype and ndim back.
      * numpy float HxW or HxWxC: computed in float64, no rounding, returned in the input dtype.
      * torch tensor (..., H, W) (e.g. NCHW or CHW), float (any device; computed in float32, or
        float64 for float64 input) or uint8 (rounded per pass like numpy uint8): same dtype and
        device back.  No autograd graph is built.
    """
    if isinstance(x, torch.Tensor):
        return _resize_torch(x, scale, output_shape)
    if isinstance(x, np.ndarray):
        return _resize_numpy(x, scale, output_shape)
    raise TypeError(f"imresize takes a numpy array or a torch tensor, not {type(x).__name__}")


# --------------------------------------------------------------------------------------------
# Conversions and helpers
# --------------------------------------------------------------------------------------------


def pil_to_uint8(img: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB array of any PIL image (alpha dropped, modes converted by `split_alpha`)."""
    rgb, _ = split_alpha(img)
    return np.array(rgb, dtype=np.uint8)


def bicubic_upscale(img: Image.Image, scale: int) -> Image.Image:
    """Upscale a PIL image by an integer factor with MATLAB bicubic on uint8 pixels.

    L, LA, RGB and RGBA are resized as they are (alpha included); other modes go through
    `split_alpha` first (alpha, if any, is resized too and reattached).
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise InputError(f"the upscaling factor must be a positive integer, got {scale!r}")
    scale = int(scale)
    if img.mode in ("L", "LA", "RGB", "RGBA"):
        return Image.fromarray(imresize(np.asarray(img), scale))
    rgb, alpha = split_alpha(img)
    up = Image.fromarray(imresize(np.asarray(rgb), scale))
    if alpha is None:
        return up
    return merge_alpha(up, Image.fromarray(imresize(np.asarray(alpha), scale)))


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """(1, 3, H, W) float32 tensor in [0, 1] on the CPU (alpha dropped; see `split_alpha`)."""
    a = pil_to_uint8(img)
    return torch.from_numpy(a).permute(2, 0, 1).unsqueeze(0).contiguous().to(torch.float32).div_(255.0)


def tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """PIL RGB image of a (1, 3, H, W) or (3, H, W) tensor in [0, 1] (1-channel is replicated).

    NaN becomes 0, values are clamped to [0, 1], multiplied by 255 and rounded half to even
    (`torch.round`) to uint8.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"tensor_to_pil takes a torch tensor, not {type(t).__name__}")
    x = t.detach()
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"tensor_to_pil takes one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"tensor_to_pil expects (1, 3, H, W) or (3, H, W), got {tuple(t.shape)}")
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = torch.nan_to_num(x.to(device="cpu", dtype=torch.float32), nan=0.0)
    a = torch.round(x.clamp(0.0, 1.0) * 255.0).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(a)


def mod_crop(arr: np.ndarray, s: int) -> np.ndarray:
    """Crop the bottom/right of an HxW[xC] array so that H and W are multiples of `s`."""
    s = int(s)
    if s < 1:
        raise ValueError(f"mod_crop: scale must be >= 1, got {s}")
    h, w = arr.shape[0], arr.shape[1]
    return arr[: h - h % s, : w - w % s, ...]


def save_png(img: Image.Image, path: Union[str, os.PathLike]) -> Path:
    """Write `img` as PNG (RGB, RGBA, L and LA kept; other modes via `split_alpha`).

    Parent folders are created; the file is written to a temporary name and moved into place.
    Returns the path.
    """
    path = Path(path)
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = merge_alpha(*split_alpha(img))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=str(path.parent))
    try:
        with os.fdopen(fd, "wb") as f:
            img.save(f, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path
