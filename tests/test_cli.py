"""The CLI contract: methods, upscale (folders, a corrupt file), eval (published bicubic figures), bench."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sr_core import imaging
from sr_core.__main__ import main

ROOT = Path(__file__).resolve().parents[1]


def test_methods_json(capsys):
    assert main(["methods", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    ids = [r["id"] for r in rows]
    assert "bicubic" in ids and "lanczos" in ids
    for r in rows:
        assert {"scales", "steps", "supports_fidelity", "uses_seed", "tiling_space", "size_multiple",
                "default_color_fix", "licence", "weights", "available", "reason"} <= set(r)


def test_upscale_folder_with_corrupt_file(tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(src / "a.png")
    Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), "L").save(src / "sub" / "b.jpg")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "sr_core", "upscale", str(src), str(tmp_path / "nope.png"),
                           "-o", str(out), "--method", "bicubic", "--scale", "2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "broken.png" in proc.stderr and "nope.png" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    a = Image.open(out / "a.png")
    assert a.size == (60, 40) and a.format == "PNG"
    assert "2 written" in proc.stdout


def test_upscale_sharding_by_rank(tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(src / f"{i}.png")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["upscale", str(src), "-o", str(tmp_path / "o"), "--method", "bicubic", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["1.png", "3.png"]


@pytest.mark.parametrize("name,expect", [("Set5", 28.42), ("Set14", 26.00), ("BSD100", 25.96)])
def test_eval_reproduces_published_bicubic(shared_data, tmp_path, capsys, name, expect):
    js = tmp_path / "r.json"
    assert main(["eval", "--method", "bicubic", "--hr", str(shared_data / "eval" / name / "HR"),
                 "--scale", "4", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert set(res) >= {"method", "scale", "dataset", "n", "psnr_y", "ssim_y", "lr_psnr", "seconds_per_image",
                        "peak_rss_mb", "images"}
    assert res["dataset"] == name and res["method"] == "bicubic" and res["scale"] == 4
    assert abs(res["psnr_y"] - expect) <= 0.02
    assert set(res["images"][0]) == {"name", "psnr_y", "ssim_y", "lr_psnr", "seconds"}
    assert "mean (" + name in capsys.readouterr().out


def test_eval_limit_and_bad_folder(shared_data, tmp_path, capsys):
    assert main(["eval", "--method", "lanczos", "--hr", str(shared_data / "eval/Set5/HR"), "--limit", "2"]) == 0
    assert "n=2" in capsys.readouterr().out
    assert main(["eval", "--method", "bicubic", "--hr", str(tmp_path / "none")]) == 2


def test_eval_compares_colour_fixes_on_one_run(shared_data, tmp_path, capsys):
    """--compare-color-fix measures other colour fixes on the same outputs: each equals its own run's figures."""
    hr = str(shared_data / "eval/Set5/HR")

    def run(*extra):
        js = tmp_path / "r.json"
        assert main(["eval", "--method", "lanczos", "--hr", hr, "--limit", "2", "--json", str(js), *extra]) == 0
        return json.loads(js.read_text())

    both = run("--color-fix", "wavelet", "--compare-color-fix", "none,adain,wavelet")
    assert both["settings"]["color_fix"] == "wavelet" and set(both["variants"]) == {"none", "adain"}
    assert "colour fix adain" in capsys.readouterr().out
    for mode, res in (("wavelet", both), ("none", both["variants"]["none"]), ("adain", both["variants"]["adain"])):
        alone = run("--color-fix", mode)
        assert "variants" not in alone
        assert [r["psnr_y"] for r in res["images"]] == [r["psnr_y"] for r in alone["images"]], mode
        assert res["ssim_y"] == alone["ssim_y"] and res["lr_psnr"] == alone["lr_psnr"], mode
    assert both["psnr_y"] != both["variants"]["none"]["psnr_y"]  # the fix changes the figures
    capsys.readouterr()
    assert main(["eval", "--method", "lanczos", "--hr", hr, "--limit", "1", "--compare-color-fix", "none,sepia"]) == 2
    assert "sepia" in capsys.readouterr().err


def test_bench_prints_and_writes(tmp_path, capsys):
    js = tmp_path / "b.json"
    assert main(["bench", "--method", "bicubic", "--sizes", "32,64", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert [r["size"] for r in res["sizes"]] == [32, 64]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 for r in res["sizes"])
    assert "LR size" in capsys.readouterr().out
    assert main(["bench", "--method", "bicubic", "--sizes", "a,b"]) == 2


def test_unknown_method_exit_code(capsys):
    assert main(["upscale", "x.png", "-o", "/tmp/x", "--method", "zzz"]) == 2
    assert "valid ids" in capsys.readouterr().err


def test_bench_compares_methods_in_one_process(tmp_path, capsys):
    js = tmp_path / "c.json"
    assert main(["bench", "--method", "bicubic,lanczos", "--sizes", "24,32", "--repeat", "2", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert res["methods"] == ["bicubic", "lanczos"] and res["repeat"] == 2
    for r in res["sizes"]:
        assert set(r["seconds"]) == {"bicubic", "lanczos"} and all(len(v) == 2 for v in r["seconds_all"].values())
        assert r["x_first"]["bicubic"] == 1.0
        assert r["x_first"]["lanczos"] == pytest.approx(r["seconds"]["bicubic"] / r["seconds"]["lanczos"])
    assert "interleaved" in capsys.readouterr().out
    assert main(["bench", "--method", "bicubic,bicubic", "--sizes", "16"]) == 2  # the same method twice
    assert main(["bench", "--method", ",", "--sizes", "16"]) == 2
