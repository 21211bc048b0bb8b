"""DAPE (OSEDiff's prompt tagger): parity of `sr_core.nets.ram.RAM` with the official ram_lora code, strict
loading of the official key names, preprocessing, thresholds and tag join, prompt composition, and how
`OSEDiff` switches it on (auto when the files are there, off otherwise, required with dape=True, never
for the mini).

The fixture tests/fixtures/dape_parity.* was made by the scratch script
/work/scratch/s12/dape/make_dape_fixture.py with the OFFICIAL cswry/OSEDiff `ram` package (commit in the
json): `ram(pretrained=..., pretrained_condition=..., image_size=384, vit='swin_l')` built at a reduced
size (Swin image 96, window 3, embed 16, depths 2-2-2-2, heads 1-2-4-8; q2l BERT hidden 32, 4 heads,
2 layers; 20 tags with the thresholds in the json), every tensor filled by
`deterministic_tensor(name)`, checkpoints written as the official loader reads them (RAM {"model": ...}
without LoRA, DAPE = every "lora_" tensor), then `.eval()` (loralib merges the LoRA, the tied tag-encoder
LoRA included) and `condition_forward` / `generate_tag` in fp32 on two seeded images preprocessed as
torchvision 0.15's `Resize((96, 96))` on tensors (bilinear, no antialias) + ImageNet `Normalize`.
The json's key list (with shapes) lets this test rebuild both checkpoints without the official code.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from sr_core import api
from sr_core.methods.dape import (DAPE_ENV, DAPE_FILES, DAPETagger, compose_prompt, dape_files, load_pth,
                                  read_tag_list, read_thresholds)
from sr_core.methods.osediff import OSEDiff, pil_bicubic
from sr_core.nets.init import deterministic_tensor
from sr_core.nets.ram import (IMAGENET_MEAN, IMAGENET_STD, RAM, RAMConfig, class_thresholds, join_tags,
                              load_ram_weights, ram_preprocess, select_tags)
from sr_core.types import Settings, WeightsUnavailable

FIX = Path(__file__).parent / "fixtures"
TOL = 1e-4


@pytest.fixture(scope="module")
def fx(one_thread):
    from safetensors.torch import load_file

    meta = json.loads((FIX / "dape_parity.json").read_text(encoding="utf-8"))
    c = meta["config"]
    cfg = RAMConfig(image_size=c["image_size"], patch_size=c["patch_size"], embed_dim=c["embed_dim"],
                    depths=tuple(c["depths"]), num_heads=tuple(c["num_heads"]), window_size=c["window_size"],
                    embed_width=c["embed_width"], hidden_size=c["hidden_size"],
                    num_attention_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                    num_hidden_layers=c["num_hidden_layers"], num_classes=c["num_classes"], lora_rank=c["lora_rank"])
    full = {}
    tied = set(meta["tied_in_official"])  # tag_encoder tensors tied to the head hold the head's values
    for name, shape, dtype in meta["keys"]:
        if dtype != "float32":  # integer buffers (relative_position_index): values do not matter, skipped
            full[name] = torch.zeros(shape, dtype=getattr(torch, dtype))
            continue
        owner = name.replace("tag_encoder.", "tagging_head.", 1) if name in tied else name
        full[name] = deterministic_tensor(owner, tuple(shape))
    ram_sd = {k: v for k, v in full.items() if "lora_" not in k}
    dape_sd = {k: v for k, v in full.items() if "lora_" in k}
    return meta, cfg, ram_sd, dape_sd, load_file(str(FIX / "dape_parity.safetensors"))


def _model(cfg, ram_sd, dape_sd, **kw):
    m = RAM(cfg).eval()
    rep = load_ram_weights(m, ram_sd, dape_sd, **kw)
    return m, rep


def _maxdiff(a, b) -> float:
    return float((a.detach().float() - b.float()).abs().max())


# --------------------------------------------------------------------------------------------
# parity with the official code


def test_parity_with_official_ram_lora(fx):
    meta, cfg, ram_sd, dape_sd, t = fx
    m, rep = _model(cfg, ram_sd, dape_sd)
    x = torch.cat([ram_preprocess(t[f"img{i}"].float() / 255.0, cfg.image_size) for i in range(2)])
    assert _maxdiff(x, t["x"]) <= 1e-6  # the official transform (torchvision 0.15 Resize on tensors + Normalize)
    with torch.no_grad():
        emb = m.image_embeds(t["x"])
        logits = m(t["x"])
    assert emb.shape == t["image_embeds"].shape and _maxdiff(emb, t["image_embeds"]) <= TOL
    assert logits.shape == (2, cfg.num_classes) and _maxdiff(logits, t["logits"]) <= TOL
    assert _maxdiff(torch.sigmoid(logits), t["probs"]) <= TOL
    # the LoRA merge of upstream's eval(), the tied tag-encoder LoRA included
    q = m.tagging_head.encoder.layer[0].crossattention.self.query.weight
    assert _maxdiff(q, t["merged_tagging_query_0"]) <= 1e-6
    thr = class_thresholds(meta["thresholds"], cfg.num_classes)
    assert torch.equal(thr, t["class_threshold"])
    chosen = select_tags(torch.sigmoid(logits), thr, meta["tag_list"])
    assert torch.equal(torch.tensor([[float(meta["tag_list"][i] in c) for i in range(cfg.num_classes)]
                                     for c in chosen]), t["targets"])
    assert [join_tags(c) for c in chosen] == meta["tags"] and meta["tags"][0] and meta["tags"][1] == ""


def test_the_tied_tag_encoder_lora_is_what_upstream_merges(fx):
    """Without the tag encoder's LoRA of the tied layers the logits move: the fixture exercises it."""
    meta, cfg, ram_sd, dape_sd, t = fx
    no_tied = {k: v for k, v in dape_sd.items() if not k.startswith("tag_encoder.")}
    m, rep = _model(cfg, ram_sd, no_tied)
    assert rep.tied == []
    with torch.no_grad():
        assert _maxdiff(m(t["x"]), t["logits"]) > 1e-3
    m, rep = _model(cfg, ram_sd, dape_sd)
    assert rep.tied == [f"tagging_head.encoder.layer.{i}.crossattention.self.{p}" for i in range(2)
                        for p in ("key", "query")]


