"""Training kit: pack builder, eval-path refusal, CPU smoke run of every recipe, resume, export -> method."""

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_core.training import data as D
from sr_core.training.recipes import RECIPES, apply_overrides, get_recipe
from sr_core.training.trainer import train
from training_helpers import write_images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit")
    train_root = root / "train"
    write_images(train_root / "SetA" / "HR", 3)
    write_images(train_root / "SetB", 2, size=(64, 64), seed=1)
    write_images(train_root / "SetB" / "small", 1, size=(20, 20), seed=2)  # too small: skipped
    write_images(root / "eval" / "Set5" / "HR", 2, size=(48, 40), seed=3)
    pack = root / "pack.npz"
    meta = D.build_pack(pack, D.default_folders(train_root), n_crops=8, hr_size=48, scale=4, seed=0)
    return {"root": root, "pack": pack, "meta": meta, "eval": root / "eval"}


def test_pack_builder(tiny, tmp_path):
    meta = tiny["meta"]
    p = D.load_pack(tiny["pack"])
    assert p.hr.shape == (8, 48, 48, 3) and p.hr.dtype == np.uint8
    assert p.lr.shape == (8, 12, 12, 3)
    assert meta["skipped_small"] == 1 and set(meta["crops_per_folder"]) == {"SetA", "SetB"}
    assert sum(meta["crops_per_folder"].values()) == 8
    # the stored LR is the benchmark bicubic of the stored HR
    from sr_core import imaging

    assert np.array_equal(p.lr[0], imaging.imresize(p.hr[0], 0.25))
    # deterministic with the seed, different with another seed
    again = tmp_path / "again.npz"
    D.build_pack(again, D.default_folders(tiny["root"] / "train"), n_crops=8, hr_size=48, scale=4, seed=0)
    assert np.array_equal(D.load_pack(again).hr, p.hr)
    other = tmp_path / "other.npz"
    D.build_pack(other, D.default_folders(tiny["root"] / "train"), n_crops=8, hr_size=48, scale=4, seed=1)
    assert not np.array_equal(D.load_pack(other).hr, p.hr)
    # batches: aligned HR/LR patches, a pure function of (seed, step)
    src = D.PackSource(p, patch_lr=6, scale=4, seed=0)
    b1, b2, b3 = src.batch(5, 3), src.batch(5, 3), src.batch(6, 3)
    assert b1["hr"].shape == (3, 3, 24, 24) and b1["lr"].shape == (3, 3, 6, 6)
    assert torch.equal(b1["hr"], b2["hr"]) and not torch.equal(b1["hr"], b3["hr"])
    # fewer crops than usable images (4 here): a seeded subset of images, one crop each
    small = D.build_pack(tmp_path / "small.npz", D.default_folders(tiny["root"] / "train"), n_crops=2, hr_size=48,
                         scale=4, seed=0)
    assert small["n"] == 2 and D.load_pack(tmp_path / "small.npz").hr.shape[0] == 2


def test_webp_pack_holds_the_same_crops(tiny, tmp_path):
    """codec webp (the smaller pack a lent GPU can carry twice as many crops of) loads bit for bit as the raw one."""
    raw = D.load_pack(tiny["pack"])
    out = tmp_path / "w.npz"
    meta = D.build_pack(out, D.default_folders(tiny["root"] / "train"), n_crops=8, hr_size=48, scale=4, seed=0,
                        codec="webp")
    w = D.load_pack(out)
    assert meta["codec"] == "webp" and w.meta["codec"] == "webp" and tiny["meta"]["codec"] == "raw"
    assert np.array_equal(w.hr, raw.hr) and np.array_equal(w.lr, raw.lr)
    with np.load(out) as z:
        assert "hr" not in z.files and z["hr_len"].shape == (8,) and z["hr_webp"].dtype == np.uint8
        arrays = {k: z[k] for k in z.files}
    arrays["hr_len"] = arrays["hr_len"] + 1  # lengths that do not add up: a clear error, not garbage crops
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="lengths add up"):
        D.load_pack(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="codec"):
        D.build_pack(tmp_path / "x.npz", D.default_folders(tiny["root"] / "train"), n_crops=2, hr_size=48,
                     codec="jpeg")


