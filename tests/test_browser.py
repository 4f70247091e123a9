"""The app in a real browser: Debian's Chromium driven by playwright (headless), fake webcam included.

Screenshots go to `artifacts/browser/` (or `$FER_DEMO_ARTIFACTS`).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

CHROMIUM = os.environ.get("FER_DEMO_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(os.environ.get("FER_DEMO_ARTIFACTS", Path(__file__).resolve().parent.parent / "artifacts")) / "browser"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]

pytestmark = pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"Chromium not installed at {CHROMIUM}")


def write_y4m(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """A raw YUV4MPEG2 (4:2:0) video for Chromium's fake camera, from RGB frames of equal, even size."""
    height, width = frames[0].shape[:2]
    with path.open("wb") as stream:
        stream.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for frame in frames:
            stream.write(b"FRAME\n" + cv2.cvtColor(frame, cv2.COLOR_RGB2YUV_I420).tobytes())


@pytest.fixture(scope="module")
def playwright_instance():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        yield playwright


def _browser(playwright, extra: list[str] = ()):
    return playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=[*ARGS, *extra])


def _message(page) -> str:
    return page.locator("#message").inner_text()


def _upload(page, path: Path) -> None:
    page.locator("input[type=file]").first.set_input_files(str(path))


def _wait_for_texts(page, selector: str, texts: list[str], timeout: int = 60_000) -> None:
    """Wait until the elements matching `selector` show every one of `texts` (Gradio fills its blocks one by one)."""
    page.wait_for_function(
        """([selector, texts]) => {
            const shown = [...document.querySelectorAll(selector)].map((element) => element.innerText).join("\\n");
            return texts.every((text) => shown.includes(text));
        }""",
        arg=[selector, texts],
        timeout=timeout,
    )


def test_upload_shows_every_visualisation(playwright_instance, app_server, astronaut, tmp_path):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    photo = tmp_path / "astronaut.jpg"
    Image.fromarray(astronaut).save(photo)
    browser = _browser(playwright_instance)
    page = browser.new_page(viewport={"width": 1400, "height": 2400})
    page.goto(app_server)
    _upload(page, photo)
    page.wait_for_function("document.querySelector('#message')?.innerText.includes('Found 1 face')", timeout=90_000)
    assert "gcnet" in _message(page) and "ed2l" in _message(page)
    # overview, DACL attention, a t-SNE map per model (plotly draws them after the message, slower on a busy machine)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 1 + 1 + 4", timeout=60_000)
    labels = [
        f"{name}: {what}" for name in ("dacl", "ed2l", "gcnet", "idferm") for what in ("expression", "t-SNE position")
    ]
    pictures = ["idferm: pictures", "ed2l: pictures", "dacl: attention weights"]
    _wait_for_texts(page, "[data-testid='block-label']", [*labels, *pictures])
    # the galleries' captions: IDFERM's and GCNet's generated neutral faces, ED²L's heat-maps
    _wait_for_texts(page, ".caption-label", ["generated neutral", "distilling branch"])
    captions = page.locator(".caption-label").all_inner_texts()
    assert captions.count("generated neutral") == 2, captions
    # the method columns line up although IDFERM's title wraps to more lines than the others
    tops = [
        page.locator("[data-testid='block-label']", has_text=f"{name}: expression").bounding_box()["y"]
        for name in ("dacl", "ed2l", "gcnet", "idferm")
    ]
    assert max(tops) - min(tops) < 2, tops
    page.screenshot(path=str(ARTIFACTS / "upload.png"), full_page=True)
    browser.close()


@pytest.mark.parametrize("kind", ["no-face", "corrupt"])
def test_bad_files_show_a_clear_message(playwright_instance, app_server, tmp_path, kind):
    path = tmp_path / ("blank.png" if kind == "no-face" else "broken.jpg")
    if kind == "no-face":
        Image.fromarray(np.full((300, 400, 3), 180, np.uint8)).save(path)
        expected = "No face found"
    else:
        path.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 64)
        expected = "Cannot read this image"
    browser = _browser(playwright_instance)
    page = browser.new_page()
    page.goto(app_server)
    _upload(page, path)
    page.wait_for_function(f"document.querySelector('#message')?.innerText.includes({expected!r})", timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / f"{kind}.png"), full_page=True)
    browser.close()


def test_fake_webcam_streams_and_updates(playwright_instance, app_server, astronaut, tmp_path):
    frames = [np.roll(astronaut, shift, axis=1) for shift in range(0, 60, 6)]
    video = tmp_path / "face.y4m"
    write_y4m(video, frames)
    browser = _browser(
        playwright_instance,
        [
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={video}",
        ],
    )
    context = browser.new_context(permissions=["camera"], viewport={"width": 1400, "height": 2000})
    page = context.new_page()
    page.goto(app_server)
    page.get_by_role("tab", name="Webcam").click()
    page.get_by_text("Click to Access Webcam").click()
    page.locator("[aria-label='capture photo']").click()
    seen = set()
    deadline = time.monotonic() + 90
    while len(seen) < 4 and time.monotonic() < deadline:
        text = _message(page)
        if "Found 1 face" in text:
            seen.add(text)
        page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "webcam.png"), full_page=True)
    browser.close()
    assert len(seen) >= 4, f"the results updated {len(seen)} times"
