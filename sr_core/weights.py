"""Weight files: find them, check them, load them safely and strictly.

Resolution order for one `WeightSpec` (ARCHITECTURE.md, "weights.py"):
explicit path (argument) -> the spec's environment variable -> the folder in `SR_WEIGHTS_DIR`
-> bundled `assets/weights/<bundled>` -> the Hugging Face cache (offline look-up) -> download
(Hugging Face hub or a direct release URL) into the cache folder.  Every miss is recorded so
that, when all fail, the error names the file, every place that was looked at and where to put it.

Loading never runs pickled code: safetensors, or `torch.load(weights_only=True)`.  Checkpoints are
canonicalised (`state_dict`/`model`/`params_ema` wrappers, `module.` and `_orig_mod.` prefixes)
and copied into a module strictly: every key mapped, every shape equal, no silent `strict=False`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Union

import torch

from .types import WeightSpec, WeightsUnavailable

PathLike = Union[str, os.PathLike]

ASSETS_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "weights"
ENV_WEIGHTS_DIR = "SR_WEIGHTS_DIR"  # a folder where users drop official files
ENV_CACHE_DIR = "SR_CACHE_DIR"  # where downloads go (default ~/.cache/sr_core)
ENV_OFFLINE = "SR_OFFLINE"  # "1": never try the network


def cache_dir() -> Path:
    return Path(os.environ.get(ENV_CACHE_DIR) or Path.home() / ".cache" / "sr_core")


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _check_digest(spec: WeightSpec, path: Path) -> None:
    if spec.sha256:
        got = sha256_file(path)
        if got != spec.sha256:
            raise WeightsUnavailable(
                f"{path} does not match the expected sha256 of {spec.filename} "
                f"(expected {spec.sha256[:12]}..., got {got[:12]}...). The file is damaged or a "
                f"different version; delete it and fetch it again."
            )


def offline() -> bool:
    """True when SR_OFFLINE or HF_HUB_OFFLINE asks never to touch the network."""
    return os.environ.get(ENV_OFFLINE, "") not in ("", "0") or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")


def _download_url(url: str, dest: Path, timeout: float = 30.0) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out, length=1 << 20)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _hf_download(repo: str, filename: str, local_only: bool) -> Path:
    from huggingface_hub import hf_hub_download  # imported lazily: not needed for bundled weights

    return Path(hf_hub_download(repo_id=repo, filename=filename, local_files_only=local_only))


def candidates(spec: WeightSpec, explicit: Optional[PathLike] = None) -> list[tuple[str, Path]]:
    """Local places to look, in order, as (label, path)."""
    out: list[tuple[str, Path]] = []
    if explicit:
        p = Path(explicit)
        out.append(("explicit path", p / spec.filename if p.is_dir() else p))
    if spec.env and os.environ.get(spec.env):
        p = Path(os.environ[spec.env])
        out.append((f"${spec.env}", p / spec.filename if p.is_dir() else p))
    if os.environ.get(ENV_WEIGHTS_DIR):
        out.append((f"${ENV_WEIGHTS_DIR}", Path(os.environ[ENV_WEIGHTS_DIR]) / spec.filename))
    if spec.bundled:
        out.append(("bundled", ASSETS_WEIGHTS / spec.bundled))
    out.append(("download cache", cache_dir() / spec.filename))
    return out


def locate(spec: WeightSpec, explicit: Optional[PathLike] = None) -> Optional[Path]:
    """The first existing local file for `spec`, or None.  Does not touch the network.  An explicit
    path is the only candidate (as in `resolve`: no silent fallback to another copy)."""
    if explicit:
        p = candidates(spec, explicit)[0][1]
        return p if p.is_file() else None
    for _label, p in candidates(spec, explicit):
        if p.is_file():
            return p
    if spec.hf_repo:
        try:
            return _hf_download(spec.hf_repo, spec.filename, local_only=True)
        except Exception:
            return None
    return None


def missing_message(spec: WeightSpec, explicit: Optional[PathLike] = None, why: str = "") -> str:
    looked = "; ".join(f"{label}: {p}" for label, p in candidates(spec, explicit))
    where = []
    if spec.url:
        where.append(f"download it from {spec.url}")
    if spec.hf_repo:
        where.append(f"get it from the Hugging Face repo {spec.hf_repo}")
    src = (" (" + " or ".join(where) + ")") if where else ""
    env = f", or set {spec.env}=/path/to/{spec.filename}" if spec.env else ""
    size = f" (~{spec.size_mb:g} MB)" if spec.size_mb else ""
    return (
        f"Weight file {spec.filename}{size} is not available{': ' + why if why else ''}. "
        f"Looked in: {looked}. Put the file{src} into a folder and set {ENV_WEIGHTS_DIR}=that folder{env}."
    )


def resolve(spec: WeightSpec, explicit: Optional[PathLike] = None, *, download: bool = True) -> Path:
    """Return a local path for `spec`, downloading it when allowed; raise WeightsUnavailable otherwise."""
    if explicit:  # the user named a file: use it or say it is not there, never fall back silently
        p = candidates(spec, explicit)[0][1]
        if not p.is_file():
            raise WeightsUnavailable(missing_message(spec, explicit, f"{explicit} does not exist"))
        _check_digest(spec, p)
        return p
    found = locate(spec)
    if found is not None:
        _check_digest(spec, found)
        return found
    if not download or offline() or not (spec.url or spec.hf_repo):
        reason = "offline mode" if offline() else ("no download source" if not (spec.url or spec.hf_repo) else "")
        raise WeightsUnavailable(missing_message(spec, explicit, reason))
    errors = []
    if spec.hf_repo:
        try:
            p = _hf_download(spec.hf_repo, spec.filename, local_only=False)
            _check_digest(spec, p)
            return p
        except WeightsUnavailable:
            raise
        except Exception as e:  # network, auth, missing repo ...
            errors.append(f"hub {spec.hf_repo}: {type(e).__name__}: {e}".splitlines()[0])
    if spec.url:
        dest = cache_dir() / spec.filename
        try:
            _download_url(spec.url, dest)
            _check_digest(spec, dest)
            return dest
        except WeightsUnavailable:
            dest.unlink(missing_ok=True)
            raise
        except (OSError, urllib.error.URLError, ValueError) as e:
            errors.append(f"{spec.url}: {type(e).__name__}: {e}".splitlines()[0])
    raise WeightsUnavailable(missing_message(spec, explicit, "download failed (" + "; ".join(errors) + ")"))


# --------------------------------------------------------------------------------------------
# Loading

_WRAPPERS = ("state_dict", "model", "params_ema", "params", "module")
_PREFIXES = ("module.", "_orig_mod.")


def canonicalize(obj: object, *, prefer: Iterable[str] = _WRAPPERS) -> dict[str, torch.Tensor]:
    """Unwrap nested checkpoint dicts down to a flat {name: tensor} and strip wrapper prefixes."""
    sd = obj
    for _ in range(4):  # e.g. {'state_dict': {'model': {...}}}
        if isinstance(sd, Mapping) and not any(isinstance(v, torch.Tensor) for v in sd.values()):
            for key in prefer:
                if key in sd and isinstance(sd[key], Mapping):
                    sd = sd[key]
                    break
            else:
                break
        else:
            break
    if not isinstance(sd, Mapping):
        raise ValueError(f"checkpoint is a {type(sd).__name__}, not a state dict")
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            continue
        name = str(k)
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if name.startswith(p):
                    name = name[len(p):]
                    changed = True
        out[name] = v
    if not out:
        raise ValueError("checkpoint holds no tensors")
    return out


def load_file(path: PathLike) -> object:
    """Read a checkpoint without executing code: safetensors, torch.load(weights_only=True), or for
    Lightning `.ckpt` files (StableSR) the restricted unpickler of `sr_core.ckpt` (tensors and plain
    containers only; any other class becomes an inert stand-in, nothing is imported or run)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file as st_load

        return st_load(str(path))
    if path.suffix == ".ckpt":
        from .ckpt import load_checkpoint_object

        try:
            return load_checkpoint_object(path)
        except Exception as e:
            raise WeightsUnavailable(
                f"{path} could not be read as a checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from e
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(
            f"{path} could not be read as a safe checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from e


def load_state_dict(path: PathLike, *, prefer: Iterable[str] = _WRAPPERS) -> dict[str, torch.Tensor]:
    return canonicalize(load_file(path), prefer=prefer)


KeyMap = Union[Mapping[str, str], Callable[[str], Optional[str]], None]


def load_into(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], key_map: KeyMap = None,
              *, ignore: Iterable[str] = ()) -> None:
    """Copy `state_dict` into `module` strictly.

    `key_map` maps checkpoint names to module names (a dict, or a function returning None to drop a
    key on purpose).  `ignore` lists checkpoint-name prefixes known to be unused (for example an
    EMA copy); anything else that is missing, unexpected or of another shape is an error that lists
    the offending names.
    """
    ignore = tuple(ignore)
    target = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    unexpected = []
    for k, v in state_dict.items():
        if ignore and k.startswith(ignore):
            continue
        if key_map is None:
            name: Optional[str] = k
        elif callable(key_map):
            name = key_map(k)
        else:
            name = key_map.get(k, k)
        if name is None:
            continue
        if name not in target:
            unexpected.append(k)
            continue
        mapped[name] = v
    missing = [k for k in target if k not in mapped]
    bad_shape = [f"{k}: checkpoint {tuple(mapped[k].shape)} vs model {tuple(target[k].shape)}"
                 for k in mapped if tuple(mapped[k].shape) != tuple(target[k].shape)]
    if missing or unexpected or bad_shape:
        def _few(xs):
            return ", ".join(xs[:8]) + (f" ... (+{len(xs) - 8})" if len(xs) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_few(unexpected)}")
        if bad_shape:
            parts.append(f"shape mismatch {len(bad_shape)}: {_few(bad_shape)}")
        raise WeightsUnavailable(f"checkpoint does not fit {type(module).__name__}: " + "; ".join(parts))
    with torch.no_grad():
        for k, v in mapped.items():
            target[k].copy_(v.to(dtype=target[k].dtype))


def save_safetensors(tensors: Mapping[str, torch.Tensor], path: PathLike,
                     metadata: Optional[Mapping[str, str]] = None) -> Path:
    """`safetensors.torch.save_file`, then the header rewritten with its metadata keys sorted.

    safetensors stores the metadata in a hash map, so two saves of the same tensors and metadata can list the
    keys in another order -- other bytes, another sha256 in a bundle's SHA256SUMS.  Sorted, an export is
    reproducible byte for byte (the tensor entries already come in a fixed order)."""
    import json
    import struct

    from safetensors.torch import save_file

    path = Path(path)
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)
    if not metadata or len(metadata) < 2:
        return path
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", None) or {}
    ordered = {"__metadata__": dict(sorted(meta.items())), **header}
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data start stays 8-byte aligned, as safetensors writes it
    path.write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    return path