def test_refuses_eval_paths(tiny, tmp_path):
    with pytest.raises(D.EvalPathError):
        D.build_pack(tmp_path / "x.npz", [tiny["eval"] / "Set5"], n_crops=2, hr_size=16)
    with pytest.raises(D.EvalPathError):
        D.list_images(tiny["eval"])
    with pytest.raises(D.EvalPathError):
        D.check_not_eval(Path("/somewhere/data/eval/BSD100/HR/x.png"))


def _losses(out: Path) -> list[float]:
    with open(out / "log.csv") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_cpu_smoke_every_recipe(name, tiny, tmp_path):
    recipe = apply_overrides(get_recipe(name), list(get_recipe(name).smoke))
    out = tmp_path / "run"
    info = train(recipe, pack_path=tiny["pack"], out=out, max_steps=40, device="cpu", mixed_precision="no",
                 val_dir=tiny["eval"] / "Set5" / "HR", log=lambda s: None)
    losses = _losses(out)
    assert len(losses) == 40 and info["steps"] == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert (out / "ckpt" / "last.pt").exists() and (out / "train_info.json").exists()
    assert info["final_val_set5"]["n"] == 2
    # the loss's named parts, logged beside it (recipes whose loss is one term write none)
    parts = {"sinsr-mini": {"distill", "inverse", "gt"}, "osediff-mini": {"mse", "lpips", "diff", "vsd_grad_rms"},
             "mini-sd-vae": {"l1", "kl"}, "vqf4-mini": {"l1", "codebook", "commit"}, "mini-sd": {"mse"},
             "resshift-mini": {"mse"}, "stablesr-mini": {"mse"}, "stablesr-cfw-mini": {"l1"}}.get(name)
    if parts is None:
        assert not (out / "terms.csv").exists()
    else:
        rows = _rows(out / "terms.csv")
        assert [int(r["step"]) for r in rows] == list(range(1, 41))
        assert parts <= set(rows[0]) and all(np.isfinite(float(r[k])) for r in rows for k in parts)


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_terms_log_survives_a_resume(tiny, tmp_path):
    name = "sinsr-mini"
    recipe = apply_overrides(get_recipe(name), list(get_recipe(name).smoke) + ["ckpt_every=3"])
    out = tmp_path / "run"
    kw = dict(pack_path=tiny["pack"], out=out, device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    train(recipe, max_steps=4, **kw)  # checkpoint at 3; rows 1..4 logged
    assert [int(r["step"]) for r in _rows(out / "terms.csv")] == [1, 2, 3, 4]
    lines = []
    train(recipe, max_steps=6, resume=True, **{**kw, "log": lines.append})
    rows = _rows(out / "terms.csv")
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # row 4 was dropped and rerun from the step-3 checkpoint
    assert list(rows[0]) == ["step", "distill", "gt", "inverse"]
    assert any("(distill " in ln and " inverse " in ln for ln in lines)  # the console line names the parts


def test_resume_and_export(tiny, tmp_path):
    from sr_core.methods.rrdb import RRDBMini
    from sr_core.training.export import export_run
    from sr_core.types import RunContext, Settings

    recipe = apply_overrides(get_recipe("rrdb-mini"), list(get_recipe("rrdb-mini").smoke) + ["ckpt_every=5"])
    out = tmp_path / "run"
    kw = dict(pack_path=tiny["pack"], out=out, device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    train(recipe, max_steps=10, **kw)
    ck = torch.load(out / "ckpt" / "last.pt", weights_only=True)
    assert ck["step"] == 10
    info = train(recipe, max_steps=15, resume=True, **kw)
    assert info["steps"] == 15
    with open(out / "log.csv") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(1, 16))

    res = export_run(out, model_id="rrdb-test", assets_dir=tmp_path / "weights", dtype="fp16",
                     eval_sets=("Set5",), eval_root=tiny["eval"])
    d = Path(res["dir"])
    assert (d / "model.safetensors").exists() and (d / "MODEL_CARD.md").exists()
    sums = (d / "SHA256SUMS").read_text().split()
    from sr_core.weights import sha256_file

    assert sums == [sha256_file(d / "model.safetensors"), "model.safetensors"]
    card = (d / "MODEL_CARD.md").read_text()
    assert sums[0] in card and "Set5" in card and "bicubic" in card and "SetA" in card
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["config"]["nf"] == 8 and cfg["steps"] == 15 and "Set5" in cfg["eval_x4"]

    method = RRDBMini(weights_path=str(d / "model.safetensors"))
    assert method.availability().ok
    lr = torch.rand(1, 3, 9, 11)
    ctx = RunContext(settings=Settings(scale=4), device=torch.device("cpu"), generator=torch.Generator())
    sr = method.run(lr, ctx)
    assert sr.shape == (1, 3, 36, 44) and 0 <= float(sr.min()) and float(sr.max()) <= 1
    ema = recipe.build_model()
    ema.load_state_dict(torch.load(out / "ckpt" / "last.pt", weights_only=True)["ema"])
    with torch.no_grad():
        ref = recipe.infer(ema.eval(), lr).clamp(0, 1)
    assert torch.allclose(sr, ref, atol=2e-2)


def test_cli_list_pack_and_overrides(tiny, tmp_path, capsys):
    from sr_core.training.__main__ import main

    assert main(["list"]) == 0
    assert "rrdb-mini" in capsys.readouterr().out
    out = tmp_path / "p.npz"
    assert main(["pack", "--out", str(out), "--folders", str(tiny["root"] / "train" / "SetA"), "--n-crops", "3",
                 "--hr-size", "32"]) == 0
    assert D.load_pack(out).hr.shape == (3, 32, 32, 3)
    with pytest.raises(D.EvalPathError):
        main(["pack", "--out", str(out), "--folders", str(tiny["eval"] / "Set5")])
    assert main(["no-such-recipe"]) == 2
    r = apply_overrides(get_recipe("rrdb-mini"), ["lr=5e-4", "model.nf=16", "degradation.realesrgan=0.5"])
    assert r.lr == 5e-4 and r.model_config["nf"] == 16 and r.degradation.p_realesrgan == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        apply_overrides(r, ["no_such_field=1"])


def test_warmup_ends_by_steps_or_by_progress_whichever_first():
    """A time-budgeted run on a lent GPU made 534 steps of a recipe with 500 warm-up steps: the LR peaked at
    step 500 and the cosine (over time) was already at its end.  The warm-up now also ends once
    `warmup_frac` of the run has passed; recorded runs without the field keep the step-only warm-up."""
    import math

    from sr_core.training.export import recipe_from_dict

    r = apply_overrides(get_recipe("mini-sd"), ["lr=2e-4", "lr_min=1e-5", "warmup_steps=500"])
    assert r.warmup_frac == 0.05
    cos = lambda p: 1e-5 + 0.5 * (2e-4 - 1e-5) * (1 + math.cos(math.pi * p))  # noqa: E731
    assert r.lr_at(0, 0.0) == pytest.approx(2e-4 / 500)
    assert r.lr_at(10, 0.01) == pytest.approx(2e-4 * 0.2)  # 1 % of the run: 20 % warm (steps alone: 2.2 %)
    assert r.lr_at(100, 0.5) == pytest.approx(cos(0.5))  # warm-up over by progress, cosine at mid-run
    assert r.lr_at(600, 0.02) == pytest.approx(cos(0.02))  # over by steps
    lrs = [r.lr_at(s, s / 1000) for s in range(0, 51)]
    assert all(b >= a for a, b in zip(lrs, lrs[1:]))  # rises without a jump through the first 5 %
    d = r.to_dict()
    assert recipe_from_dict(d).warmup_frac == 0.05
    del d["warmup_frac"]  # a run recorded before the field
    old = recipe_from_dict(d)
    assert old.warmup_frac == 0 and old.lr_at(10, 0.5) == pytest.approx(2e-4 * 11 / 500)
    assert "first 5% of the run" in r.warmup_text() and "first" not in old.warmup_text()


def test_batch_scale_multiplies_the_batch_and_scales_the_lr_by_its_root():
    from sr_core.training.__main__ import scale_batch

    r = get_recipe("resshift-mini")
    s = scale_batch(r, 4)
    assert s.batch_size == 4 * r.batch_size
    assert s.lr == pytest.approx(2 * r.lr) and s.lr_min == pytest.approx(2 * r.lr_min)
    assert scale_batch(r, 1) is r
    with pytest.raises(ValueError):
        scale_batch(r, 0)


def test_resume_with_the_perceptual_term_turned_off(tmp_path):
    """A run saved with an LPIPS net resumes without it (lambda_lpips=0): the frozen LPIPS tensors of the
    checkpoint are skipped with a message, the trainable ones must all be there, Adam only ever held the
    trainable ones (so its state still fits)."""
    from training_helpers import tiny_kit

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    base = get_recipe("mini-sd-vae")
    kw = dict(pack_path=kit["pack"], device="cpu", mixed_precision="no", val_dir=None)
    run = tmp_path / "vae"
    train(apply_overrides(base, list(base.smoke) + ["lambda_lpips=0.1"]), out=run, max_steps=2, log=lambda s: None, **kw)
    ck = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    assert any(k.startswith("lpips") or ".lpips" in k or "perceptual" in k for k in ck["model"])
    n_trainable = sum(1 for k in ck["optimizer"]["state"])
    assert n_trainable == len(ck["optimizer"]["param_groups"][0]["params"])  # only trainable tensors in Adam
    logs = []
    info = train(apply_overrides(base, list(base.smoke) + ["lambda_lpips=0"]), out=run, max_steps=3, resume=True,
                 log=logs.append, **kw)
    assert info["steps"] == 3 and any("frozen tensors" in s and "ignored" in s for s in logs)
    assert not any("Adam starts afresh" in s for s in logs)
    # a checkpoint that lacks trainable parameters is refused
    bad = {**ck, "model": {k: v for k, v in ck["model"].items() if not k.startswith("vae.encoder")}}
    torch.save(bad, run / "ckpt" / "last.pt")
    with pytest.raises(ValueError, match="trainable parameters"):
        train(apply_overrides(base, list(base.smoke)), out=run, max_steps=4, resume=True, log=lambda s: None, **kw)


def test_cli_batch_and_lr_scales_are_recorded(tmp_path):
    """`--batch-scale 2 --lr-scale 0.5` (a warm start on a GPU): the run records the batch and lr it used."""
    from sr_core.training.__main__ import main
    from training_helpers import tiny_kit

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    r = get_recipe("vqf4-mini")
    out = tmp_path / "run"
    sets = [a for s in r.smoke for a in ("--set", s)]
    assert main(["vqf4-mini", "--pack", str(kit["pack"]), "--out", str(out), "--max-steps", "1", "--device", "cpu",
                 "--no-val", "--mixed-precision", "no", "--batch-scale", "2", "--lr-scale", "0.5", *sets]) == 0
    rec = json.loads((out / "train_info.json").read_text())["recipe"]
    base = apply_overrides(r, list(r.smoke))
    assert rec["batch_size"] == 2 * base.batch_size
    assert rec["lr"] == pytest.approx(base.lr * 2 ** 0.5 * 0.5)


@pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")),
                    reason="torch.compile on the CPU needs a C++ compiler (inductor)")