def test_official_key_names_load_strictly(fx):
    meta, cfg, ram_sd, dape_sd, t = fx
    m, rep = _model(cfg, ram_sd, dape_sd)
    ours = set(m.state_dict())
    official = {k for k, _s, _d in meta["keys"]}
    assert ours <= official  # every parameter of ours has its official name
    caption = [k for k in official if k.startswith(("tag_encoder.", "text_decoder."))]
    buffers = [k for k in official if k.endswith((".relative_position_index", ".attn_mask"))]
    tied_lora = {k for k in caption if ".crossattention.self." in k and "lora_" in k and
                 k.startswith(("tag_encoder.encoder.layer.0.", "tag_encoder.encoder.layer.1."))}
    assert rep.loaded == len(ours)
    assert sorted(rep.skipped["caption branch (tag_encoder / text_decoder), not used for tagging"]) == \
        sorted(set(caption) - tied_lora)
    assert sorted(rep.skipped["Swin buffer rebuilt from the config"]) == sorted(buffers)
    assert official == ours | set(caption) | set(buffers)
    # RAM's older name of the head ("vision_multi.") is renamed as upstream's loader does
    renamed = {("vision_multi." + k[len("tagging_head."):] if k.startswith("tagging_head.") else k): v
               for k, v in ram_sd.items()}
    m2, _ = _model(cfg, renamed, dape_sd)
    with torch.no_grad():
        assert _maxdiff(m2(t["x"]), t["logits"]) <= TOL


