"""Registry and weight resolution/loading: duplicate ids, unknown ids, resolver order, strict loading."""

import hashlib
import http.server
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from sr_core import weights
from sr_core.registry import Registry, default_registry
from sr_core.types import InputError, WeightSpec, WeightsUnavailable


def test_default_registry_lists_methods_with_reasons():
    reg = default_registry()
    assert reg.ids()[:2] == ["bicubic", "lanczos"]
    for m in reg:
        assert m.info.id in reg
        a = m.availability()
        if m.info.family == "baseline":
            assert a.ok
        elif not a.ok:  # offline in tests: the reason names the missing file and where to put it
            assert "not available" in a.reason and m.info.weights[0].filename in a.reason


def test_duplicate_and_unknown_ids():
    reg = Registry()
    reg.add(default_registry().get("bicubic"))
    with pytest.raises(ValueError, match="twice"):
        reg.add(default_registry().get("bicubic"))
    with pytest.raises(InputError, match="valid ids: bicubic"):
        reg.get("nope")


def _spec(tmp_path, **kw):
    return WeightSpec(key="model", filename="net.safetensors", **kw)


def test_resolve_order_and_missing_message(tmp_path, monkeypatch):
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SR_WEIGHTS_DIR", raising=False)
    spec = _spec(tmp_path, env="TEST_NET_PATH", url="http://127.0.0.1:9/net.safetensors")
    monkeypatch.setenv("SR_OFFLINE", "1")
    with pytest.raises(WeightsUnavailable) as e:
        weights.resolve(spec)
    msg = str(e.value)
    assert "net.safetensors" in msg and "offline" in msg and "SR_WEIGHTS_DIR" in msg and "TEST_NET_PATH" in msg
    # a folder in SR_WEIGHTS_DIR is found
    folder = tmp_path / "w"
    folder.mkdir()
    (folder / "net.safetensors").write_bytes(b"x")
    monkeypatch.setenv("SR_WEIGHTS_DIR", str(folder))
    assert weights.resolve(spec) == folder / "net.safetensors"
    # the env var of the spec wins over the folder; an explicit path wins over both
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"y")
    monkeypatch.setenv("TEST_NET_PATH", str(other))
    assert weights.resolve(spec) == other
    exp = tmp_path / "explicit.safetensors"
    exp.write_bytes(b"z")
    assert weights.resolve(spec, exp) == exp
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        weights.resolve(spec, tmp_path / "missing.safetensors")


def test_sha256_mismatch_is_reported(tmp_path, monkeypatch):
    f = tmp_path / "net.safetensors"
    f.write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert weights.resolve(_spec(tmp_path, sha256=good), f) == f
    with pytest.raises(WeightsUnavailable, match="sha256"):
        weights.resolve(_spec(tmp_path, sha256="0" * 64), f)


def test_download_from_local_server(tmp_path, monkeypatch):
    """The real download path, against a server on loopback; then the cache is used."""
    served = tmp_path / "srv"
    served.mkdir()
    payload = b"weights-bytes" * 100
    (served / "net.safetensors").write_bytes(payload)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(served), **k)  # noqa: E731
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))
        monkeypatch.delenv("SR_OFFLINE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("SR_WEIGHTS_DIR", raising=False)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/net.safetensors"
        spec = _spec(tmp_path, url=url, sha256=hashlib.sha256(payload).hexdigest())
        p = weights.resolve(spec)
        assert p == tmp_path / "cache" / "net.safetensors" and p.read_bytes() == payload
        bad = _spec(tmp_path, url=url.replace("net.", "missing."))
        bad = WeightSpec(key="m", filename="missing.safetensors", url=bad.url)
        with pytest.raises(WeightsUnavailable, match="download failed"):
            weights.resolve(bad)
    finally:
        httpd.shutdown()


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.register_buffer("scale", torch.ones(1))


def test_canonicalize_and_strict_load(tmp_path):
    net = _Net()
    sd = {f"module._orig_mod.{k}": v.clone() + 1 for k, v in net.state_dict().items()}
    wrapped = {"state_dict": {"model": sd}, "global_step": 5}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    loaded = weights.load_state_dict(tmp_path / "ckpt.pth")
    assert set(loaded) == {"conv.weight", "conv.bias", "scale"}
    net2 = _Net()
    weights.load_into(net2, loaded)
    assert torch.equal(net2.conv.weight, net.conv.weight + 1)
    # safetensors round trip
    save_file({k: v.contiguous() for k, v in loaded.items()}, str(tmp_path / "n.safetensors"))
    assert set(weights.load_state_dict(tmp_path / "n.safetensors")) == set(loaded)
    # key maps
    renamed = {("body." + k): v for k, v in loaded.items()}
    weights.load_into(_Net(), renamed, key_map=lambda k: k[len("body."):])
    # strictness: missing, unexpected, wrong shape all named
    with pytest.raises(WeightsUnavailable, match="missing 1: scale"):
        weights.load_into(_Net(), {k: v for k, v in loaded.items() if k != "scale"})
    with pytest.raises(WeightsUnavailable, match="unexpected 1: extra"):
        weights.load_into(_Net(), {**loaded, "extra": torch.zeros(1)})
    with pytest.raises(WeightsUnavailable, match="shape mismatch"):
        weights.load_into(_Net(), {**loaded, "conv.bias": torch.zeros(5)})
    weights.load_into(_Net(), {**loaded, "ema.x": torch.zeros(1)}, ignore=("ema.",))


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsUnavailable, match="safe checkpoint"):
        weights.load_state_dict(tmp_path / "evil.pth")


def test_trained_minis_are_registered_only_once_exported(tmp_path, monkeypatch):
    from sr_core import registry

    monkeypatch.setattr(weights, "ASSETS_WEIGHTS", tmp_path)
    assert "sinsr-mini" not in registry._build_default().ids()
    (tmp_path / "sinsr-mini").mkdir()
    (tmp_path / "sinsr-mini" / "config.json").write_text("{}")
    ids = registry._build_default().ids()
    assert "sinsr-mini" in ids and "resshift-mini" not in ids and "srdiff-mini" not in ids
