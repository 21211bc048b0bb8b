"""The Gradio app's handlers and Blocks config, driven with a fake core (no server, no browser)."""

from __future__ import annotations

import importlib
import importlib.util
import io
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import app
import gradio as gr
from app_fakes import LOCKED_REASON, FakeCore, ToySampler
from gradio.data_classes import ImageData
from sr_core import imaging, metrics
from sr_core.methods.baselines import Bicubic
from sr_core.registry import Registry
from sr_core.types import InputError

ROOT = Path(__file__).resolve().parent.parent
KODAK = ROOT.parent / "shared" / "data" / "train" / "Kodak24" / "HR" / "kodim23.png"


def small_image(w=24, h=16, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, size=(h, w, len(mode)), dtype=np.uint8)
    return Image.fromarray(a, mode)


@pytest.fixture(scope="module")
def core():
    return FakeCore()


@pytest.fixture(scope="module")
def demo(core):
    return app.build_demo(core)


@pytest.fixture
def h():
    return app.Handlers(FakeCore())


def run(h, image=None, method="sampler", scale=4, steps=10, seed=123, fidelity=0.7, tile=0, overlap=32,
        color_fix="adain", prompt="", hr=None):
    return h.run_upscale(small_image() if image is None else image, method, scale, steps, seed, fidelity, tile,
                         overlap, color_fix, prompt, hr)


# ---- Blocks config ---------------------------------------------------------------------------


def test_config_has_upscale_endpoint_and_png_outputs(demo):
    cfg = demo.config
    names = [d.get("api_name") for d in cfg["dependencies"]]
    assert "upscale" in names
    public = [d["api_name"] for d in cfg["dependencies"] if d.get("api_visibility") == "public"]
    assert public == ["upscale"]
    images = [c for c in cfg["components"] if c.get("type") in ("image", "imageslider")]
    assert len(images) >= 5  # input, HR, two sliders, API in/out
    for c in images:
        assert c["props"]["format"] == "png", c
    assert sum(c["type"] == "imageslider" for c in cfg["components"]) == 2
    info = demo.get_api_info()["named_endpoints"]["/upscale"]
    assert [p["parameter_name"] for p in info["parameters"]] == [
        "image", "method", "scale", "steps", "seed", "fidelity", "tile", "overlap", "color_fix", "prompt"]
    assert [p["component"] for p in info["returns"]] == ["Image"]
    assert not (ROOT / "app.pyi").exists()  # no gradio stub written for a component subclass


def test_queue_limits_from_env(monkeypatch, core):
    d = app.build_demo(core)
    assert d._queue.max_size == 16
    assert d._queue.default_concurrency_limit == 1
    monkeypatch.setenv("SR_MAX_QUEUE", "3")
    monkeypatch.setenv("SR_CONCURRENCY", "2")
    d = app.build_demo(core)
    assert d._queue.max_size == 3 and d._queue.default_concurrency_limit == 2
    heavy = [f for f in d.fns.values() if f.name in ("run_upscale", "run_compare", "api_upscale")]
    assert len(heavy) == 3 and {f.concurrency_id for f in heavy} == {"sr"}
    monkeypatch.setenv("SR_CONCURRENCY", "zero")
    with pytest.raises(ValueError, match="SR_CONCURRENCY"):
        app.build_demo(core)


def test_method_menu_marks_unavailable(h):
    labels = dict((v, k) for k, v in h.method_choices())
    assert labels["sampler"] == "Sampler (fake)"
    assert labels["locked"].startswith("Locked (fake) (unavailable: weights missing")
    assert h.default_method() == "nearest"


# ---- running ---------------------------------------------------------------------------------