@pytest.mark.parametrize("edit,word", [
    (lambda r, d: r.pop("fc.weight"), "missing 1: fc.weight"),
    (lambda r, d: r.update({"visual_encoder.head.weight": torch.zeros(3)}), "unexpected 1: .*visual_encoder.head"),
    (lambda r, d: r.update({"label_embed": torch.zeros(7, 512)}), "shape mismatch 1: label_embed"),
    (lambda r, d: d.pop("visual_encoder.layers.0.blocks.0.attn.qkv.lora_A"), "missing 1: .*qkv.lora_A"),
    (lambda r, d: d.pop("tag_encoder.encoder.layer.1.crossattention.self.key.lora_B"), "lacks lora_B"),
])
def test_strict_loading_rejects(fx, edit, word):
    meta, cfg, ram_sd, dape_sd, t = fx
    r, d = dict(ram_sd), dict(dape_sd)
    edit(r, d)
    with pytest.raises(WeightsUnavailable, match=word):
        _model(cfg, r, d)


def test_without_dape_the_lora_is_zero(fx):
    """pretrained_condition='' upstream: loralib's lora_B starts at zero, so the plain RAM runs."""
    meta, cfg, ram_sd, dape_sd, t = fx
    m, rep = _model(cfg, ram_sd, None)
    assert rep.lora == "none"
    assert all(float(p.detach().abs().max()) == 0 for n, p in m.named_parameters() if n.endswith("lora_B"))
    plain = RAM(RAMConfig(**{**cfg.__dict__, "lora_rank": 0})).eval()
    load_ram_weights(plain, ram_sd)
    with torch.no_grad():
        assert _maxdiff(m(t["x"]), plain(t["x"])) <= 1e-6


def test_full_size_config_is_swin_l_384_and_q2l():
    """The default config gives the official shapes (built on the meta device: no memory, no time)."""
    with torch.device("meta"):
        m = RAM()
    sd = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert sd["label_embed"] == (4585, 512) and sd["image_proj.weight"] == (512, 1536)
    assert sd["visual_encoder.patch_embed.proj.weight"] == (192, 3, 4, 4)
    assert sd["visual_encoder.layers.2.blocks.17.attn.relative_position_bias_table"] == (23 * 23, 24)
    assert sd["visual_encoder.layers.2.blocks.17.attn.qkv.lora_A"] == (16, 768)
    assert sd["visual_encoder.layers.2.blocks.17.attn.qkv.lora_B"] == (1536, 8)
    assert sd["visual_encoder.layers.2.downsample.reduction.weight"] == (1536, 3072)
    assert sd["visual_encoder.norm.weight"] == (1536,) and "visual_encoder.layers.3.downsample.norm.weight" not in sd
    assert sd["wordvec_proj.weight"] == (768, 512) and sd["fc.weight"] == (1, 768)
    assert sd["tagging_head.encoder.layer.1.crossattention.self.key.weight"] == (768, 512)
    assert sd["tagging_head.encoder.layer.1.crossattention.self.key.lora_A"] == (8, 512)
    assert sd["tagging_head.encoder.layer.1.intermediate.dense.weight"] == (3072, 768)
    assert not any(".attention." in k or "embeddings" in k for k in sd)  # deleted upstream
    assert "tagging_head.encoder.layer.2.output.dense.weight" not in sd
    blocks = [b for layer in m.visual_encoder.layers for b in layer.blocks]
    assert [(b.resolution, b.window, b.shift) for b in blocks[::2][:4]] == [(96, 12, 0), (48, 12, 0), (24, 12, 0),
                                                                             (24, 12, 0)]
    assert [b.shift for b in blocks] == [0, 6, 0, 6] + [0, 6] * 9 + [0, 0]  # 12 x 12 at the last stage: no shift


# --------------------------------------------------------------------------------------------
# preprocessing, thresholds, tags, prompt


