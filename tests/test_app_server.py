"""The real app (real sr_core core, `bicubic`) served on 127.0.0.1 and called through gradio_client."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

import app
from sr_core import imaging

gradio_client = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def client():
    demo = app.build_demo(app.Core())
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs())
    try:
        yield Client(demo.local_url, verbose=False)
    finally:
        demo.close()


def lr_image(tmp_path, mode="RGB", name="lr.png"):
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(20, 28, len(mode)), dtype=np.uint8)
    path = tmp_path / name
    Image.fromarray(a, mode).save(path)
    return path, a


def test_upscale_endpoint_matches_matlab_bicubic(client, tmp_path):
    path, a = lr_image(tmp_path)
    out = client.predict(handle_file(str(path)), "bicubic", 4, api_name="/upscale")
    assert str(out).endswith(".png")
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (28 * 4, 20 * 4) and img.mode == "RGB"
        got = np.asarray(img)
    assert np.array_equal(got, imaging.imresize(a, 4.0))


def test_alpha_survives_the_api(client, tmp_path):
    path, a = lr_image(tmp_path, "RGBA", "rgba.png")
    out = client.predict(handle_file(str(path)), "bicubic", 2, None, 0, 0.5, 0, 32, "", "", api_name="/upscale")
    with Image.open(out) as img:
        assert img.mode == "RGBA" and img.size == (56, 40)
        assert np.array_equal(np.asarray(img)[..., :3], imaging.imresize(a[..., :3], 2.0))


def test_bad_input_is_an_error_and_the_server_survives(client, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"these bytes are not an image")
    with pytest.raises(Exception, match="not a readable image"):
        client.predict(handle_file(str(bad)), "bicubic", 4, api_name="/upscale")
    path, _ = lr_image(tmp_path)
    with pytest.raises(Exception, match="supports scale 2, 3, 4, 8, not 5"):
        client.predict(handle_file(str(path)), "bicubic", 5, api_name="/upscale")
    with pytest.raises(Exception, match="unknown method 'nope'"):
        client.predict(handle_file(str(path)), "nope", 4, api_name="/upscale")
    out = client.predict(handle_file(str(path)), "bicubic", 4, api_name="/upscale")
    with Image.open(out) as img:
        assert img.size == (112, 80)