def test_upscale_returns_slider_pair_file_and_seed(h):
    (before, after), path, summary, settings, metrics_md = run(h)
    assert before.size == after.size == (96, 64)
    for img in (before, after):
        Image.open(io.BytesIO(_png(img))).load()
    assert Path(path).suffix == ".png" and "seed123" in Path(path).name
    with Image.open(path) as f:
        assert np.array_equal(np.asarray(f), np.asarray(after))
    assert "seed **123**" in summary and "10 steps" in summary
    assert settings["settings"]["seed"] == 123 and settings["method"] == "sampler"
    assert "HR reference" in metrics_md
    method_id, s = h.core.calls[-1]
    assert (method_id, s.scale, s.steps, s.seed, s.fidelity, s.color_fix) == ("sampler", 4, 10, 123, 0.7, "adain")
    assert h.core.progress_seen  # the progress callback reached the core


def test_summary_counts_steps_in_the_singular_for_one(h):
    """A one-step method's summary says "1 step", not "1 steps"; more steps keep the plural."""
    from app_fakes import FIXED

    from sr_core.types import Result, Settings

    img = small_image()
    one = app.Handlers._summary(Result(img, img, "onestep", Settings(steps=1), 0.1), FIXED)
    many = app.Handlers._summary(Result(img, img, "onestep", Settings(steps=4), 0.1), FIXED)
    assert "1 step" in one and "1 steps" not in one, one
    assert "4 steps" in many, many


def test_empty_seed_is_randomized_and_shown(h):
    *_, summary, settings, _ = run(h, seed=None)
    used = settings["settings"]["seed"]
    assert 0 <= used <= app.MAX_SEED and f"seed **{used}**" in summary


def test_undeclared_controls_are_neutralised(h):
    run(h, method="nearest", steps=33, seed=99, fidelity=0.1, tile=16, overlap=32, color_fix="none")
    _, s = h.core.calls[-1]
    assert (s.steps, s.seed, s.fidelity, s.tile) == (None, 0, 0.5, 0)
    run(h, method="onestep", steps=33, scale=2)  # fixed steps: the hidden slider's value is ignored
    assert h.core.calls[-1][1].steps is None


def test_randomize_changes_seed(h):
    seeds = {h.randomize_seed(5) for _ in range(20)}
    assert 5 not in seeds and all(0 <= s <= app.MAX_SEED for s in seeds) and len(seeds) > 1


def test_api_handler_returns_image(h):
    out = h.api_upscale(small_image(), "nearest", 2)
    assert isinstance(out, Image.Image) and out.size == (48, 32)
    assert h.core.calls[-1][1].steps is None


# ---- controls per capabilities, presets ----------------------------------------------------------


def test_method_change_sets_visibility(h):
    base = h.on_method_change("nearest", 4)
    assert set(base) == set(app.METHOD_FIELDS)
    for k in ("steps", "fidelity", "seed_row", "tile_row", "prompt"):
        assert base[k]["visible"] is False, k
    assert base["scale"]["choices"] == [("×2", 2), ("×4", 4)] and base["scale"]["value"] == 4
    assert base["preset"]["visible"] is False
    samp = h.on_method_change("sampler", 2)
    for k in ("steps", "fidelity", "seed_row", "tile_row"):
        assert samp[k]["visible"] is True, k
    assert (samp["steps"]["minimum"], samp["steps"]["maximum"], samp["steps"]["value"]) == (1, 50, 20)
    assert samp["scale"]["value"] == 4  # 2 is not a scale of the sampler: its default
    assert samp["tile"]["value"] == 64 and samp["color_fix"]["value"] == "adain"
    assert samp["preset"]["choices"] == [app.NO_PRESET, "fast", "fidelity"] and samp["preset"]["visible"]
    fixed = h.on_method_change("onestep", 2)
    assert fixed["steps"]["visible"] is False and fixed["seed_row"]["visible"] is True
    assert "1 step (fixed)" in fixed["description"]["value"]
    locked = h.on_method_change("locked", 4)
    assert LOCKED_REASON in locked["description"]["value"]


def test_fidelity_starts_at_the_methods_default(h):
    """A method may open at another w than 0.5 (stablesr-mini opens at 1: its w = 0 end is not usable yet): the
    slider, a preset without w and a run with the field cleared all take the method's default."""
    import dataclasses

    core = h.core
    core._methods = [(dataclasses.replace(i, default_fidelity=1.0) if i.id == "sampler" else i, a)
                     for i, a in core._methods]
    assert h.on_method_change("sampler", 4)["fidelity"]["value"] == 1.0
    assert h.on_preset("sampler", "fast")["fidelity"]["value"] == 1.0  # "fast" names no w
    run(h, fidelity=None)
    assert core.calls[-1][1].fidelity == 1.0