def test_preprocess_hand_computed():
    # a 4x4 image whose rows are [0, 1, 0, 0]: bilinear 4 -> 2 without antialias samples x = 0.5 and 2.5,
    # i.e. the mean of pixels (0, 1) and (2, 3): [0.5, 0] (an antialiased resize would spread the 1 wider)
    img = torch.tensor([0.0, 1.0, 0.0, 0.0]).view(1, 1, 1, 4).expand(1, 3, 4, 4)
    y = ram_preprocess(img, 2)
    for c in range(3):
        want = torch.tensor([[0.5, 0.0], [0.5, 0.0]])
        assert torch.allclose(y[0, c], (want - IMAGENET_MEAN[c]) / IMAGENET_STD[c], atol=1e-6)
    # upsampling 2 -> 4: source x = -0.25 (clamped), 0.25, 0.75, 1.25 (clamped): [a, .75a+.25b, .25a+.75b, b]
    img = torch.tensor([0.2, 1.0]).view(1, 1, 1, 2).expand(1, 3, 2, 2)
    y = ram_preprocess(img, 4)
    row = torch.tensor([0.2, 0.4, 0.8, 1.0])
    assert torch.allclose(y[0, 1, 2], (row - IMAGENET_MEAN[1]) / IMAGENET_STD[1], atol=1e-6)
    # already at size: only the normalisation
    z = torch.rand(1, 3, 4, 4)
    assert torch.allclose(ram_preprocess(z, 4)[0, 2], (z[0, 2] - 0.406) / 0.225, atol=1e-6)


def test_thresholds_and_tag_join():
    t = class_thresholds([0.65, 0.95, 0.9, 0.3], 5)
    assert torch.allclose(t, torch.tensor([0.65, 0.95, 0.9, 0.3, 0.68]))  # missing lines keep 0.68
    t2 = class_thresholds([0.65, 0.95, 0.9, 0.3], 4, add_threshold=0.1)
    assert torch.allclose(t2, torch.tensor([0.75, 0.95, 0.9, 0.4]))  # > max kept; else min(v + add, max)
    with pytest.raises(ValueError):
        class_thresholds([0.5] * 3, 2)
    probs = torch.tensor([[0.7, 0.95, 0.91, 0.2, 0.69], [0.1, 0.1, 0.1, 0.1, 0.1]])
    tags = ["dog", "cat", "grass", "sky", "tree"]
    chosen = select_tags(probs, t, tags)
    assert chosen == [["dog", "grass", "tree"], []]  # strictly above: 0.95 is not > 0.95
    assert select_tags(probs, t, tags, delete_index=[0])[0] == ["grass", "tree"]
    assert join_tags(chosen[0]) == "dog, grass, tree" and join_tags([]) == ""


def test_prompt_composition_is_the_official_format():
    assert compose_prompt("dog, grass", "") == "dog, grass, ,"
    assert compose_prompt("dog, grass", "a sharp photo") == "dog, grass, a sharp photo,"
    assert compose_prompt("", "") == ", ,"


def test_tag_files_and_safe_loading(tmp_path):
    (tmp_path / "t.txt").write_text("3D glasses\nabacus\ncat", encoding="utf-8")
    assert read_tag_list(tmp_path / "t.txt") == ["3D glasses", "abacus", "cat"]
    (tmp_path / "th.txt").write_text("0.65\n0.8\n0.9\n", encoding="utf-8")
    assert read_thresholds(tmp_path / "th.txt") == [0.65, 0.8, 0.9]
    (tmp_path / "bad.txt").write_text("0.65\nx\n", encoding="utf-8")
    with pytest.raises(WeightsUnavailable, match="line 2"):
        read_thresholds(tmp_path / "bad.txt")
    sd = {"fc.weight": torch.ones(1, 4)}
    torch.save({"model": sd, "epoch": 3}, tmp_path / "a.pth")
    assert torch.equal(load_pth(tmp_path / "a.pth")["fc.weight"], sd["fc.weight"])
    # a non-tensor object in the pickle: weights_only refuses it, the restricted unpickler reads the tensors
    torch.save({"model": sd, "args": argparse.Namespace(lr=1e-4)}, tmp_path / "b.pth")
    assert list(load_pth(tmp_path / "b.pth")) == ["fc.weight"]


