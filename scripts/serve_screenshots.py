"""Screenshots of the `shanshui serve` page in headless Chromium (desktop 1280 wide, phone 390 wide), after painting.

    python scripts/serve_screenshots.py [--out docs/serve] [--chromium /usr/bin/chromium]

Serves the shipped model on 127.0.0.1 (a free port) in this process, paints through the page like a user, and
writes page-desktop.png, page-painting.png (the progress while painting) and page-phone.png. Needs playwright (the [dev] extra) and the system's Chromium.
"""

from __future__ import annotations

import argparse
import shutil
import threading
import time
from pathlib import Path

PAINTINGS = [  # (preset, prompt, seed) as a user would type them
    ("tall", "立轴，秋山红叶，凉亭，云雾缭绕", 3),
    ("square", "一棵青松，青山环绕，云雾缭绕", 1),
]


def serve_in_thread(app):
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off"))
    threading.Thread(target=server.run, daemon=True).start()
    while not (server.started and server.servers):
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def paint(page, preset: str, prompt: str, seed: int, steps: int) -> None:
    page.click(f".preset[data-key={preset}]")
    page.fill("#prompt", prompt)
    page.fill("#steps", str(steps))
    page.uncheck("#random")
    page.fill("#seed", str(seed))
    before = page.locator("#gallery figure").count()
    page.click("#paint")
    page.wait_for_function(f"document.querySelectorAll('#gallery figure img').length > {before}", timeout=300_000)
    page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.complete && i.naturalWidth)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("docs/serve"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--steps", type=int, default=25)
    args = ap.parse_args()
    if not args.chromium:
        raise SystemExit("error: no chromium on PATH; `apt-get install chromium` or pass --chromium")
    from playwright.sync_api import sync_playwright

    from shanshui.runtime.pipeline import open_pipeline
    from shanshui.serve.app import create_app

    app = create_app(open_pipeline(None))
    server, url = serve_in_thread(app)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, headless=True, args=["--no-sandbox"])
            desktop = browser.new_page(viewport={"width": 1280, "height": 860})
            desktop.goto(url + "/")
            for preset, prompt, seed in PAINTINGS:
                paint(desktop, preset, prompt, seed, args.steps)
            desktop.screenshot(path=str(args.out / "page-desktop.png"), full_page=True)
            desktop.click(".preset[data-key=wide]")  # and one caught mid-painting, to see the live progress
            desktop.fill("#prompt", "手卷，江上渔舟，远山")
            desktop.click("#paint")
            desktop.wait_for_function("/step ([5-9]|1[0-9])\\//.test(document.querySelector('#status-text').textContent)")
            desktop.screenshot(path=str(args.out / "page-painting.png"))
            desktop.wait_for_function("document.querySelectorAll('#gallery figure').length == 3", timeout=300_000)
            phone = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True,
                                     has_touch=True)
            phone.goto(url + "/")
            preset, prompt, seed = PAINTINGS[1]
            paint(phone, preset, prompt, seed, args.steps)
            phone.screenshot(path=str(args.out / "page-phone.png"), full_page=True)
            browser.close()
    finally:
        server.should_exit = True
        app.state.painter.close()
    print(f"wrote {args.out / 'page-desktop.png'} and {args.out / 'page-phone.png'}")


if __name__ == "__main__":
    main()
