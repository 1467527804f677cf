"""The page in a real headless Chromium: type a prompt, click paint, wait for the painting, download its PNG."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from shanshui.serve.app import create_app
from tests.serve.browser import launch, require_chromium
from tests.serve.conftest import serving

PROMPT = "一棵青松，青山环绕，云雾缭绕"


def test_paint_from_the_page(shipped_pipe, tmp_path):
    path = require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the [dev] extra installs playwright")
    app = create_app(shipped_pipe)
    with serving(app) as url, sync_api.sync_playwright() as pw:
        browser = launch(pw, path)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
        page.goto(url + "/")
        page.wait_for_selector(".preset[data-key=small][aria-pressed=true], .preset[data-key=small]")
        assert page.locator("#model").inner_text() == "shanshui-default"
        assert page.locator(".preset").count() == 5 and page.locator("#sampler option").count() == 6
        page.click(".preset[data-key=small]")
        page.fill("#prompt", PROMPT)
        page.fill("#negative", "blurry")
        page.fill("#steps", "3")
        page.uncheck("#random")
        page.fill("#seed", "11")
        page.select_option("#sampler", "Euler")
        page.click("#paint")
        img = page.wait_for_selector("#gallery figure img", timeout=60_000)
        page.wait_for_function("document.querySelector('#gallery figure img').naturalWidth > 0")
        assert img.evaluate("i => [i.naturalWidth, i.naturalHeight]") == [128, 128]
        assert "done" in page.locator("#status-text").inner_text()
        caption = page.locator("#gallery figcaption").inner_text()
        assert PROMPT in caption and "seed 11" in caption and "Euler" in caption and "128×128" in caption
        with page.expect_download() as dl:
            page.click("#gallery figcaption a")
        saved = tmp_path / dl.value.suggested_filename
        dl.value.save_as(saved)
        assert saved.name == "shanshui-11.png"
        with Image.open(saved) as im:
            assert im.size == (128, 128)
            assert im.info["parameters"].startswith(PROMPT) and "Seed: 11" in im.info["parameters"]
            assert json.loads(im.info["shanshui"])["sampler"] == "euler"
        page.fill("#steps", "60")  # long enough to watch: the page shows the server's step i/n while it paints
        page.click("#paint")
        page.wait_for_function("/step [1-9][0-9]*\\/60/.test(document.querySelector('#status-text').textContent)",
                               timeout=60_000)
        page.wait_for_function("document.querySelectorAll('#gallery figure').length == 2", timeout=120_000)
        page.fill("#prompt", "")  # an empty prompt is refused on the page, before any request
        page.click("#paint")
        assert "enter a prompt" in page.locator("#status-text").inner_text()
        assert page.locator("#gallery figure").count() == 2
        browser.close()
    assert not errors, errors


def test_image_to_image_from_the_page(tmp_path):
    """On a model with a VAE encoder (the shipped diffusers folder, torch backend) the page repaints an upload."""
    path = require_chromium()
    sync_api = pytest.importorskip("playwright.sync_api", reason="the [dev] extra installs playwright")
    pytest.importorskip("torch", reason="the shipped model's VAE encoder runs on the [torch] extra")
    from shanshui.models import default_source_path
    from shanshui.runtime.pipeline import open_pipeline

    sketch = tmp_path / "sketch.png"
    Image.new("RGB", (120, 90), (230, 228, 220)).save(sketch)
    app = create_app(open_pipeline(default_source_path(), backend="torch", threads=1))
    with serving(app) as url, sync_api.sync_playwright() as pw:
        browser = launch(pw, path)
        page = browser.new_page(viewport={"width": 390, "height": 844})
        page.goto(url + "/")
        page.wait_for_selector(".preset[data-key=small]")
        assert page.locator("#i2i-note").is_hidden() and page.locator("#init").is_enabled()
        page.click(".preset[data-key=small]")
        page.fill("#prompt", "雪山，寒林")
        page.fill("#steps", "4")
        page.set_input_files("#init", str(sketch))
        page.fill("#strength", "0.5")  # a range input: fill sets its value
        page.click("#paint")
        page.wait_for_function("document.querySelector('#gallery figure img')?.naturalWidth === 128", timeout=60_000)
        caption = page.locator("#gallery figcaption").inner_text()
        assert "strength 0.5" in caption and "雪山，寒林" in caption
        browser.close()
