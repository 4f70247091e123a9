"""The app under load: 8 concurrent `gradio_client` clients x 25 `/predict` calls plus one webcam stream.

`python app.py` runs on loopback over seeded random weights of all four models (with t-SNE maps) through
`tests.conftest.serve_app`, which also hands over its process so that it can be measured (peak RSS, CPU time).
Chromium's fake camera streams the astronaut to the Webcam tab while the clients run.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from fer_demo.ui import STREAM_EVERY
from tests.conftest import serve_app
from tests.test_browser import ARGS, CHROMIUM, write_y4m

CLIENTS = 8
REQUESTS = 25
GROWTH_LIMIT = 768 * 2**20
"""Bound on the server's peak RSS growth under load, in bytes; see `test_load`."""

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"Chromium not installed at {CHROMIUM}"),
]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int

    def status(self, field: str) -> int:
        """A /proc/<pid>/status memory field in bytes, e.g. VmHWM (peak RSS)."""
        text = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE)[1]) * 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the server so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    with serve_app(tmp_path_factory) as (url, process):
        yield Server(url, process.pid)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut) -> list[str]:
    """Three real face photos: the astronaut, its mirror image and a 3/4-size JPEG copy."""
    folder = tmp_path_factory.mktemp("photos")
    paths = [folder / "astronaut.png", folder / "mirrored.png", folder / "smaller.jpg"]
    Image.fromarray(astronaut).save(paths[0])
    Image.fromarray(np.ascontiguousarray(astronaut[:, ::-1])).save(paths[1])
    Image.fromarray(cv2.resize(astronaut, (384, 384), interpolation=cv2.INTER_AREA)).save(paths[2], quality=90)
    return [str(path) for path in paths]


def same_answer(answer: dict, reference: dict) -> bool:
    """Equal boxes and labels, probabilities within 1e-4."""
    if answer.keys() != reference.keys() or len(answer["faces"]) != len(reference["faces"]):
        return False
    for face, expected in zip(answer["faces"], reference["faces"], strict=True):
        if face["box"] != expected["box"] or face["models"].keys() != expected["models"].keys():
            return False
        for name, model in face["models"].items():
            probs = np.array(list(model["probs"].values()))
            if model["label"] != expected["models"][name]["label"]:
                return False
            if not np.allclose(probs, list(expected["models"][name]["probs"].values()), atol=1e-4):
                return False
    return True


class Webcam:
    """Chromium streaming a fake camera to the Webcam tab; counts the frames sent and each new "Found N face(s) in
    T ms" message shown (the progress timer changes the message in between)."""

    WATCH = """() => {
        window.shown = [];
        new MutationObserver(() => {
            const text = document.querySelector('#message')?.innerText ?? '';
            const found = text.match(/Found \\d+ face\\(s\\) in \\d+ ms/);
            if (found && found[0] !== window.shown[window.shown.length - 1]) window.shown.push(found[0]);
        }).observe(document.body, {childList: true, subtree: true, characterData: true});
    }"""

    def __init__(self, playwright, url: str, video: Path) -> None:
        self.sent: list[float] = []
        self.browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                *ARGS,
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={video}",
            ],
        )
        context = self.browser.new_context(permissions=["camera"], viewport={"width": 1400, "height": 2000})
        self.page = context.new_page()
        self.page.on("request", self._request)
        self.page.goto(url)
        self.page.wait_for_selector("#message")
        self.page.evaluate(self.WATCH)
        self.page.get_by_role("tab", name="Webcam").click()
        self.page.get_by_text("Click to Access Webcam").click()
        self.page.locator("[aria-label='capture photo']").click()

    def _request(self, request) -> None:
        if request.method == "POST" and re.search(r"/gradio_api/stream/[^/]+$", request.url):
            self.sent.append(time.monotonic())

    def shown(self) -> list[str]:
        return self.page.evaluate("window.shown")

    def wait(self, seconds: float) -> None:
        self.page.wait_for_timeout(seconds * 1000)

    def close(self) -> None:
        self.browser.close()


