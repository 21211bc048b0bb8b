#!/usr/bin/env python
"""Publish this app to a Hugging Face Space (Gradio SDK) with the bundled minis.

    python scripts/deploy_space.py --repo-id USER/NAME --dry-run    # what would go up, checked, no network
    python scripts/deploy_space.py --repo-id USER/NAME [--private] [--hardware cpu-basic|zero-a10g|...]

A plain `git push` to a Space is refused for binary files that are not in LFS/Xet storage (the bundled
safetensors, the example PNGs); the hub client's `upload_folder` stores them the way the hub wants, so this
uploads through it.  What goes up: the files git tracks (so nothing of runs/, packs/ or a local cache), less
what a Space does not run (tests/, scripts/, .ci/, the dev requirements).  Before any network call it checks
what the Space needs -- the README's front matter (sdk gradio, app_file, an sdk_version equal to the pinned
gradio), app.py, requirements.txt, every bundled model folder with its card and SHA256SUMS matching the
files -- and stops with the reason when one fails.  Log in first (`hf auth login`) or set HF_TOKEN.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# tracked, but not for the Space
EXCLUDE = ("tests/*", "scripts/*", ".ci/*", ".gitignore", "requirements-dev.txt", "pytest.ini")
HARDWARE = ("cpu-basic", "cpu-upgrade", "zero-a10g", "t4-small", "t4-medium", "l4x1", "a10g-small",
            "a10g-large", "a100-large", "h100")


class DeployError(RuntimeError):
    """A check or the upload failed; the message says why and what to do."""


def tracked_files(root: Path = ROOT) -> list[str]:
    """Paths (posix, relative) that git tracks under `root`, or every file when `root` is no git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(root), "ls-files", "-z"], check=True, capture_output=True).stdout
        files = [f for f in out.decode().split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = [p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts]
    return sorted(f for f in files if (root / f).is_file())


def space_files(root: Path = ROOT) -> list[str]:
    return [f for f in tracked_files(root) if not any(fnmatch.fnmatch(f, pat) for pat in EXCLUDE)]


def front_matter(readme: str) -> dict:
    m = re.match(r"---\n(.*?)\n---\n", readme, re.S)
    if not m:
        raise DeployError("README.md has no front matter (--- ... ---): the Space would not know its SDK")
    out = {}
    for line in m.group(1).splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def check(root: Path = ROOT) -> dict:
    """The Space's needs, checked locally; returns a summary (files, bytes, largest, models) or raises."""
    files = space_files(root)
    fm = front_matter((root / "README.md").read_text(encoding="utf-8"))
    problems = []
    if fm.get("sdk") != "gradio":
        problems.append(f"front matter sdk is {fm.get('sdk')!r}, not 'gradio'")
    app_file = fm.get("app_file", "app.py")
    for need in (app_file, "requirements.txt"):
        if need not in files:
            problems.append(f"{need} is not tracked by git (commit it)")
    req = (root / "requirements.txt").read_text(encoding="utf-8") if (root / "requirements.txt").exists() else ""
    pin = re.search(r"^gradio==(\S+)", req, re.M)
    if pin and fm.get("sdk_version") != pin.group(1):
        problems.append(f"front matter sdk_version {fm.get('sdk_version')} != requirements.txt gradio=={pin.group(1)} "
                        "(the Space would run another gradio than the one tested)")
    models = []
    for card in sorted(f for f in files if re.fullmatch(r"assets/weights/[^/]+/MODEL_CARD\.md", f)):
        folder = card.rsplit("/", 1)[0]
        sums = root / folder / "SHA256SUMS"
        if f"{folder}/SHA256SUMS" not in files:
            problems.append(f"{folder}: no SHA256SUMS")
            continue
        for line in sums.read_text().splitlines():
            if not line.strip():
                continue
            digest, name = line.split(maxsplit=1)
            rel = f"{folder}/{name.strip().lstrip('*')}"
            if rel not in files:
                problems.append(f"{rel}: listed in SHA256SUMS but not tracked")
            elif hashlib.sha256((root / rel).read_bytes()).hexdigest() != digest:
                problems.append(f"{rel}: its sha256 differs from SHA256SUMS (a re-export not committed?)")
        models.append(folder.rsplit("/", 1)[1])
    if problems:
        raise DeployError("not ready for a Space:\n  - " + "\n  - ".join(problems))
    sizes = {f: (root / f).stat().st_size for f in files}
    return {"files": files, "bytes": sum(sizes.values()), "models": models,
            "largest": sorted(sizes.items(), key=lambda kv: -kv[1])[:5], "front_matter": fm}


def deploy(repo_id: str, *, root: Path = ROOT, private: bool = False, hardware: str = "", message: str = "",
           api=None) -> str:
    """Create the Space if needed and upload the checked files in one commit; returns the Space's URL."""
    summary = check(root)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, repo_type="space", folder_path=str(root),
                          allow_patterns=summary["files"], commit_message=message or "Deploy the app")
        if hardware:
            api.request_space_hardware(repo_id, hardware)
    except Exception as e:  # network, auth, name: say which and what to do
        name = type(e).__name__
        hint = ("log in with `hf auth login` or set HF_TOKEN (a token with write access)"
                if "401" in str(e) or "403" in str(e) or "Unauthorized" in name or "token" in str(e).lower()
                else "check the network (huggingface.co must be reachable) and the repo id")
        raise DeployError(f"upload to the Space {repo_id} failed ({name}: {e}); {hint}") from e
    return f"https://huggingface.co/spaces/{repo_id}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo-id", required=True, help="USER/NAME of the Space (created if missing)")
    ap.add_argument("--private", action="store_true")
    ap.add_argument("--hardware", default="", choices=("",) + HARDWARE,
                    help="request this hardware after the upload (default: the Space's current one)")
    ap.add_argument("--message", default="", help="commit message")
    ap.add_argument("--dry-run", action="store_true", help="check and list what would go up; no network")
    a = ap.parse_args(argv)
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", a.repo_id):
        ap.error(f"--repo-id must be USER/NAME, not {a.repo_id!r}")
    try:
        s = check()
        print(f"{len(s['files'])} files, {s['bytes'] / 2**20:.1f} MiB; bundled models: {', '.join(s['models'])}")
        for f, n in s["largest"]:
            print(f"  {n / 2**20:7.2f} MiB  {f}")
        if a.dry_run:
            print("\n".join(s["files"]))
            print(f"dry run: nothing uploaded (would go to https://huggingface.co/spaces/{a.repo_id})")
            return 0
        print(deploy(a.repo_id, private=a.private, hardware=a.hardware, message=a.message))
        return 0
    except DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