def test_prompt_reaches_only_methods_that_take_one(h):
    """Text left in the prompt box (hidden once the method changes) is not sent to a method without
    prompts (osediff-mini would refuse it: no text encoder); a method that takes one gets it."""
    import dataclasses

    run(h, method="nearest", prompt="a cat")
    assert h.core.calls[-1][1].prompt == ""
    h.core._methods = [(dataclasses.replace(i, supports_prompt=True) if i.id == "sampler" else i, a)
                       for i, a in h.core._methods]
    run(h, method="sampler", prompt="a cat")
    assert h.core.calls[-1][1].prompt == "a cat"


def test_preset_fills_controls(h):
    fast = h.on_preset("sampler", "fast")
    assert set(fast) == set(app.PRESET_FIELDS)
    assert fast["steps"]["value"] == 4 and fast["color_fix"]["value"] == "wavelet"
    assert fast["fidelity"]["value"] == 0.5 and fast["tile"]["value"] == 64
    assert "value" not in fast["seed"]  # kept
    fid = h.on_preset("sampler", "fidelity")
    assert fid["fidelity"]["value"] == 1.0 and fid["tile"]["value"] == 128 and fid["seed"]["value"] == 7
    assert fid["steps"]["value"] == 20 and fid["color_fix"]["value"] == "adain"
    none = h.on_preset("sampler", app.NO_PRESET)
    assert all("value" not in u for u in none.values())
    with pytest.raises(gr.Error, match="no preset 'nope'"):
        h.on_preset("sampler", "nope")


def test_compare_scales_intersect(h):
    upd = h.compare_scales("nearest", "sampler", 2)
    assert upd["choices"] == [("×4", 4)] and upd["value"] == 4
    assert h.compare_scales("nearest", "onestep", 2)["value"] == 2


# ---- errors ------------------------------------------------------------------------------------


def test_unavailable_method_gives_clear_error(h):
    with pytest.raises(gr.Error, match="Locked .fake. is not available: weights missing"):
        run(h, method="locked", steps=50)
    assert h.core.calls == []


def test_unknown_method_and_missing_image(h):
    with pytest.raises(gr.Error, match="unknown method 'zzz'"):
        run(h, method="zzz")
    with pytest.raises(gr.Error, match="Upload an image first"):
        h.run_upscale(None, "nearest", 4, None, 0, 0.5, 0, 32, "none", "", None)
    with pytest.raises(gr.Error, match="steps must be a number"):
        run(h, steps="many")


def test_input_error_and_crash_become_gr_error():
    h = app.Handlers(FakeCore(fail_with=InputError("the image is 1x1 pixels; too small")))
    with pytest.raises(gr.Error, match="too small"):
        run(h)
    h = app.Handlers(FakeCore(fail_with=RuntimeError("kaboom")))
    with pytest.raises(gr.Error, match="failed unexpectedly .RuntimeError: kaboom"):
        run(h)


def test_corrupt_upload_gives_gr_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image at all")
    comp = app.input_image(label="Low-resolution input", render=False)
    with pytest.raises(gr.Error, match="not a readable image"):
        comp.preprocess(ImageData(path=str(bad), orig_name="bad.png"))
    good = tmp_path / "good.png"
    small_image(mode="RGBA").save(good)
    img = comp.preprocess(ImageData(path=str(good), orig_name="good.png"))
    assert img.mode == "RGBA"  # alpha is kept (image_mode=None)
    assert comp.get_block_name() == "image" and comp.format == "png"


def test_truncated_image_through_real_core_gives_gr_error(tmp_path):
    path = tmp_path / "cut.png"
    path.write_bytes(_png(small_image(64, 64))[:200])
    h = app.Handlers(app.Core())
    with pytest.raises(gr.Error) as e:
        h.run_upscale(Image.open(path), "bicubic", 4, None, 0, 0.5, 0, 32, "none", "", None)
    assert "truncated" in str(e.value) or "corrupt" in str(e.value)


