"""Device handoff (sr_core/training/handoff.py): runs trained on a lent GPU come back as a few small shards
(the device returns <= 8 files of < 16 MiB) and are rebuilt here into run folders that equal the originals
for every tensor, export, and resume."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from sr_core.training import handoff as H
from sr_core.training.recipes import RECIPES, apply_overrides
from sr_core.training.trainer import train
from training_helpers import tiny_kit


def _smoke(name, *extra):
    from sr_core.training import recipes_resshift as RR

    r = RECIPES[name] if name in RECIPES else RR.RESSHIFT_RECIPES[name]
    return apply_overrides(r, list(r.smoke) + list(extra))


CHAINS = {
    "resshift": [("vqf4-mini", ()), ("resshift-mini", ("ae_from={vqf4-mini}",)),
                 ("sinsr-mini", ("teacher_from={resshift-mini}",))],
    "sd": [("mini-sd-vae", ("model.latent_channels=8",)),
           ("mini-sd", ("vae_from={mini-sd-vae}", "model.latent_channels=8")),
           ("osediff-mini", ("prior_from={mini-sd}", "model.latent_channels=8"))],
}


@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_handoff_round_trip_rebuilds_the_runs(chain, tmp_path, one_thread):
    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    kw = dict(pack_path=kit["pack"], device="cpu", mixed_precision="no", val_dir=None, log=lambda s: None)
    runs = {}
    for name, extra in CHAINS[chain]:
        out = tmp_path / "runs" / name
        train(_smoke(name, *[e.format(**{k: str(v) for k, v in runs.items()}) for e in extra]), max_steps=2,
              out=out, **kw)
        runs[name] = out
    originals = {n: torch.load(r / "ckpt" / "last.pt", weights_only=True) for n, r in runs.items()}
    infos = {n: json.loads((r / "train_info.json").read_text()) for n, r in runs.items()}

    dev_out = tmp_path / "OUT"
    files = []
    for i, (n, r) in enumerate(runs.items()):
        files += H.write_handoff(r, dev_out, seq=i, max_mib=0.25, dtype="fp32")
    assert all(p.stat().st_size < 0.25 * 2**20 for p in files) and len(files) > len(runs)  # sharded
    # what training did not change (frozen priors, LPIPS, the fake score's base) does not travel
    carried = sum(len(json.loads(H._meta(fs[0])["names"])) for fs in H.handoff_files(dev_out).values())
    assert carried < sum(len(ck["ema"]) for ck in originals.values())

    for r in runs.values():  # the device's run folders are gone; only the shards came back
        shutil.rmtree(r)
    found = H.handoff_files(dev_out)
    assert set(found) == set(runs)
    for name in sorted(found, key=lambda n: H.handoff_seq(found[n])):  # sources before the runs that use them
        res = H.adopt_handoff(found[name], runs[name])
        assert res["step"] == 2
    for n, r in runs.items():
        ck = torch.load(r / "ckpt" / "last.pt", weights_only=True)
        ema = originals[n]["ema"]
        assert set(ck["ema"]) == set(ema) and ck["step"] == 2 and ck["recipe"] == originals[n]["recipe"]
        bad = [k for k in ema if not torch.equal(ck["ema"][k], ema[k])]
        assert not bad, (n, bad[:5])
        assert json.loads((r / "train_info.json").read_text()) == infos[n]
    # an adopted run resumes (a fresh optimiser) and exports like any run
    last_name, last_extra = CHAINS[chain][-1]
    rec = _smoke(last_name, *[e.format(**{k: str(v) for k, v in runs.items()}) for e in last_extra])
    logs = []
    info = train(rec, max_steps=3, out=runs[last_name], resume=True, **{**kw, "log": logs.append})
    assert info["steps"] == 3 and any("no optimiser state" in s for s in logs)


def test_fp16_handoff_exports_the_same_bundle(tmp_path, one_thread):
    """The default fp16 handoff halves the size; the adopted run's fp16 export equals the original's."""
    from sr_core.training.export import export_run

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    run = tmp_path / "runs" / "rrdb-mini"
    train(_smoke("rrdb-mini"), pack_path=kit["pack"], out=run, max_steps=2, device="cpu", mixed_precision="no",
          val_dir=None, log=lambda s: None)
    a = export_run(run, model_id="m", assets_dir=tmp_path / "w1", evaluate=False)
    (fp16,) = H.write_handoff(run, tmp_path / "o16")
    (fp32,) = H.write_handoff(run, tmp_path / "o32", dtype="fp32")
    assert fp16.stat().st_size < 0.6 * fp32.stat().st_size
    shutil.rmtree(run)
    H.adopt_handoff([fp16], run)
    b = export_run(run, model_id="m", assets_dir=tmp_path / "w2", evaluate=False)
    # the same tensors and metadata -- and the same bytes (the export sorts safetensors' metadata map)
    from safetensors import safe_open

    fa, fb = (safe_open(str(Path(r["dir"]) / "model.safetensors"), "pt") for r in (a, b))
    assert fa.metadata() == fb.metadata() and set(fa.keys()) == set(fb.keys())
    assert all(torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys())
    wa, wb = (Path(r["dir"]) / "model.safetensors" for r in (a, b))
    assert wa.read_bytes() == wb.read_bytes()


def test_save_safetensors_is_reproducible_byte_for_byte(tmp_path):
    from safetensors import safe_open

    from sr_core.weights import save_safetensors

    t = {"b.w": torch.arange(6.0).view(2, 3), "a.w": torch.ones(3, dtype=torch.float16)}
    meta = {f"k{i}": f"v{i} \u00e9" for i in range(12)} | {"config": '{"x": [1, 2]}'}
    paths = [save_safetensors(t, tmp_path / f"{i}.safetensors", metadata=meta) for i in range(6)]
    assert len({p.read_bytes() for p in paths}) == 1
    with safe_open(str(paths[0]), "pt") as f:
        assert f.metadata() == meta and all(torch.equal(f.get_tensor(k), v) for k, v in t.items())
    import struct

    (n,) = struct.unpack("<Q", paths[0].read_bytes()[:8])
    assert n % 8 == 0  # the tensor data still starts 8-byte aligned


def test_values_past_fp16_travel_in_fp32(tmp_path, one_thread):
    """vqf4-mini counts code hits in a buffer that passed 65504 in the first GPU run and failed that call's
    whole fp16 handoff; such a tensor now travels in fp32, the rest in fp16."""
    from safetensors import safe_open

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    run = tmp_path / "runs" / "vqf4-mini"
    train(_smoke("vqf4-mini"), pack_path=kit["pack"], out=run, max_steps=2, device="cpu", mixed_precision="no",
          val_dir=None, log=lambda s: None)
    ck = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    (hits,) = [k for k in ck["ema"] if k.endswith("code_hits")]
    ck["ema"][hits] = torch.full_like(ck["ema"][hits], 296311.0)
    torch.save(ck, run / "ckpt" / "last.pt")
    (shard,) = H.write_handoff(run, tmp_path / "out")
    with safe_open(str(shard), "pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes.pop(hits) == torch.float32
    assert {d for d in dtypes.values() if d.is_floating_point} == {torch.float16}  # (and integer buffers)
    shutil.rmtree(run)
    H.adopt_handoff([shard], run)
    back = torch.load(run / "ckpt" / "last.pt", weights_only=True)["ema"][hits]
    assert torch.equal(back, ck["ema"][hits])


def test_incomplete_or_foreign_handoffs_are_refused(tmp_path):
    from safetensors.torch import save_file

    save_file({"a": torch.zeros(2)}, str(tmp_path / "x.00-of-02.safetensors"), metadata={"format": "sr_core-handoff-1"})
    with pytest.raises(ValueError, match="did not come back"):
        H.handoff_files(tmp_path)
    save_file({"a": torch.zeros(2)}, str(tmp_path / "x.01-of-02.safetensors"), metadata={"format": "other"})
    with pytest.raises(ValueError, match="not the first shard"):
        H.adopt_handoff(H.handoff_files(tmp_path)["x"][1:], tmp_path / "run")


def test_device_script_usage_and_refusals(tmp_path):
    """scripts/device.sh: usage without arguments, unknown issues and a train call outside a device refused."""
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "scripts" / "device.sh"
    run = lambda *a, **env: subprocess.run(["bash", str(script), *a], capture_output=True, text=True,  # noqa: E731
                                           env={**os.environ, **env}, timeout=60)
    r = run()
    assert r.returncode == 2 and "prep ISSUE" in r.stdout and "collect ISSUE DIR" in r.stdout
    # the whole header, to its dry-run recipe's last line, and none of the code below it
    assert "SIN_WARM=1" in r.stdout and "collect resshift /tmp/dry/out" in r.stdout and "set -euo" not in r.stdout
    r = run("train", "nosuch")
    assert r.returncode == 2 and "unknown issue" in r.stderr
    r = run("train", "resshift,nosuch")
    assert r.returncode == 2 and "unknown issue 'nosuch'" in r.stderr
    r = run("prep", "sd,stablesr")  # stablesr trains on the mini-sd that sd replaces
    assert r.returncode == 2 and "cannot share a call" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(script), "train", "resshift"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode != 0 and "OUT" in r.stderr


def test_preflight_runs_each_chain_on_the_device_and_names_a_failure(tmp_path, one_thread, monkeypatch):
    """`python -m sr_core.training preflight`: every recipe of a chain at smoke size, chained, then handed
    off -- and a fault names the recipe at once (what a lent GPU run checks before its budgets start)."""
    from sr_core.training import preflight as P
    from sr_core.training import trainer as T

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    work = tmp_path / "pre"
    times = P.preflight(["resshift"], kit["pack"], device="cpu", mixed_precision="no", workdir=work,
                        log=lambda s: None)
    assert list(times) == ["vqf4-mini", "resshift-mini", "sinsr-mini", "dec-resshift-mini", "dec-sinsr-mini"]
    for name in times:  # chained: each stage trained 2 steps and was handed off
        assert json.loads((work / "resshift" / name / "train_info.json").read_text())["steps"] == 2
    assert set(H.handoff_files(work / "resshift" / "handoff")) == set(times)
    # the teacher of the preflight's sinsr-mini is the preflight's own resshift-mini
    rec = json.loads((work / "resshift" / "sinsr-mini" / "train_info.json").read_text())["recipe"]
    assert rec["teacher_from"] == str(work / "resshift" / "resshift-mini")
    # the decoders learn from the preflight's own UNets, each with the sampler it serves with
    for who in ("resshift-mini", "sinsr-mini"):
        rec = json.loads((work / "resshift" / f"dec-{who}" / "train_info.json").read_text())["recipe"]
        assert (rec["train"], rec["init_from"]) == ("decoder_sr", str(work / "resshift" / who))

    with pytest.raises(ValueError, match="unknown chain"):
        P.preflight(["nope"], kit["pack"], device="cpu")
    real = T.train

    def broken(recipe, **kw):
        if recipe.name == "resshift-mini":
            raise RuntimeError("Expected all tensors to be on the same device")
        return real(recipe, **kw)

    monkeypatch.setattr(T, "train", broken)
    with pytest.raises(RuntimeError, match="recipe resshift-mini failed on cpu(.|\n)*same device"):
        P.preflight(["resshift"], kit["pack"], device="cpu", mixed_precision="no", log=lambda s: None)


def test_profile_times_each_phase_of_a_real_step(tmp_path, one_thread):
    """`python -m sr_core.training profile`: the phases of a step, the unsynchronised step and the op count
    (the figures that showed the first GPU run was bound by launches, not arithmetic)."""
    from sr_core.training import profile as PR

    kit = tiny_kit(tmp_path / "kit", 3, 1, train_size=(64, 64))
    res = PR.profile_recipe(_smoke("resshift-mini", "ae_from="), kit["pack"], device="cpu", steps=2, warmup=1,
                            mixed_precision="no")
    assert set(res["phases_ms"]) == set(PR.PHASES) and all(v >= 0 for v in res["phases_ms"].values())
    assert res["phases_ms"]["forward"] > 0 and res["step_ms"] > 0 and res["it_per_s"] > 0
    assert res["kernels_per_step"] > 100 and res["kernel_kind"] == "aten ops"


def test_fused_ema_equals_the_per_tensor_update():
    from sr_core.training.trainer import ema_update

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(2, 2))
    ema = __import__("copy").deepcopy(net)
    ref = __import__("copy").deepcopy(net)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
        net[1].running_mean.add_(1.0)
    ema_update(ema, net, 0.9)
    with torch.no_grad():
        for e, p in zip(ref.parameters(), net.parameters()):
            e.lerp_(p, 0.1)
        for e, b in zip(ref.buffers(), net.buffers()):
            e.copy_(b)
    for (k, a), b in zip(ema.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-7), k
