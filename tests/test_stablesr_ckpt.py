"""sr_core.ckpt: Lightning checkpoints are read through a restricted unpickler.

The checkpoints here are written with classes from a module `fake_pl.callbacks` that exists only while
saving (as pytorch_lightning/omegaconf objects exist when the official StableSR checkpoints were saved);
loading must return the tensors bit-exactly, never import that module, and never run a pickled
`__reduce__` payload.
"""

from __future__ import annotations

import os
import sys
import types
from collections import OrderedDict

import pytest
import torch

from sr_core.ckpt import InertObject, load_checkpoint_object, load_lightning_state_dict


class _ImportSpy:
    """A meta-path finder that records (and refuses) every attempt to import `fake_pl`."""

    def __init__(self):
        self.seen: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "fake_pl":
            self.seen.append(name)
        return None


def _fake_module():
    pkg = types.ModuleType("fake_pl")
    mod = types.ModuleType("fake_pl.callbacks")

    class ModelCheckpoint:
        def __init__(self):
            self.best_model_path = "/somewhere/last.ckpt"
            self.best_k = {"a": torch.tensor(1.5)}

    class AttributeDict(dict):  # like pytorch_lightning.utilities.parsing.AttributeDict
        pass

    class DictConfig:  # like omegaconf containers: state through __getstate__
        def __init__(self, content):
            self._content = content

        def __getstate__(self):
            return {"_content": self._content, "_flags": {"readonly": True}}

        def __setstate__(self, state):
            self.__dict__.update(state)

    for cls in (ModelCheckpoint, AttributeDict, DictConfig):
        cls.__module__ = "fake_pl.callbacks"
        cls.__qualname__ = cls.__name__
        setattr(mod, cls.__name__, cls)
    pkg.callbacks = mod
    return pkg, mod


class _Payload:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalPayload:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return (eval, (self.code,))


def _state_dict():
    g = torch.Generator().manual_seed(0)
    return OrderedDict([
        ("model.diffusion_model.input_blocks.0.0.weight", torch.randn(8, 4, 3, 3, generator=g)),
        ("model.diffusion_model.input_blocks.0.0.bias", torch.randn(8, generator=g)),
        ("first_stage_model.encoder.conv_in.weight", torch.randn(4, 3, 3, 3, generator=g).half()),
        ("cond_stage_model.model.positional_embedding", torch.randn(77, 16, generator=g)),
        ("betas", torch.linspace(0.1, 0.2, 10, dtype=torch.float64)),
        ("view", torch.arange(24, dtype=torch.int64).reshape(4, 6)[:, 1:4]),  # non-contiguous view
        ("param", torch.nn.Parameter(torch.ones(3))),
    ])


def _write(path, zip_format: bool, marker: str):
    pkg, mod = _fake_module()
    sys.modules["fake_pl"], sys.modules["fake_pl.callbacks"] = pkg, mod
    try:
        hp = mod.AttributeDict(lr=1e-4, cfg=mod.DictConfig({"target": "ldm.models.diffusion.ddpm.X"}))
        ckpt = {
            "epoch": 117,
            "global_step": 12345,
            "pytorch-lightning_version": "1.4.2",
            "state_dict": _state_dict(),
            "callbacks": {mod.ModelCheckpoint: mod.ModelCheckpoint()},
            "hyper_parameters": hp,
            "payload": _Payload(f"touch {marker}"),
            "payload2": _EvalPayload(f"open({marker!r}, 'w')"),
            "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4}]}],
            "misc": (set([1, 2]), frozenset({"a"}), b"bytes", bytearray(b"ba"), 2 + 3j, slice(1, 5)),
        }
        torch.save(ckpt, path, _use_new_zipfile_serialization=zip_format)
    finally:
        del sys.modules["fake_pl"], sys.modules["fake_pl.callbacks"]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_lightning_checkpoint_tensors_exact_and_nothing_imported_or_run(tmp_path, zip_format, mmap):
    path = tmp_path / "model.ckpt"
    marker = tmp_path / "pwned"
    _write(path, zip_format, str(marker))
    assert "fake_pl" not in sys.modules
    spy = _ImportSpy()
    sys.meta_path.insert(0, spy)
    try:
        sd = load_lightning_state_dict(path, mmap=mmap)
        obj = load_checkpoint_object(path, mmap=mmap)
    finally:
        sys.meta_path.remove(spy)
    assert spy.seen == [] and "fake_pl" not in sys.modules
    assert not marker.exists(), "a pickled payload was executed"

    ref = _state_dict()
    assert list(sd) == list(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        assert torch.equal(sd[k], v.detach()), k
    assert isinstance(sd["param"], torch.Tensor)

    # the rest of the checkpoint is data: numbers as they were, foreign objects inert
    assert obj["epoch"] == 117 and obj["global_step"] == 12345
    assert obj["misc"] == ({1, 2}, frozenset({"a"}), b"bytes", bytearray(b"ba"), 2 + 3j, slice(1, 5))
    assert torch.equal(obj["optimizer_states"][0]["state"][0]["step"], torch.tensor(3.0))
    for key in ("payload", "payload2", "hyper_parameters"):
        assert isinstance(obj[key], InertObject), key
    assert obj["payload"]._sr_global.endswith(".system") and obj["payload"]._sr_args == (f"touch {marker}",)
    assert obj["payload2"]._sr_global in ("builtins.eval", "__builtin__.eval")
    hp = obj["hyper_parameters"]
    assert hp._sr_global == "fake_pl.callbacks.AttributeDict" and hp["lr"] == 1e-4
    assert hp["cfg"]._sr_state["_content"] == {"target": "ldm.models.diffusion.ddpm.X"}
    (cb_key, cb), = obj["callbacks"].items()
    assert cb_key._sr_global == "fake_pl.callbacks.ModelCheckpoint"
    assert torch.equal(cb._sr_state["best_k"]["a"], torch.tensor(1.5))


def test_plain_state_dict_and_errors(tmp_path):
    ref = _state_dict()
    p = tmp_path / "plain.pth"
    torch.save(ref, p)
    sd = load_lightning_state_dict(p)
    assert all(torch.equal(sd[k], v.detach()) for k, v in ref.items())

    p2 = tmp_path / "nostate.ckpt"
    torch.save({"epoch": 3, "note": "no tensors"}, p2)
    with pytest.raises(ValueError, match="no state_dict"):
        load_lightning_state_dict(p2)
    with pytest.raises(FileNotFoundError):
        load_lightning_state_dict(tmp_path / "missing.ckpt")


def test_weights_resolver_reads_lightning_ckpt_through_the_restricted_unpickler(tmp_path):
    """`sr_core.weights.load_state_dict` routes `.ckpt` files here (weights_only=True refuses them)."""
    from sr_core.weights import load_state_dict

    marker = tmp_path / "ran"
    path = tmp_path / "stablesr_tiny.ckpt"
    _write(path, True, str(marker))
    sd = load_state_dict(path)
    want = _state_dict()
    assert set(sd) == set(want) and all(torch.equal(sd[k], want[k]) for k in want)
    assert not marker.exists() and "fake_pl" not in sys.modules