# --------------------------------------------------------------------------------------------
# the tagger and OSEDiff


def _write_dape_folder(folder: Path, meta, ram_sd, dape_sd) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ram_sd}, folder / "ram_swin_large_14m.pth")
    torch.save(dape_sd, folder / "DAPE.pth")
    (folder / "ram_tag_list.txt").write_text("\n".join(meta["tag_list"]), encoding="utf-8")
    (folder / "ram_tag_list_threshold.txt").write_text("\n".join(map(str, meta["thresholds"])) + "\n",
                                                       encoding="utf-8")
    return folder


def _clean_env(monkeypatch, tmp_path):
    for var in ("OSEDIFF_SD_PATH", "OSEDIFF_WEIGHTS", "OSEDIFF_SD_REPO", "SR_WEIGHTS_DIR", DAPE_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SR_CACHE_DIR", str(tmp_path / "cache"))


def test_tagger_from_files_matches_official_tags(fx, tmp_path, monkeypatch):
    meta, cfg, ram_sd, dape_sd, t = fx
    _clean_env(monkeypatch, tmp_path)
    folder = _write_dape_folder(tmp_path / "dape", meta, ram_sd, dape_sd)
    monkeypatch.setenv(DAPE_ENV, str(folder))
    files = dape_files()
    assert {k: p.name for k, p in files.items()} == dict(zip(("ram", "dape", "tag_list", "thresholds"), DAPE_FILES))
    tagger = DAPETagger.from_files(files, cfg=cfg)
    assert tagger.report.lora == "DAPE.pth" and len(tagger.report.tied) == 4
    assert tagger.tags(t["img0"].float() / 255.0) == [meta["tags"][0]]
    assert tagger.prompt(t["img1"].float() / 255.0, "x") == ("", ", x,")
    assert _maxdiff(tagger.probabilities(t["img0"].float() / 255.0), t["probs"][:1]) <= TOL


def test_osediff_auto_off_without_files(monkeypatch, tmp_path):
    _clean_env(monkeypatch, tmp_path)
    for kw in ({}, {"dape": False}):
        m = OSEDiff("official", **kw)
        assert m.dape_enabled() is False and m.tagger("cpu") is None
    a, b = OSEDiff("official").availability(), OSEDiff("official", dape=False).availability()
    assert a == b and "DAPE" not in a.reason
    # with the networks present, auto and off stay available; dape=True is not, and says why
    (tmp_path / "w.pkl").write_bytes((FIX / "osediff_parity.pkl").read_bytes())
    for sub in ("unet", "vae", "scheduler", "text_encoder", "tokenizer"):
        (tmp_path / "sd" / sub).mkdir(parents=True)
    kw = dict(weights=tmp_path / "w.pkl", sd_path=tmp_path / "sd")
    assert OSEDiff("official", **kw).availability().ok and OSEDiff("official", dape=False, **kw).availability().ok
    req = OSEDiff("official", dape=True, **kw)
    a = req.availability()
    assert not a.ok
    for word in (DAPE_ENV, *DAPE_FILES, "not in the checkpoints", "Nothing is downloaded"):
        assert word in a.reason
    with pytest.raises(WeightsUnavailable, match=DAPE_ENV):
        req.tagger("cpu")
    # a half-filled folder: the message names what is missing
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "DAPE.pth").write_bytes(b"")
    (tmp_path / "half" / "ram_swin_large_14m.pth").write_bytes(b"")
    with pytest.raises(WeightsUnavailable, match=r"missing ram_tag_list.txt, ram_tag_list_threshold.txt"):
        OSEDiff("official", dape=True, dape_dir=tmp_path / "half").dape_enabled()
    assert OSEDiff("official", dape_dir=tmp_path / "half").dape_enabled() is False