def test_load(server, photos, astronaut, tmp_path):
    """Zero failed requests, every answer identical to the single-client answer, bounded memory, dropped frames.

    Memory: the peak RSS after startup (torch, four models, MediaPipe, Gradio) may grow by at most `GROWTH_LIMIT`:
    two `/predict` calls and one stream frame run at a time (concurrency limit 2 per event, queue of 32), each
    holding one photo of at most `MAX_SIDE` pixels and a few 128x128 crops, so growth beyond allocator slack and
    Gradio's upload cache would mean requests pile up in memory.

    Streaming: the webcam captures a frame every `STREAM_EVERY` s unless a result is pending, and the server keeps
    only the newest frame of a stream (`/stream/<event>` overwrites it), so under load most frames are dropped, the
    prediction times of the results shown add up to no more than the elapsed time, and the server falls idle as soon
    as the browser is gone.
    """
    from playwright.sync_api import sync_playwright

    reference_client = Client(server.url, verbose=False)
    reference = {photo: reference_client.predict(handle_file(photo), api_name="/predict") for photo in photos}
    assert all(len(answer["faces"]) == 1 for answer in reference.values())
    baseline = server.status("VmHWM")

    frames = [np.roll(astronaut, shift, axis=1) for shift in range(0, 60, 6)]
    video = tmp_path / "face.y4m"
    write_y4m(video, frames)
    answers: list[tuple[str, dict]] = []
    failures: list[str] = []

    def client_run(index: int) -> None:
        client = Client(server.url, verbose=False)
        for i in range(REQUESTS):
            photo = photos[(index + i) % len(photos)]
            try:
                answers.append((photo, client.predict(handle_file(photo), api_name="/predict")))
            except Exception as error:  # counted and reported below
                failures.append(f"client {index}, request {i}: {error!r}")

    with sync_playwright() as playwright:
        webcam = Webcam(playwright, server.url, video)
        deadline = time.monotonic() + 120
        while not webcam.shown() and time.monotonic() < deadline:
            webcam.wait(0.5)
        assert webcam.shown(), "the webcam stream never showed a result"
        cpu_start, start = server.cpu_seconds(), time.monotonic()
        shown_before, sent_before = len(webcam.shown()), len(webcam.sent)
        threads = [threading.Thread(target=client_run, args=(index,)) for index in range(CLIENTS)]
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            webcam.wait(0.5)
        elapsed = time.monotonic() - start
        shown = webcam.shown()[shown_before:]
        sent = len(webcam.sent) - sent_before
        webcam.close()
    cpu_load = server.cpu_seconds() - cpu_start
    peak = server.status("VmHWM")
    time.sleep(2)  # let an in-flight frame finish
    cpu_idle_start = server.cpu_seconds()
    time.sleep(5)
    cpu_after_close = server.cpu_seconds() - cpu_idle_start

    frame_seconds = [int(re.search(r"in (\d+) ms", text)[1]) / 1000 for text in shown]
    print(
        f"\n{CLIENTS} clients x {REQUESTS} requests: {len(answers)} answered, {len(failures)} failed "
        f"in {elapsed:.1f} s ({len(answers) / elapsed:.2f} requests/s, server CPU {cpu_load:.0f} s); "
        f"server VmHWM {baseline / 2**20:.0f} MiB after startup, {peak / 2**20:.0f} MiB after the load\n"
        f"webcam: {elapsed / STREAM_EVERY:.0f} capture ticks, {sent} frames sent, {len(shown)} results shown, "
        f"{sum(frame_seconds):.1f} s of prediction; server CPU {cpu_after_close:.2f} s in the 5 s after closing"
    )
    assert failures == []
    assert len(answers) == CLIENTS * REQUESTS
    assert all(same_answer(answer, reference[photo]) for photo, answer in answers)
    assert peak - baseline < GROWTH_LIMIT
    assert shown, "the stream stopped under load"
    assert len(shown) <= sent + 1 <= elapsed / STREAM_EVERY + 3, "at most one frame per tick, one result per frame"
    assert sum(frame_seconds) <= elapsed + 1, "frames are processed one after another, not in a growing backlog"
    assert cpu_after_close < 1.0, "no frame is processed once the browser is gone"
