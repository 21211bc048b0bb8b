"""Named settings per method, read from `presets/<method-id>.json`.

A preset file maps a preset name to a dict of `Settings` fields it overrides, for example
`{"fast": {"steps": 4}, "fidelity": {"fidelity": 1.0}}`.  Files are validated on load: an unknown
field, a wrong type or a value the method rejects is an error that names the file and the preset.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

from .types import InputError, MethodInfo, Settings

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_TYPES = {"scale": int, "steps": int, "fidelity": float, "seed": int, "tile": int, "tile_overlap": int,
          "color_fix": str, "device": str, "prompt": str}


def _coerce(path: Path, name: str, key: str, value):
    if key not in _FIELDS:
        raise InputError(f"{path}: preset {name!r} sets unknown field {key!r}; valid fields: {', '.join(_FIELDS)}")
    want = _TYPES[key]
    if value is None and key in ("steps", "color_fix"):
        return None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, want) or isinstance(value, bool):
        raise InputError(f"{path}: preset {name!r} field {key!r} must be {want.__name__}, not {value!r}")
    return value


def load_presets(method_id: str, folder: Optional[Path] = None, info: Optional[MethodInfo] = None) -> dict[str, dict]:
    """Return {preset name: {field: value}} for a method ({} when it has no file)."""
    path = Path(folder or PRESETS_DIR) / f"{method_id}.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise InputError(f"{path}: expected an object of presets")
    out = {}
    for name, fields in raw.items():
        if not isinstance(fields, dict):
            raise InputError(f"{path}: preset {name!r} must be an object of settings")
        out[name] = {k: _coerce(path, name, k, v) for k, v in fields.items()}
        if info is not None:
            from .api import check_settings

            try:
                check_settings(info, Settings(scale=info.default_scale).replace(**out[name]))
            except InputError as e:
                raise InputError(f"{path}: preset {name!r}: {e}") from e
    return out


def apply_preset(settings: Settings, method_id: str, name: str, folder: Optional[Path] = None) -> Settings:
    presets = load_presets(method_id, folder)
    if name not in presets:
        valid = ", ".join(presets) or "none"
        raise InputError(f"method {method_id!r} has no preset {name!r}; valid presets: {valid}")
    return settings.replace(**presets[name])
