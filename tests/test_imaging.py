"""Tests of sr_core.imaging: loading and validation, mode/alpha handling, MATLAB bicubic resize."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sr_core.imaging import (
    DEFAULT_MAX_PIXELS,
    _resize_torch_compute,
    bicubic_upscale,
    imresize,
    load_image,
    max_input_pixels,
    merge_alpha,
    mod_crop,
    pil_to_tensor,
    pil_to_uint8,
    save_png,
    split_alpha,
    tensor_to_pil,
)
from sr_core.types import InputError

SHARED = Path(__file__).resolve().parents[2] / "shared"
SET5 = SHARED / "data" / "eval" / "Set5"
needs_set5 = pytest.mark.skipif(
    not (SET5 / "HR").is_dir() or not (SET5 / "LR_bicubic").is_dir(),
    reason=f"Set5 benchmark data not found at {SET5} (shared data folder absent)",
)


def _rand_u8(h, w, c=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (h, w) if c is None else (h, w, c)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (8-bit RGB) and which has no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else -1


# ------------------------------------------------------------------------------------ loading


def test_load_path_bytes_filelike_pil_array_agree(tmp_path):
    a = _rand_u8(20, 30)
    img = Image.fromarray(a)
    p = tmp_path / "x.png"
    img.save(p)
    data = p.read_bytes()
    before = _open_fds()
    outs = [
        load_image(p),
        load_image(str(p)),
        load_image(data),
        load_image(io.BytesIO(data)),
        load_image(img),
        load_image(a),
    ]
    assert _open_fds() == before  # no file handle left open
    for o in outs:
        assert o.size == (30, 20)
        assert np.array_equal(np.asarray(o.convert("RGB")), a)


def test_load_returns_detached_copy_of_pil_input():
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    out = load_image(img)
    out.putpixel((0, 0), (9, 9, 9))
    assert img.getpixel((0, 0)) == (1, 2, 3)


def test_load_numpy_kinds():
    u16 = np.full((5, 6, 3), 257 * 200, np.uint16)
    assert np.array_equal(np.asarray(load_image(u16)), np.full((5, 6, 3), 200, np.uint8))
    f = np.full((5, 6), 0.5, np.float32)
    im = load_image(f)
    assert im.mode == "L" and np.asarray(im)[0, 0] == 128
    rgba = _rand_u8(5, 6, 4)
    im = load_image(rgba)
    assert im.mode == "RGBA" and np.array_equal(np.asarray(im), rgba)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        load_image(np.full((4, 4, 3), 200.0))
    with pytest.raises(InputError, match="shape"):
        load_image(np.zeros((4, 4, 5), np.uint8))
    with pytest.raises(InputError, match="NaN"):
        load_image(np.full((4, 4), np.nan))


def test_exif_orientation_applied():
    # 64 wide x 32 high: left half red, right half blue; orientation 6 = rotate 90 deg clockwise.
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32] = (255, 0, 0)
    a[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    im = load_image(buf.getvalue())
    assert im.size == (32, 64)  # width and height swapped
    top = np.asarray(im.convert("RGB"))[8, 16].astype(int)
    bottom = np.asarray(im.convert("RGB"))[56, 16].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_truncated_png(tmp_path):
    data = _png_bytes(Image.fromarray(_rand_u8(64, 64)))
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    before = _open_fds()
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(p)
    assert _open_fds() == before
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2])


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_bytes(b"this is plain text, not pixels\n" * 4)
    with pytest.raises(InputError, match="not an image file"):
        load_image(p)
    with pytest.raises(InputError, match="not an image file"):
        load_image(b"\x00\x01\x02 definitely not an image")


def test_empty_and_missing(tmp_path):
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_image(p)
    with pytest.raises(InputError, match="empty"):
        load_image(b"")
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError):
        load_image(12345)


def test_zero_size_images():
    with pytest.raises(InputError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(InputError, match="zero size"):
        load_image(np.zeros((0, 5, 3), np.uint8))


def test_size_limit_checked_from_header(monkeypatch):
    monkeypatch.delenv("SR_MAX_INPUT_PIXELS", raising=False)
    assert max_input_pixels() == DEFAULT_MAX_PIXELS
    header = _png_header_only(5000, 5000)  # 25 MP claimed, no pixel data at all
    # our limit fires before any decoding (otherwise this would be "truncated")
    with pytest.raises(InputError, match=r"5000x5000.*SR_MAX_INPUT_PIXELS") as e:
        load_image(header)
    assert "16,000,000" in str(e.value)
    # explicit argument
    with pytest.raises(InputError, match="too large"):
        load_image(Image.new("RGB", (100, 100)), max_pixels=5000)
    load_image(Image.new("RGB", (100, 100)), max_pixels=10_000)
    # the env var is read at call time: now the header passes and decoding fails instead
    monkeypatch.setenv("SR_MAX_INPUT_PIXELS", "30_000_000")
    assert max_input_pixels() == 30_000_000
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_image(header)
    for bad in ("lots", "inf", "nan"):
        monkeypatch.setenv("SR_MAX_INPUT_PIXELS", bad)
        with pytest.raises(InputError, match="SR_MAX_INPUT_PIXELS"):
            max_input_pixels()


def test_pillow_decompression_bomb_becomes_input_error(monkeypatch):
    monkeypatch.setenv("SR_MAX_INPUT_PIXELS", "0")  # our own limit off: Pillow's guard must speak
    for side in (12_000, 100_000):  # 144 MP (Pillow warns) and 10 GP (Pillow errors)
        with pytest.raises(InputError, match="decompression-bomb"):
            load_image(_png_header_only(side, side))


@pytest.mark.parametrize("fmt,kw", [("WEBP", {"lossless": True}), ("BMP", {}), ("TIFF", {})])
def test_format_round_trip(tmp_path, fmt, kw):
    a = _rand_u8(17, 23, seed=3)
    p = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(a).save(p, format=fmt, **kw)
    im = load_image(p)
    assert im.format == fmt
    assert np.array_equal(pil_to_uint8(im), a)


# ------------------------------------------------------------------------------- modes, alpha


def _check_rgb(rgb, size):
    assert rgb.mode == "RGB" and rgb.size == size


def test_split_alpha_8bit_modes():
    g = _rand_u8(6, 5, None)
    rgb, a = split_alpha(Image.fromarray(g))  # L
    _check_rgb(rgb, (5, 6))
    assert a is None and np.array_equal(np.asarray(rgb)[:, :, 1], g)

    alpha = _rand_u8(6, 5, None, seed=1)
    rgb, a = split_alpha(Image.fromarray(np.dstack([g, alpha])))  # LA
    _check_rgb(rgb, (5, 6))
    assert a.mode == "L" and np.array_equal(np.asarray(a), alpha)
    assert np.array_equal(np.asarray(rgb)[:, :, 0], g)

    c = _rand_u8(6, 5)
    rgb, a = split_alpha(Image.fromarray(np.dstack([c, alpha])))  # RGBA
    assert np.array_equal(np.asarray(rgb), c) and np.array_equal(np.asarray(a), alpha)

    rgb, a = split_alpha(Image.fromarray(c))  # RGB
    assert a is None and np.array_equal(np.asarray(rgb), c)

    bilevel = Image.fromarray(g).convert("1")
    rgb, a = split_alpha(bilevel)
    _check_rgb(rgb, (5, 6))
    assert a is None and set(np.unique(np.asarray(rgb))) <= {0, 255}

    cmyk = Image.new("CMYK", (5, 6), (0, 255, 255, 0))  # red in CMYK
    rgb, a = split_alpha(cmyk)
    assert a is None and rgb.getpixel((0, 0)) == (255, 0, 0)

    ycc = Image.fromarray(c).convert("YCbCr")
    rgb, a = split_alpha(ycc)
    assert a is None and np.abs(np.asarray(rgb).astype(int) - c).max() <= 3


def test_split_alpha_palette():
    p = Image.new("P", (4, 3))
    p.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    p.putpixel((1, 1), 1)
    p.putpixel((2, 2), 2)
    rgb, a = split_alpha(p)
    assert a is None and rgb.getpixel((1, 1)) == (255, 0, 0) and rgb.getpixel((2, 2)) == (0, 255, 0)

    p.info["transparency"] = 0  # index 0 transparent
    rgb, a = split_alpha(p)
    _check_rgb(rgb, (4, 3))
    assert a is not None and a.mode == "L"
    assert a.getpixel((0, 0)) == 0 and a.getpixel((1, 1)) == 255
    assert rgb.getpixel((1, 1)) == (255, 0, 0)

    # P with transparency survives a PNG round trip through load_image
    rgb2, a2 = split_alpha(load_image(_png_bytes(p)))
    assert np.array_equal(np.asarray(a2), np.asarray(a))

    pa = Image.new("PA", (4, 3), (1, 128))
    pa.putpalette([0, 0, 0, 10, 20, 30] + [0] * (256 * 3 - 6))
    rgb, a = split_alpha(pa)
    assert a is not None and a.getpixel((0, 0)) == 128 and rgb.getpixel((0, 0)) == (10, 20, 30)


def test_split_alpha_premultiplied():
    rgba = Image.new("RGBA", (3, 3), (200, 100, 50, 255))
    rgb, a = split_alpha(rgba.convert("RGBa"))
    assert rgb.getpixel((0, 0)) == (200, 100, 50) and a.getpixel((0, 0)) == 255


def test_split_alpha_16bit_and_float():
    v = np.array([[0, 257 * 128, 65535], [257, 1000, 65280]], dtype=np.uint16)
    expect = np.floor(v / 257.0 + 0.5).astype(np.uint8)  # scaled, not clipped
    im16 = Image.fromarray(v)
    assert im16.mode == "I;16"
    rgb, a = split_alpha(im16)
    assert a is None and np.array_equal(np.asarray(rgb)[:, :, 0], expect)

    im16b = Image.frombytes("I;16B", (3, 2), v.astype(">u2").tobytes())
    rgb, _ = split_alpha(im16b)
    assert np.array_equal(np.asarray(rgb)[:, :, 2], expect)

    im32 = Image.fromarray(v.astype(np.int32))
    assert im32.mode == "I"
    rgb, _ = split_alpha(im32)
    assert np.array_equal(np.asarray(rgb)[:, :, 0], expect)

    wide = Image.fromarray(np.array([[-1000, 0, 1000]], dtype=np.int32))  # outside 16-bit: stretched
    rgb, _ = split_alpha(wide)
    assert list(np.asarray(rgb)[0, :, 0]) == [0, 128, 255]

    f = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert f.mode == "F"
    rgb, _ = split_alpha(f)
    assert list(np.asarray(rgb)[0, :, 0]) == [0, 128, 255]


def test_merge_alpha():
    rgb = Image.new("RGB", (4, 3), (1, 2, 3))
    assert merge_alpha(rgb, None).mode == "RGB"
    a = Image.new("L", (4, 3), 77)
    out = merge_alpha(rgb, a)
    assert out.mode == "RGBA" and out.getpixel((2, 1)) == (1, 2, 3, 77)
    assert rgb.mode == "RGB"  # input untouched
    with pytest.raises(ValueError):
        merge_alpha(rgb, Image.new("L", (5, 3)))


def test_save_png_keeps_rgba(tmp_path):
    a = _rand_u8(9, 7, 4)
    p = save_png(Image.fromarray(a), tmp_path / "sub" / "o.png")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "RGBA"
        assert np.array_equal(np.asarray(im), a)
    assert [x.name for x in (tmp_path / "sub").iterdir()] == ["o.png"]  # no temp file left


# ------------------------------------------------------------------------------------ resize


@needs_set5
@pytest.mark.parametrize("s", [2, 3, 4])
def test_imresize_bit_exact_with_official_set5_lr(s):
    for hr_path in sorted((SET5 / "HR").glob("*.png")):
        hr = mod_crop(pil_to_uint8(load_image(hr_path)), s)
        lr_path = SET5 / "LR_bicubic" / f"X{s}" / f"{hr_path.stem}x{s}.png"
        ref = pil_to_uint8(load_image(lr_path))
        out = imresize(hr, 1 / s)
        assert out.dtype == np.uint8 and out.shape == ref.shape, hr_path.name
        assert np.array_equal(out, ref), f"{hr_path.name} x{s}: {np.count_nonzero(out != ref)} values differ"


def test_imresize_shapes_and_types():
    a = _rand_u8(10, 7)
    assert imresize(a, 3).shape == (30, 21, 3)
    assert imresize(a[:, :, 0], 3).shape == (30, 21)
    assert imresize(a, 1 / 3).shape == (4, 3, 3)  # ceil(10/3), ceil(7/3)
    assert imresize(a, output_shape=(5, 9)).shape == (5, 9, 3)
    assert imresize(np.zeros((255, 6), np.uint8), 1 / 3).shape == (85, 2)  # exact product not over-ceiled
    f = a.astype(np.float32) / 255
    assert imresize(f, 2).dtype == np.float32
    const = np.full((12, 9, 3), 0.3)
    assert np.allclose(imresize(const, 1 / 3), 0.3) and np.allclose(imresize(const, 4), 0.3)
    assert np.array_equal(imresize(a, 1), a)
    with pytest.raises(ValueError):
        imresize(a)
    with pytest.raises(ValueError):
        imresize(a, 2, output_shape=(3, 3))


def test_imresize_dimension_order_follows_matlab():
    # scale (0.5, 0.25): width has the smaller scale, so MATLAB resizes the width first.
    a = _rand_u8(40, 48, seed=7)
    out = imresize(a, (0.5, 0.25))
    width_first = imresize(imresize(a, output_shape=(40, 12)), output_shape=(20, 12))
    height_first = imresize(imresize(a, output_shape=(20, 48)), output_shape=(20, 12))
    assert np.array_equal(out, width_first)
    assert not np.array_equal(out, height_first)  # the order matters with per-pass rounding
    # equal scales: height first
    out = imresize(a, 0.25)
    assert np.array_equal(out, imresize(imresize(a, output_shape=(10, 48)), output_shape=(10, 12)))


@pytest.mark.parametrize("kw", [{"scale": 1 / 3}, {"scale": 4}, {"output_shape": (37, 53)}, {"scale": (0.5, 2)}])
def test_imresize_torch_matches_numpy(kw):
    rng = np.random.default_rng(1)
    x = rng.random((2, 3, 64, 80))
    ref = np.stack([imresize(x[i].transpose(1, 2, 0), **kw).transpose(2, 0, 1) for i in range(2)])
    t = torch.from_numpy(x.astype(np.float32))
    out = imresize(t, **kw)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert float(np.abs(out.numpy() - ref).max()) < 1e-4
    chw = imresize(t[0], **kw)  # CHW works too
    assert torch.allclose(chw, out[0])
    # uint8 tensors follow the numpy uint8 path exactly
    u8 = (x[0].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    tu8 = imresize(torch.from_numpy(u8).permute(2, 0, 1).contiguous(), **kw)
    assert tu8.dtype == torch.uint8
    assert np.array_equal(tu8.permute(1, 2, 0).numpy(), imresize(u8, **kw))
    # the tensor arithmetic used for uint8 on accelerators (CPU tensors take the numpy route)
    dev = _resize_torch_compute(torch.from_numpy(u8).permute(2, 0, 1).contiguous(), kw.get("scale"), kw.get("output_shape"))
    assert np.array_equal(dev.permute(1, 2, 0).numpy(), imresize(u8, **kw))


def test_imresize_torch_no_grad_and_device():
    t = torch.rand(1, 3, 16, 16, requires_grad=True)
    out = imresize(t, 2)
    assert not out.requires_grad and out.device == t.device
    if torch.cuda.is_available():  # pragma: no cover - only with a GPU
        c = imresize(t.detach().cuda(), 2)
        assert c.is_cuda and torch.allclose(c.cpu(), out, atol=1e-5)


def test_bicubic_upscale_modes():
    rgb = Image.fromarray(_rand_u8(7, 10))
    up = bicubic_upscale(rgb, 3)
    assert up.mode == "RGB" and up.size == (30, 21)
    assert np.array_equal(np.asarray(up), imresize(np.asarray(rgb), 3))
    g = bicubic_upscale(rgb.convert("L"), 2)
    assert g.mode == "L" and g.size == (20, 14)
    rgba = bicubic_upscale(Image.fromarray(_rand_u8(7, 10, 4)), 4)
    assert rgba.mode == "RGBA" and rgba.size == (40, 28)
    p = bicubic_upscale(rgb.convert("P"), 2)
    assert p.mode == "RGB" and p.size == (20, 14)
    with pytest.raises(InputError):
        bicubic_upscale(rgb, 0)


def test_tensor_conversions_round_trip():
    a = _rand_u8(11, 13)
    t = pil_to_tensor(Image.fromarray(a))
    assert t.shape == (1, 3, 11, 13) and t.dtype == torch.float32
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    back = tensor_to_pil(t)
    assert back.mode == "RGB" and np.array_equal(np.asarray(back), a)
    assert np.array_equal(np.asarray(tensor_to_pil(t[0])), a)
    clamp = tensor_to_pil(torch.tensor([[[[-1.0, 2.0]]]]).expand(1, 3, 1, 2))
    assert np.asarray(clamp)[0, :, 0].tolist() == [0, 255]
    assert pil_to_tensor(Image.new("RGBA", (2, 2))).shape == (1, 3, 2, 2)


def test_mod_crop():
    a = np.zeros((13, 10, 3))
    assert mod_crop(a, 4).shape == (12, 8, 3)
    assert mod_crop(a[:, :, 0], 3).shape == (12, 9)
    assert mod_crop(a, 1).shape == a.shape
