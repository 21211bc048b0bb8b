"""OpenCLIPTextTower / empty_prompt_embedding against the official FrozenOpenCLIPEmbedder.

The fixture tests/fixtures/stablesr_openclip_parity.* was made by the scratch script
/work/scratch/stablesr_clip_oracle/make_fixture.py: open_clip_torch 3.3.0's own source (wheel unpacked in
scratch, not installed; `TextTransformer` with its `Transformer` built sequence-first as open_clip 2.0.2,
StableSR's pin, runs it; its real `tokenize`) at width 64 / 3 layers / 4 heads, every tensor filled by
`deterministic_tensor("cond_stage_model.model." + name)`, run through the OFFICIAL StableSR
`FrozenOpenCLIPEmbedder.forward` / `encode_with_transformer` / `text_transformer_forward`.  The key/shape
list in the json lets this test rebuild the same checkpoint without the official code.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sr_core.nets.init import deterministic_tensor
from sr_core.nets.openclip_text import (OpenCLIPTextTower, empty_prompt_embedding, empty_prompt_tokens,
                                        infer_text_config)

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-5


@pytest.fixture(scope="module")
def fx():
    from safetensors.torch import load_file

    meta = json.loads((FIX / "stablesr_openclip_parity.json").read_text())
    sd = {name: deterministic_tensor(name, tuple(shape)) for name, shape in meta["keys"]}
    return meta, sd, load_file(str(FIX / "stablesr_openclip_parity.safetensors"))


def test_empty_prompt_tokens_match_open_clip_tokenizer(fx):
    _, _, t = fx
    tok = empty_prompt_tokens()
    assert tok.dtype == torch.long and tok.shape == (1, 77)
    assert tok[0, :2].tolist() == [49406, 49407] and int(tok[0, 2:].abs().sum()) == 0
    assert torch.equal(tok, t["empty_tokens"])


@pytest.mark.parametrize("layer", ["penultimate", "last"])
def test_tower_matches_official(fx, layer):
    meta, sd, t = fx
    prefix = meta["prefix"]
    tower = OpenCLIPTextTower(width=meta["width"], layers=meta["layers"], heads=meta["heads"]).eval()
    tower.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if not k.endswith("text_projection")},
                          strict=True)
    with torch.no_grad():
        rand = tower(t["rand_tokens"], layer=layer)
        empty = tower(empty_prompt_tokens(), layer=layer)
    assert rand.shape == (2, 77, meta["width"])
    assert (rand - t[f"rand.{layer}"]).abs().max().item() <= TOL
    assert (empty - t[f"empty.{layer}"]).abs().max().item() <= TOL


def test_empty_prompt_embedding_from_checkpoint(fx):
    meta, sd, t = fx
    ckpt = dict(sd)
    ckpt["cond_stage_model.model.logit_scale"] = torch.tensor(4.6)
    ckpt["cond_stage_model.model.visual.proj"] = torch.zeros(3, 3)  # ignored if present
    ckpt["model.diffusion_model.out.2.weight"] = torch.zeros(4, 4, 3, 3)  # other prefixes untouched
    half = {k: (v.half() if k.startswith("cond_stage_model") else v) for k, v in ckpt.items()}
    emb = empty_prompt_embedding(ckpt, heads=meta["heads"])
    assert emb.shape == (1, 77, meta["width"]) and emb.dtype == torch.float32
    assert (emb - t["empty.penultimate"]).abs().max().item() <= TOL
    last = empty_prompt_embedding(ckpt, layer="last", heads=meta["heads"])
    assert (last - t["empty.last"]).abs().max().item() <= TOL
    # an fp16 checkpoint gives the fp16-rounded weights' result (close, not equal)
    assert (empty_prompt_embedding(half, heads=meta["heads"]) - emb).abs().max().item() < 5e-2


def test_infer_config_and_strictness(fx):
    meta, sd, _ = fx
    cfg = infer_text_config(sd)
    assert cfg == {"width": 64, "layers": 3, "heads": 1, "context_length": 77, "vocab_size": 49408, "mlp_ratio": 4.0}
    # ViT-H/14: width 1024 -> 16 heads of 64
    fake = {"m.positional_embedding": torch.zeros(77, 1024), "m.token_embedding.weight": torch.zeros(49408, 1),
            **{f"m.transformer.resblocks.{i}.mlp.c_fc.weight": torch.zeros(4096, 1) for i in range(24)}}
    assert infer_text_config(fake, "m.") == {"width": 1024, "layers": 24, "heads": 16, "context_length": 77,
                                              "vocab_size": 49408, "mlp_ratio": 4.0}
    broken = {k: v for k, v in sd.items() if not k.endswith("ln_final.weight")}
    with pytest.raises(RuntimeError, match="ln_final.weight"):
        empty_prompt_embedding(broken, heads=meta["heads"])
    with pytest.raises(KeyError, match="no OpenCLIP text tower"):
        empty_prompt_embedding(sd, prefix="nothing.")
    with pytest.raises(ValueError, match="layer"):
        OpenCLIPTextTower(width=8, layers=1, heads=2)(empty_prompt_tokens(), layer="pooled")