def test_compiled_training_steps_like_the_eager_one_and_saves_plain_weights(tiny, tmp_path):
    """--compile: the loss goes through torch.compile(model) (inductor), the parameters are the module's,
    so the losses follow the eager run's and the checkpoint has the eager key names (no `_orig_mod.`)."""
    recipe = apply_overrides(get_recipe("rrdb-mini"), list(get_recipe("rrdb-mini").smoke))
    kw = dict(pack_path=tiny["pack"], max_steps=4, device="cpu", mixed_precision="no", val_dir=None,
              log=lambda s: None)
    eager = train(recipe, out=tmp_path / "eager", **kw)
    compiled = train(recipe, out=tmp_path / "compiled", compile=True, **kw)
    assert compiled["compiled"] and not eager["compiled"] and compiled["steps"] == 4
    np.testing.assert_allclose(_losses(tmp_path / "compiled"), _losses(tmp_path / "eager"), rtol=1e-3, atol=1e-5)
    a = torch.load(tmp_path / "eager" / "ckpt" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "compiled" / "ckpt" / "last.pt", weights_only=True)
    assert a["ema"].keys() == b["ema"].keys() and a["model"].keys() == b["model"].keys()
    for k, v in a["model"].items():
        torch.testing.assert_close(b["model"][k], v, rtol=1e-3, atol=1e-4)


