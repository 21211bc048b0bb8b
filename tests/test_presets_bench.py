"""Preset files are validated on load; bench figures come from one process."""

import json

import pytest

from sr_core import bench
from sr_core.presets import PRESETS_DIR, apply_preset, load_presets
from sr_core.registry import default_registry
from sr_core.types import InputError, MethodInfo, Settings, StepsSpec

INFO = MethodInfo(id="m", label="M", description="", steps=StepsSpec(1, 50, 15), supports_fidelity=True)


def _write(tmp_path, data):
    (tmp_path / "m.json").write_text(json.dumps(data) if not isinstance(data, str) else data)
    return tmp_path


def test_presets_load_and_apply(tmp_path):
    d = _write(tmp_path, {"fast": {"steps": 4}, "fidelity": {"fidelity": 1, "color_fix": "wavelet"}})
    p = load_presets("m", d, info=INFO)
    assert p["fidelity"]["fidelity"] == 1.0 and isinstance(p["fidelity"]["fidelity"], float)
    s = apply_preset(Settings(seed=3), "m", "fast", d)
    assert s.steps == 4 and s.seed == 3
    with pytest.raises(InputError, match="no preset 'slow'; valid presets: fast, fidelity"):
        apply_preset(Settings(), "m", "slow", d)
    assert load_presets("other", d) == {}


@pytest.mark.parametrize("data,msg", [
    ({"x": {"stepz": 4}}, "unknown field 'stepz'"),
    ({"x": {"steps": "four"}}, "must be int"),
    ({"x": {"steps": 500}}, "takes 1..50 steps"),
    ({"x": {"fidelity": 2.0}}, "fidelity"),
    ({"x": 3}, "must be an object"),
    ("{not json", "not valid JSON"),
])
def test_bad_presets_name_the_file(tmp_path, data, msg):
    d = _write(tmp_path, data)
    with pytest.raises(InputError, match=msg) as e:
        load_presets("m", d, info=INFO)
    assert "m.json" in str(e.value)


def test_shipped_presets_are_valid():
    reg = default_registry()
    for f in PRESETS_DIR.glob("*.json"):
        assert f.stem in reg, f"{f} names no registered method"
        assert load_presets(f.stem, info=reg.get(f.stem).info)


def test_bench_synthetic_image_is_deterministic():
    a, b = bench.synthetic_image(48, seed=1), bench.synthetic_image(48, seed=1)
    assert a.shape == (1, 3, 48, 48) and (a == b).all() and 0 <= a.min() and a.max() <= 1
    res = bench.bench("lanczos", sizes=(16, 32), settings=Settings(scale=2))
    assert [r["out_size"] for r in res["sizes"]] == [32, 64]
    assert "lanczos" in bench.format_bench(res)
