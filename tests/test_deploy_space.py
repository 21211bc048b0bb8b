"""scripts/deploy_space.py: what goes to a Hugging Face Space, the checks before it, and the upload calls
(through a recording stand-in for the hub client: there is no network here)."""

import hashlib
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("deploy_space", ROOT / "scripts" / "deploy_space.py")
DS = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(DS)


def test_this_checkout_is_ready_for_a_space():
    s = DS.check()
    files = set(s["files"])
    assert {"README.md", "app.py", "requirements.txt", "LICENSE"} <= files
    assert any(f.startswith("sr_core/") for f in files) and any(f.startswith("presets/") for f in files)
    assert not any(f.startswith(("tests/", "scripts/", ".ci/", "runs/", "packs/")) for f in files)
    # every bundled mini goes up with its card (the app runs them offline on the Space's CPU)
    assert {"rrdb-mini", "srdiff-mini", "resshift-mini", "sinsr-mini", "mini-sd", "osediff-mini",
            "stablesr-mini"} <= set(s["models"])
    assert s["front_matter"]["sdk"] == "gradio" and s["bytes"] > 10 * 2**20


def _space(root: Path, *, sdk_version="6.31.0", pin="6.31.0", corrupt=False) -> Path:
    (root / "assets" / "weights" / "m").mkdir(parents=True)
    (root / "README.md").write_text(f"---\ntitle: t\nsdk: gradio\nsdk_version: {sdk_version}\napp_file: app.py\n---\n# t\n")
    (root / "app.py").write_text("print('app')\n")
    (root / "requirements.txt").write_text(f"torch==2.13.0\ngradio=={pin}\n")
    w = root / "assets" / "weights" / "m"
    (w / "MODEL_CARD.md").write_text("# m\n")
    blob = b"\x00weights" * 100
    (w / "model.safetensors").write_bytes(blob)
    (w / "SHA256SUMS").write_text(f"{hashlib.sha256(blob).hexdigest()}  model.safetensors\n")
    if corrupt:
        (w / "model.safetensors").write_bytes(blob + b"x")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("")
    return root


class FakeApi:
    def __init__(self, fail=None):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        if self.fail:
            raise self.fail
        self.calls.append(("upload_folder", kw))

    def request_space_hardware(self, repo_id, hardware):
        self.calls.append(("hardware", repo_id, hardware))


def test_deploy_creates_the_space_and_uploads_only_the_checked_files(tmp_path):
    root = _space(tmp_path)
    api = FakeApi()
    url = DS.deploy("me/sr", root=root, api=api, hardware="zero-a10g")
    assert url == "https://huggingface.co/spaces/me/sr"
    (c0, repo, kw), (c1, up), hw = api.calls
    assert c0 == "create_repo" and repo == "me/sr" and kw["repo_type"] == "space" and kw["space_sdk"] == "gradio"
    assert kw["exist_ok"] is True
    assert up["repo_type"] == "space" and Path(up["folder_path"]) == root
    assert sorted(up["allow_patterns"]) == ["README.md", "app.py", "assets/weights/m/MODEL_CARD.md",
                                           "assets/weights/m/SHA256SUMS", "assets/weights/m/model.safetensors",
                                           "requirements.txt"]
    assert hw == ("hardware", "me/sr", "zero-a10g")


@pytest.mark.parametrize("kw, needle", [(dict(corrupt=True), "model.safetensors: its sha256 differs"),
                                        (dict(sdk_version="5.0.0"), "sdk_version 5.0.0 != requirements.txt")])
def test_a_space_that_would_break_is_refused_before_any_network_call(tmp_path, kw, needle):
    api = FakeApi()
    with pytest.raises(DS.DeployError, match=needle):
        DS.deploy("me/sr", root=_space(tmp_path, **kw), api=api)
    assert api.calls == []


def test_a_failed_upload_says_what_to_do(tmp_path):
    api = FakeApi(fail=RuntimeError("401 Client Error: Unauthorized"))
    with pytest.raises(DS.DeployError, match="hf auth login"):
        DS.deploy("me/sr", root=_space(tmp_path), api=api)
    api = FakeApi(fail=ConnectionError("Name or service not known"))
    with pytest.raises(DS.DeployError, match="huggingface.co must be reachable"):
        DS.deploy("me/sr", root=_space(tmp_path / "b"), api=api)


def test_cli_dry_run_lists_and_uploads_nothing(capsys, monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a dry run must not reach the hub")

    monkeypatch.setattr(DS, "deploy", no_network)
    assert DS.main(["--repo-id", "me/sr", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing uploaded" in out and "assets/weights/sinsr-mini/model.safetensors" in out
    with pytest.raises(SystemExit):
        DS.main(["--repo-id", "not a repo", "--dry-run"])