def test_a_compiler_that_fails_leaves_the_run_training_eagerly(tiny, tmp_path, monkeypatch):
    from sr_core.training import trainer as T

    class Broken(torch.nn.Module):
        def forward(self, *a, **k):
            raise RuntimeError("no compiler here")

    monkeypatch.setattr(T, "compile_for_training", lambda model: Broken())
    recipe = apply_overrides(get_recipe("rrdb-mini"), list(get_recipe("rrdb-mini").smoke))
    said = []
    info = train(recipe, pack_path=tiny["pack"], out=tmp_path / "run", max_steps=3, device="cpu",
                 mixed_precision="no", val_dir=None, log=said.append, compile=True)
    assert info["steps"] == 3 and info["compiled"] is False and len(_losses(tmp_path / "run")) == 3
    assert any("torch.compile failed" in s and "no compiler here" in s for s in said)


@pytest.mark.skipif(not shutil.which(os.environ.get("CXX", "g++")),
                    reason="torch.compile on the CPU needs a C++ compiler (inductor)")
def test_compiled_vq_training_does_not_recompile_every_step(tmp_path, monkeypatch):
    """vqf4-mini keeps a host-side step counter for its codebook restarts: outside the compiled graph, or
    every step would guard-fail and recompile (the restart's yes / no is two variants, no more)."""
    import torch._dynamo

    from sr_core.training import recipes_resshift as RR
    from training_helpers import tiny_kit

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    r = RR.RESSHIFT_RECIPES["vqf4-mini"]
    recipe = apply_overrides(r, list(r.smoke))
    torch._dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 2)
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    info = train(recipe, pack_path=kit["pack"], out=tmp_path / "run", max_steps=12, device="cpu",
                 mixed_precision="no", val_dir=None, log=lambda s: None, compile=True)
    assert info["compiled"] and info["steps"] == 12