# ---- metrics against an HR reference (real core, toy method registry) -------------------------------


def _real_handlers():
    reg = Registry()
    reg.add(Bicubic())
    reg.add(ToySampler())
    return app.Handlers(app.Core(registry=reg))


def _hr_lr():
    if KODAK.is_file():
        hr = np.asarray(Image.open(KODAK).convert("RGB"))[96:96 + 64, 256:256 + 96]
    else:  # pragma: no cover - data folder absent
        hr = np.asarray(small_image(96, 64))
    return Image.fromarray(hr), Image.fromarray(imaging.imresize(hr, 0.25))


def test_metrics_panel_with_hr_reference():
    h = _real_handlers()
    hr, lr = _hr_lr()
    (bic, out), _, _, _, md = h.run_upscale(lr, "toy", 4, 5, 1, 0.5, 0, 8, "none", "", hr)
    sr_u8, hr_u8, lr_u8 = np.asarray(out), np.asarray(hr), np.asarray(lr)
    want = metrics.psnr_y(sr_u8, hr_u8, 4)
    assert "| Toy sampler |" in md and f"{want:.3f}" in md
    assert f"{metrics.ssim_y(sr_u8, hr_u8, 4):.4f}" in md
    assert f"{metrics.lr_psnr(sr_u8, lr_u8, 4):.2f}" in md
    assert f"{metrics.psnr_y(np.asarray(bic), hr_u8, 4):.3f}" in md  # the bicubic row


def test_metrics_skipped_when_hr_size_is_wrong():
    h = _real_handlers()
    hr, lr = _hr_lr()
    wrong = hr.crop((0, 0, hr.width - 4, hr.height))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        *_, md = h.run_upscale(lr, "bicubic", 4, None, 0, 0.5, 0, 32, "none", "", wrong)
    assert md.startswith("*Metrics skipped:") and "exactly 4 x the input" in md


# ---- compare mode --------------------------------------------------------------------------------


def test_compare_two_settings_of_one_method(h):
    img = small_image()
    common = dict(fidelity=0.5, tile=0, overlap=32, color_fix="none", prompt="")
    (a, b), summary, md = h.run_compare(img, 4, None,
                                        "sampler", 10, 1, *common.values(),
                                        "sampler", 30, 2, *common.values())
    assert a.size == b.size == (96, 64)
    assert "**A:**" in summary and "seed **1**" in summary and "seed **2**" in summary
    assert [(m, s.steps, s.seed) for m, s in h.core.calls] == [("sampler", 10, 1), ("sampler", 30, 2)]
    assert "HR reference" in md


def test_compare_two_methods_with_metrics():
    h = _real_handlers()
    hr, lr = _hr_lr()
    rest = (0.5, 0, 8, "none", "")
    (a, b), _, md = h.run_compare(lr, 4, hr, "bicubic", None, 0, *rest, "toy", 3, 9, *rest)
    assert a.size == b.size == hr.size
    assert "| A: Bicubic (MATLAB imresize) |" in md and "| B: Toy sampler |" in md
    with pytest.raises(gr.Error, match="no scale in common"):
        h.run_compare(lr, None, None, "bicubic", None, 0, *rest, "toy", 3, 9, *rest)


# ---- ZeroGPU ------------------------------------------------------------------------------------


