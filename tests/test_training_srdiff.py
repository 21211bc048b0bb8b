"""srdiff-mini recipe: CPU smoke run (loss goes down), the frozen encoder, export -> SRDiff("mini") loads and runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sr_core.training.recipes import RECIPES, apply_overrides
from sr_core.training.recipes_srdiff import SRDIFF_MINI
from sr_core.training.trainer import train
from training_helpers import tiny_kit


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("kit")
    return tiny_kit(root, 4, 2)


def _smoke():
    return apply_overrides(SRDIFF_MINI, list(SRDIFF_MINI.smoke))


def test_build_model_freezes_the_encoder_and_needs_its_weights(tmp_path):
    from safetensors.torch import save_file

    from sr_core.nets.rrdbnet import RRDBNet

    model = _smoke().build_model()
    assert not any(p.requires_grad for p in model.rrdb.parameters())
    assert all(p.requires_grad for p in model.denoise_fn.parameters())
    assert model.config()["diffusion"]["default_steps"] == 3 and model.config()["rrdb"]["nf"] == 8
    enc = RRDBNet(3, 3, nf=8, nb=3, gc=4)
    save_file(enc.state_dict(), str(tmp_path / "enc.safetensors"))
    m2 = apply_overrides(_smoke(), [f"model.rrdb_weights={tmp_path / 'enc.safetensors'}"]).build_model()
    assert m2.rrdb.nb == 3 and torch.equal(m2.rrdb.conv_first.weight, enc.conv_first.weight)
    with pytest.raises(FileNotFoundError, match="rrdb-mini"):
        apply_overrides(_smoke(), [f"model.rrdb_weights={tmp_path / 'missing.safetensors'}"]).build_model()


def test_smoke_run_export_and_method(tiny, tmp_path, monkeypatch):
    from sr_core.methods.srdiff import SRDiff
    from sr_core.training.export import export_run
    from sr_core.types import RunContext, Settings

    recipe = _smoke()
    out = tmp_path / "run"
    info = train(recipe, pack_path=tiny["pack"], out=out, max_steps=40, device="cpu", mixed_precision="no",
                 val_dir=tiny["eval"] / "Set5" / "HR", log=lambda s: None)
    with open(out / "log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 40 and np.mean(losses[-10:]) < np.mean(losses[:10])
    assert info["final_val_set5"]["n"] == 2
    ck = torch.load(out / "ckpt" / "last.pt", weights_only=True)
    torch.manual_seed(recipe.seed)  # the trainer's seeding before it builds the model
    first = recipe.build_model()  # the frozen encoder did not move
    assert all(torch.equal(ck["model"][f"rrdb.{k}"], v) for k, v in first.rrdb.state_dict().items())

    monkeypatch.setitem(RECIPES, "srdiff-mini", SRDIFF_MINI)  # the lead registers it in recipes.py
    res = export_run(out, model_id="srdiff-mini", assets_dir=tmp_path / "weights", dtype="fp32",
                     eval_sets=("Set5",), eval_root=tiny["eval"])
    d = Path(res["dir"])
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["config"]["unet"]["dim"] == 8 and "Set5" in cfg["eval_x4"]
    card = (d / "MODEL_CARD.md").read_text()  # the card describes SRDiff, not the RRDB regression recipe
    assert "srdiff_unet.py" in card and "methods/srdiff.py" in card and "noise" in card
    assert "recipes_srdiff.py" in card and "L1 loss on images" not in card
    method = SRDiff("mini", bundle_dir=d)
    assert method.availability().ok and method.info.steps.default == 3
    lr = torch.rand(1, 3, 6, 8)
    ctx = RunContext(settings=Settings(scale=4, steps=3), device=torch.device("cpu"), generator=torch.Generator(),
                     full_size=(6, 8))
    with torch.inference_mode():
        sr = method.run(lr, ctx)
    assert sr.shape == (1, 3, 24, 32) and torch.isfinite(sr).all()
    # the method's network is the exported EMA network
    ema = recipe.build_model()
    ema.load_state_dict(ck["ema"])
    got = method.model(torch.device("cpu")).state_dict()
    assert all(torch.equal(got[k], v) for k, v in ema.state_dict().items())