def test_a_derived_pack_carries_per_crop_arrays_cropped_and_transformed_with_the_lr(tiny, tmp_path):
    """`derive_pack`: chosen crops of a pack with float arrays on the LR grid (e.g. a model's cached latents);
    `PackSource` cuts every extra at the LR patch's place with the LR patch's flip/rotation."""
    src = D.load_pack(tiny["pack"])
    rows = [0, 2, 5]
    out = D.derive_pack(src, tmp_path / "d.npz", rows, {"same": src.lr[rows].astype(np.float32)},
                        {"what": "the LR again"})
    p = D.load_pack(out)
    assert p.meta["n"] == 3 and p.meta["derived"] == {"what": "the LR again"}
    np.testing.assert_array_equal(p.hr, src.hr[rows])
    np.testing.assert_array_equal(p.lr, src.lr[rows])
    np.testing.assert_array_equal(p.source, src.source[rows])
    assert sum(p.meta["crops_per_folder"].values()) == 3 and set(p.extras) == {"same"}
    source = D.PackSource(p, patch_lr=6, scale=4, seed=0)
    seen = set()
    for step in range(8):
        b = source.batch(step, 4)
        assert b["same"].shape == (4, 3, 6, 6) and b["same"].dtype == torch.float32
        torch.testing.assert_close(b["same"] / 255, b["lr"], atol=0, rtol=0)
        seen.add(tuple(b["same"].flatten()[:8].tolist()))
    assert len(seen) > 4  # different crops and transforms
    with pytest.raises(ValueError, match="on the LR grid"):
        D.derive_pack(src, tmp_path / "bad.npz", rows, {"x": np.zeros((3, 5, 5, 1))}, {})
    assert "extras" not in D.load_pack(tiny["pack"]).meta and D.load_pack(tiny["pack"]).extras == {}
