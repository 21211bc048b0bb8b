"""The app in a real browser: Playwright drives Debian's chromium against a locally served demo.

The demo runs the real core (facade, metrics) on a registry of `bicubic`, `lanczos` and a toy
sampler that declares every capability, so the sampler's controls (steps, seed ...) appear.
A screenshot is saved to tests/_artifacts/browser.png.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

import app
from app_fakes import ToySampler
from sr_core.methods.baselines import Bicubic, Lanczos
from sr_core.registry import Registry

CHROMIUM = os.environ.get("SR_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "_artifacts"
EXAMPLE = ROOT / "assets" / "examples" / "kodim23_parrot.png"

pytestmark = pytest.mark.browser


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    toy = ToySampler()
    reg = Registry()
    for m in (Bicubic(), Lanczos(), toy):
        reg.add(m)
    demo = app.build_demo(app.Core(registry=reg))
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True,
                **app.launch_kwargs())
    try:
        yield demo.local_url, toy
    finally:
        demo.close()


def test_upload_set_controls_run_and_slide(served):
    from playwright.sync_api import sync_playwright

    url, toy = served
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(30_000)
            page.goto(url, wait_until="networkidle")

            # Baseline first: no sampler controls.
            assert page.locator("#steps").is_hidden() and page.locator("#seed").is_hidden()
            page.locator("#method input").click()
            page.get_by_role("option", name="Toy sampler").click()
            page.locator("#steps").wait_for(state="visible")
            assert page.locator("#seed").is_visible() and page.locator("#fidelity").is_visible()

            page.locator("#input-image input[type=file]").set_input_files(str(EXAMPLE))
            page.locator("#input-image img").wait_for(state="visible")

            steps = page.locator("#steps input[type=range]")
            assert steps.input_value() == "20"
            steps.focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            assert steps.input_value() == "23"
            page.locator("#seed input").fill("1234")

            page.locator("#run").click()
            page.wait_for_function(
                "() => { const im = document.querySelectorAll('#result-slider img');"
                " return im.length >= 2 && [...im].every(i => i.getAttribute('src')); }")
            imgs = page.locator("#result-slider img")
            assert imgs.count() == 2
            srcs = [imgs.nth(i).get_attribute("src") for i in range(2)]
            assert all(s and s.endswith(".png") for s in srcs) and srcs[0] != srcs[1]
            page.wait_for_function("() => [...document.querySelectorAll('#result-slider img')]"
                                   ".every(i => i.complete && i.naturalWidth === 608)")
            summary = page.locator("#summary").inner_text()
            assert "seed 1234" in summary and "23 steps" in summary
            page.locator("#download").get_by_text("kodim23_parrot_toy_x4_seed1234").wait_for()  # name, .png apart

            # Drag the slider's handle to the left: the result now covers more of the image.
            handle = page.locator("#result-slider [data-testid=slider]")
            box = handle.bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x - 120, y, steps=8)
            page.mouse.up()
            clip = imgs.nth(1).get_attribute("style")
            pct = float(re.search(r"inset\(0px 0px 0px ([\d.]+)%\)", clip).group(1))
            assert pct < 40, clip

            page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
        finally:
            browser.close()

    assert toy.calls, "the toy method was never run"
    used = toy.calls[-1]
    assert (used.steps, used.seed, used.scale) == (23, 1234, 4)
