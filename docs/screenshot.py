"""Regenerate `docs/images/app.jpg`, the README's picture of the app at work.

Serves `app.py` with the weights it would load (the Hub, else `weights/`), uploads `examples/astronaut.jpg` in
Debian's Chromium (playwright, headless) and saves the page from the top to the end of the t-SNE maps.

    python docs/screenshot.py [--chromium /usr/bin/chromium] [--port 7862]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "images" / "app.jpg"
WIDTH = 1400
"""Browser viewport width in CSS pixels; the saved picture is scaled to `SAVED_WIDTH`."""
SAVED_WIDTH = 1000
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]  # fmt: skip


def wait_until_served(url: str, process: subprocess.Popen, timeout: float = 600) -> None:
    """Block until `url` answers; raise if the app exits or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("app.py did not start") from None
            time.sleep(1)


def capture(url: str, chromium: str) -> Image.Image:
    """Upload the example photo and return the page down to the last t-SNE map."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 2400})
        page.goto(url)
        page.locator("input[type=file]").first.set_input_files(str(ROOT / "examples" / "astronaut.jpg"))
        found = "document.querySelector('#message')?.innerText.includes('Found 1 face')"
        page.wait_for_function(found, timeout=120_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 6", timeout=60_000)
        page.wait_for_timeout(2000)  # plotly's transitions
        bottom = page.evaluate(
            "Math.max(...[...document.querySelectorAll('.js-plotly-plot')]"
            ".map(e => e.getBoundingClientRect().bottom + window.scrollY))"
        )
        shot = page.screenshot(full_page=True, clip={"x": 0, "y": 0, "width": WIDTH, "height": bottom + 16})
        browser.close()
    return Image.open(io.BytesIO(shot)).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--port", type=int, default=7862)
    args = parser.parse_args()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(args.port))
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{args.port}/"
        wait_until_served(url, process)
        picture = capture(url, args.chromium)
    finally:
        process.terminate()
        process.wait(timeout=30)
    picture = picture.resize((SAVED_WIDTH, round(picture.height * SAVED_WIDTH / picture.width)), Image.LANCZOS)
    picture.save(OUTPUT, quality=85, optimize=True)
    print(f"{OUTPUT.relative_to(ROOT)}: {picture.width}x{picture.height}, {OUTPUT.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
