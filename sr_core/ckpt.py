"""Read PyTorch Lightning checkpoints (`.ckpt`) without running their pickled code.

The official StableSR weights (`stablesr_000117.ckpt`, `stablesr_turbo.ckpt`, `vqgan_cfw_00011.ckpt`
of IceClear/StableSR, read there by `load_model_from_config` in scripts/sr_val_ddpm_text_T_vqganfin_*
with a plain `torch.load`) are Lightning pickles: besides the `state_dict` they hold callback states,
hyper-parameters (omegaconf containers) and numpy scalars, so `torch.load(weights_only=True)` refuses
them and a plain `torch.load` would import pytorch_lightning/omegaconf and run whatever the pickle
says.  Here `torch.load` gets a restricted `pickle_module`: its `Unpickler.find_class` resolves only an
explicit allowlist (torch's tensor/parameter rebuild functions, dtypes, `torch.Size`, devices,
`collections.OrderedDict`, builtin containers and scalars) from modules that are already imported,
and turns every other global into an inert stand-in class that records its arguments and state,
never importing the module it names (so `os.system` in a `__reduce__` becomes a harmless record).
Storage classes are handled by torch itself.  Both the zip format of `torch.save` (memory-mapped when
asked) and the legacy non-zip format are read.  The code is ours.
"""

from __future__ import annotations

import collections
import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, Mapping, Union

import torch

__all__ = ["load_lightning_state_dict", "load_checkpoint_object", "RestrictedUnpickler", "InertObject",
           "ALLOWED_GLOBALS"]

PathLike = Union[str, os.PathLike]


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """Stand-in for `_codecs.encode`, which protocol-2 pickles use to rebuild `bytes`; latin-1 only."""
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return obj.encode(encoding, errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    """(module, name) -> object, every one taken from a module that torch has already imported."""
    import builtins
    import torch._utils as tu

    allowed: dict[tuple[str, str], Any] = {}
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3", "_rebuild_parameter",
                 "_rebuild_parameter_with_state", "_rebuild_sparse_tensor", "_rebuild_nested_tensor",
                 "_rebuild_meta_tensor_no_storage", "_rebuild_wrapper_subclass", "_rebuild_qtensor"):
        if hasattr(tu, name):
            allowed[("torch._utils", name)] = getattr(tu, name)
    import torch._tensor

    allowed[("torch._tensor", "_rebuild_from_type_v2")] = torch._tensor._rebuild_from_type_v2
    allowed[("torch", "Tensor")] = torch.Tensor
    allowed[("torch._tensor", "Tensor")] = torch.Tensor
    allowed[("torch.nn.parameter", "Parameter")] = torch.nn.Parameter
    allowed[("torch", "Size")] = torch.Size
    allowed[("torch", "device")] = torch.device
    for name in dir(torch):  # dtypes (torch.float32 ...), layouts (torch.strided), memory formats
        obj = getattr(torch, name, None)
        if isinstance(obj, (torch.dtype, torch.layout, torch.memory_format)):
            allowed[("torch", name)] = obj
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("collections", "defaultdict")] = collections.defaultdict
    allowed[("collections", "deque")] = collections.deque
    for name in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "bool", "str",
                 "bytes", "bytearray", "slice", "range", "object"):
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = getattr(builtins, name)  # protocol-0/1 names from Python 2
    allowed[("_codecs", "encode")] = _latin1_encode
    return allowed


ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = _allowed_globals()


class InertObject:
    """Stand-in for a class the pickle names but we do not trust (e.g. a Lightning callback).

    It accepts any constructor arguments, state (`__setstate__`), items (`SETITEMS`) and list
    elements (`APPENDS`) and keeps them as data; it has no behaviour.  `_sr_global` is the
    'module.name' the pickle asked for.
    """

    _sr_global = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        object.__setattr__(self, "_sr_args", args)
        object.__setattr__(self, "_sr_kwargs", kwargs)
        object.__setattr__(self, "_sr_state", None)
        object.__setattr__(self, "_sr_items", {})
        object.__setattr__(self, "_sr_list", [])
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        object.__setattr__(self, "_sr_state", state)

    def __setitem__(self, key, value):
        self._sr_items[key] = value

    def __getitem__(self, key):
        return self._sr_items[key]

    def append(self, value):
        self._sr_list.append(value)

    def extend(self, values):
        self._sr_list.extend(values)

    def __repr__(self):
        return f"<inert {self._sr_global}>"


def _inert_class(module: str, name: str) -> type:
    qual = f"{module}.{name}"
    return type(f"Inert[{qual}]", (InertObject,), {"_sr_global": qual, "__module__": __name__})


def _inert_reconstructor(cls, base, state):
    """`copyreg._reconstructor` (protocol 0/1 object rebuild) without calling `base.__new__`."""
    obj = _inert_class("copyreg", "_reconstructor")(cls, base)
    obj.__setstate__(state)
    return obj


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose globals come from `ALLOWED_GLOBALS`; anything else is inert."""

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle API
        obj = ALLOWED_GLOBALS.get((module, name))
        if obj is not None:
            return obj
        if (module, name) == ("copyreg", "_reconstructor"):
            return _inert_reconstructor
        return _inert_class(module, name)


def _load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


def _loads(data: bytes, **kwargs):
    import io

    return RestrictedUnpickler(io.BytesIO(data), **kwargs).load()


# The object passed as `pickle_module` to `torch.load` (it needs Unpickler and load).
_restricted_pickle = types.ModuleType("sr_core.ckpt.restricted_pickle")
_restricted_pickle.Unpickler = RestrictedUnpickler
_restricted_pickle.load = _load
_restricted_pickle.loads = _loads
_restricted_pickle.UnpicklingError = pickle.UnpicklingError
_restricted_pickle.HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL


def load_checkpoint_object(path: PathLike, *, mmap: bool = True) -> Any:
    """The whole checkpoint object, read through the restricted unpickler (tensors on the CPU).

    `mmap` memory-maps the tensor data of zip-format files (legacy files are read normally).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    use_mmap = bool(mmap) and zipfile.is_zipfile(path)
    obj = torch.load(str(path), map_location="cpu", pickle_module=_restricted_pickle,
                     weights_only=False, mmap=use_mmap)
    return obj



def load_lightning_state_dict(path: PathLike, *, mmap: bool = True) -> dict[str, torch.Tensor]:
    """{name: tensor} of a Lightning checkpoint (its `state_dict` entry) or of a plain state dict.

    Names are returned exactly as stored (e.g. `model.diffusion_model.*`, `first_stage_model.*`);
    non-tensor entries of the state dict (there are none in Lightning's) are dropped.  Raises
    ValueError when the file holds no state dict of tensors.
    """
    obj = load_checkpoint_object(path, mmap=mmap)
    sd = obj
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        sd = obj["state_dict"]
    if not isinstance(sd, Mapping):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not a checkpoint dict")
    out = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not out:
        keys = ", ".join(map(str, list(sd.keys())[:8])) if isinstance(sd, Mapping) else ""
        raise ValueError(f"{path} has no state_dict of tensors (top-level keys: {keys})")
    return out