def test_zerogpu_wraps_the_gpu_function(monkeypatch):
    wrapped = []

    def GPU(duration=None, **kw):
        def deco(fn):
            def inner(*a, **k):
                wrapped.append(("call", fn.__name__))
                return fn(*a, **k)
            wrapped.append(("wrap", duration))
            return inner
        return deco

    fake = types.ModuleType("spaces")
    fake.GPU = GPU
    monkeypatch.setitem(sys.modules, "spaces", fake)
    try:
        mod = importlib.reload(app)
        assert mod.spaces is fake
        d = mod.build_demo(FakeCore())
        assert ("wrap", 120) in wrapped
        d.handlers.run_upscale(small_image(), "nearest", 4, None, 0, 0.5, 0, 32, "none", "", None)
        assert ("call", "_upscale_work") in wrapped
    finally:
        monkeypatch.delitem(sys.modules, "spaces")
        mod = importlib.reload(app)
    if importlib.util.find_spec("spaces") is None:
        assert mod.spaces is None
        assert mod.gpu(len) is len  # nothing changes without `spaces`


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_main_reads_host_and_port(monkeypatch):
    launched = {}

    class Stub:
        def launch(self, **kw):
            launched.update(kw)

    monkeypatch.setattr(app, "build_demo", lambda core=None: Stub())
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7001")
    app.main([])
    assert (launched["server_name"], launched["server_port"]) == ("0.0.0.0", 7001)
    app.main(["--host", "127.0.0.1", "--port", "7002"])
    assert (launched["server_name"], launched["server_port"]) == ("127.0.0.1", 7002)
    assert str(app.EXAMPLES_DIR) in launched["allowed_paths"]


def test_examples_are_small_pngs():
    paths = app.example_paths()
    assert 3 <= len(paths) <= 4
    for p in paths:
        with Image.open(p) as img:
            assert img.format == "PNG" and 96 <= max(img.size) <= 160
        assert Path(p).stat().st_size < 60_000
    assert (app.EXAMPLES_DIR / "CREDITS.md").is_file()


def test_default_method_is_a_bundled_learned_model():
    """A fresh page opens on a bundled (offline) one-step diffusion model: a diffusion tool, answering in
    seconds on a CPU host."""
    import app

    info, avail = app.Core().method(app.Handlers(app.Core()).default_method())
    assert avail.ok and info.family == "diffusion" and all(w.bundled for w in info.weights)
    assert info.steps is not None and info.steps.default == 1


def test_page_opens_on_a_fixed_step_method():
    """A page whose first method has a fixed step count (gradio refuses a slider with min == max) builds,
    with the steps slider hidden."""
    from app_fakes import FIXED
    from sr_core.types import Availability

    class Core(FakeCore):
        def __init__(self):
            super().__init__()
            self._methods = [(FIXED, Availability(True))]

    demo = app.build_demo(Core())
    sliders = [c for c in demo.config["components"] if c.get("props", {}).get("elem_id") == "steps"]
    assert sliders and sliders[0]["props"]["visible"] is False and sliders[0]["props"]["value"] == 1


def test_default_method_choice_order():
    """Bundled diffusion with the fewest default steps (registry order breaks ties) > any bundled learned
    method > the first available one; unavailable and download-only methods never open the page."""
    import dataclasses

    from sr_core.types import Availability, MethodInfo, StepsSpec, WeightSpec

    own = (WeightSpec(key="w", filename="w.safetensors", bundled="x/w.safetensors"),)
    hub = (WeightSpec(key="w", filename="w.safetensors", url="https://example.invalid/w"),)

    def m(id_, family, steps=None, weights=own, ok=True):
        info = MethodInfo(id=id_, label=id_, description="", family=family, weights=weights,
                          steps=StepsSpec(1, 50, steps) if steps else None)
        return info, Availability(ok, "" if ok else "missing")

    class Core(FakeCore):
        def __init__(self, methods):
            super().__init__()
            self._methods = methods

    base, reg = m("bic", "baseline", weights=()), m("rrdb", "regression")
    many, one_a, one_b = m("teacher", "diffusion", 15), m("student", "diffusion", 1), m("other", "diffusion", 1)
    official, broken = m("official", "diffusion", 1, weights=hub), m("broken", "diffusion", 1, ok=False)
    pick = lambda ms: app.Handlers(Core(ms)).default_method()  # noqa: E731
    assert pick([base, reg, broken, official, many, one_a, one_b]) == "student"
    assert pick([base, reg, many]) == "teacher"
    assert pick([base, official, reg]) == "rrdb"
    assert pick([m("x", "diffusion", 4, ok=False), base]) == "bic"
    assert pick([many, (dataclasses.replace(one_a[0], steps=None), Availability(True))]) == "student"