class _FakeNet:
    """Stands in for the loaded SD networks: records the prompt, returns the input."""

    def __init__(self):
        self.prompts = []

    def __call__(self, x, prompt="", **kw):
        self.prompts.append(prompt)
        return x


class _FakeTagger:
    def __init__(self, tags):
        self.tags_, self.seen = tags, []

    def tags(self, img):
        self.seen.append(img.clone())
        return [self.tags_]


def test_osediff_run_prompt_with_and_without_dape(monkeypatch, tmp_path):
    _clean_env(monkeypatch, tmp_path)
    m = OSEDiff("official")
    net = _FakeNet()
    monkeypatch.setattr(m, "model", lambda device="cpu": net)
    lr = torch.rand(1, 3, 13, 21, generator=torch.Generator().manual_seed(0))
    st = api.check_settings(m.info, Settings(prompt="a cat", color_fix="none"))
    info: dict = {}
    api.run_method(m, lr, st, run_info=info)
    assert net.prompts == ["a cat"] and info == {}  # auto, no files: the user prompt alone, as before
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "DAPE.pth").write_bytes(b"")
    monkeypatch.setenv(DAPE_ENV, str(tmp_path / "half"))  # named but incomplete: off, and the progress says why
    msgs = []
    api.run_method(m, lr, st, progress=lambda f, s: msgs.append(s), run_info=info)
    assert net.prompts[-1] == "a cat" and info == {}
    assert any("DAPE off" in s and "missing ram_swin_large_14m.pth, ram_tag_list.txt" in s for s in msgs)
    fake = _FakeTagger("dog, grass")
    monkeypatch.setattr(m, "tagger", lambda device="cpu": fake)
    msgs = []
    api.run_method(m, lr, st, progress=lambda f, s: msgs.append(s), run_info=info)
    assert net.prompts[-1] == "dog, grass, a cat,"
    assert info == {"dape_tags": "dog, grass", "prompt": "dog, grass, a cat,"}
    assert any("DAPE tags: dog, grass" in s for s in msgs)
    # the tagged image is the x4 bicubic of the LR without the facade's padding to a multiple of 8
    assert fake.seen[0].shape == (1, 3, 52, 84)
    assert torch.equal(fake.seen[0], pil_bicubic(lr, 4))
    api.run_method(m, lr, api.check_settings(m.info, Settings(color_fix="none")), run_info=info)
    assert net.prompts[-1] == "dog, grass, ,"


def test_result_info_carries_the_method_facts(monkeypatch):
    from PIL import Image

    from sr_core.registry import Registry
    from sr_core.types import Availability, MethodInfo

    class Tagged:
        info = MethodInfo(id="tagged", label="tagged", description="", scales=(2,), default_scale=2)

        def availability(self):
            return Availability(True)

        def run(self, lr, ctx):
            ctx.info.update(dape_tags="dog", prompt="dog, ,", device="not this")
            return torch.nn.functional.interpolate(lr, scale_factor=2)

    reg = Registry()
    reg.add(Tagged())
    res = api.upscale(Image.new("RGB", (8, 6)), "tagged", registry=reg)
    assert res.info["dape_tags"] == "dog" and res.info["prompt"] == "dog, ," and res.info["device"] == "cpu"


def test_mini_never_uses_dape(fx, monkeypatch, tmp_path):
    meta, cfg, ram_sd, dape_sd, t = fx
    _clean_env(monkeypatch, tmp_path)
    monkeypatch.setenv(DAPE_ENV, str(_write_dape_folder(tmp_path / "dape", meta, ram_sd, dape_sd)))
    assert OSEDiff("official").dape_enabled() is True  # the files are there
    mini = OSEDiff("mini", bundle_dir=tmp_path / "no-mini")
    assert mini.dape_enabled() is False and mini.tagger("cpu") is None
    with pytest.raises(ValueError, match="mini"):
        OSEDiff("mini", bundle_dir=tmp_path / "no-mini", dape=True)
