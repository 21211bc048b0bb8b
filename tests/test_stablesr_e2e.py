"""StableSR end to end against the official code: a short aggregated sampling run (3 respaced steps,
1x4x24x40 latent, 16-px latent tiles with 8 px overlap, eps prediction) of the official
`LatentDiffusionSRTextWT.sample_canvas` loop driving the official tiny `UNetModelDualcondV2` and
`EncoderUNetModelWT` (names and shapes in tests/fixtures/stablesr_unet_parity.json, every tensor filled
from its official name), with its step noise recorded.  Here the same weights are rebuilt from the key
list, converted with `convert_ldm_unet`, and run through the method's own per-tile wiring
(`make_model_fn`) and `canvas_sample`."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sr_core.diffusion import stablesr as sd
from sr_core.methods.stablesr import make_model_fn
from sr_core.nets.init import deterministic_tensor
from sr_core.nets.stablesr_unet import build_stablesr_unet, convert_ldm_unet

FIX = Path(__file__).parent / "fixtures"


def test_aggregated_sampling_run_matches_the_official_code(one_thread):
    from safetensors.torch import load_file

    meta = json.loads((FIX / "stablesr_e2e_parity.json").read_text())
    fx = load_file(str(FIX / "stablesr_e2e_parity.safetensors"))
    keys = json.loads((FIX / "stablesr_unet_parity.json").read_text())["keys"]["tiny"]
    scale = float(meta["fill_scale"])
    official = {"model.diffusion_model." + k: deterministic_tensor(k, tuple(s), scale=scale)
                for k, s in keys["unet"].items()}
    official.update({"structcond_stage_model." + k: deterministic_tensor(k, tuple(s), scale=scale)
                     for k, s in keys["encoder"].items()})
    model = build_stablesr_unet("tiny")
    model.load_state_dict(convert_ldm_unet(official, "tiny"), strict=True)

    steps = int(meta["steps"])
    sched = sd.respace(sd.sd_betas(), steps)
    assert [int(t) for t in sched.timesteps] == meta["ori_timesteps"]
    x_T = sd.q_sample(fx["z_lr"], sd.sd_schedule(), 999, fx["noise0"])  # the LR latent noised to t = 999
    assert (x_T - fx["x_T"]).abs().max() <= 1e-5
    with torch.no_grad():
        out = sd.canvas_sample(make_model_fn(model, fx["z_lr"], fx["context"]), fx["x_T"], sched,
                               tile=int(meta["tile"]), overlap=int(meta["overlap"]),
                               noise_fn=lambda k, shape: fx[f"noise.{k}"], parameterization=meta["parameterization"])
    scale_out = float(fx["out"].abs().max())
    diff = float((out - fx["out"]).abs().max())
    assert scale_out > 10  # the run does something: the output is far from the input latent scale
    print(f"max abs diff {diff:.2e} on outputs up to {scale_out:.1f}")
    assert diff <= 1e-4, diff
