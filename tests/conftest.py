"""Shared fixtures: real face photos and a weight store of seeded, randomly initialised models."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fer_demo.embedding import reference_map_file, save_reference_map
from fer_demo.hub import save_state_dict, write_manifest_entry
from fer_demo.models import create_model, list_models
from training.data import DEFAULT_DATA_DIR
from training.pairs import PAIR_SETS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut photo: one frontal face, RGB uint8 (512, 512, 3)."""
    from skimage import data

    return data.astronaut()


def encode(image: Image.Image | np.ndarray, fmt: str, **options) -> bytes:
    """An image (PIL or array) encoded in `fmt` (JPEG, PNG, ...) with Pillow's save options."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


class FakeHub:
    """A local HTTP server answering the Hub's `resolve` HEAD and GET requests for one file at `commit`.

    `content` may be changed between requests. With `drop_midway`, a GET sends half the file, drops the connection
    and the server goes offline. `requests` records "METHOD path" per request.
    """

    def __init__(
        self, repo_id: str, filename: str, content: bytes = b"", commit: str = "0" * 40, drop_midway: bool = False
    ) -> None:
        self.content, self.requests, self.lock = content, [], threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _answer(self, *, body: bool) -> None:
                hub.requests.append(f"{self.command} {self.path}")
                if self.path != f"/{repo_id}/resolve/main/{filename}":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", commit)
                self.send_header("ETag", f'"{hashlib.sha256(hub.content).hexdigest()}"')
                self.send_header("Content-Length", str(len(hub.content)))
                self.end_headers()
                if not body:
                    return
                if drop_midway:
                    self.wfile.write(hub.content[: len(hub.content) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    threading.Thread(target=hub.go_offline, daemon=True).start()
                else:
                    self.wfile.write(hub.content)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def go_offline(self) -> None:
        """Stop answering and close the port (connections are then refused); idempotent."""
        with self.lock:
            if self.server.socket.fileno() != -1:
                self.server.shutdown()
                self.server.server_close()


needs_data = pytest.mark.skipif(
    not (DEFAULT_DATA_DIR / "fer2013.npz").is_file(),
    reason=f"shared data sets not found at {DEFAULT_DATA_DIR} (they live outside the repository)",
)

requires_pairs_data = pytest.mark.skipif(
    not all((DEFAULT_DATA_DIR / f"{name}.npz").is_file() for name in PAIR_SETS),
    reason=f"the pairs data sets ({', '.join(PAIR_SETS)}) are not in {DEFAULT_DATA_DIR}",
)


def make_weight_store(folder: Path, names: list[str], tsne: bool = False) -> Path:
    """A weights folder with seeded random weights for `names` and a manifest listing them.

    With `tsne`, also a small reference map per model (random embeddings of the right size, points on a circle).
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(
        json.dumps({"format": 1, "hub": {"repo_id": "fer-demo/test", "revision": "main"}, "files": {}})
    )
    for i, name in enumerate(names):
        torch.manual_seed(i)
        model = create_model(name)
        path = folder / model.card.weight_file
        save_state_dict(model.state_dict(), path)
        write_manifest_entry(path.name, path, weights_dir=folder, model=name)
        if tsne:
            rng = np.random.default_rng(i)
            labels = np.repeat(np.arange(7), 12)
            angle = labels * 0.9 + rng.normal(0, 0.1, labels.size)
            map_path = folder / reference_map_file(name)
            save_reference_map(
                map_path,
                rng.normal(size=(labels.size, model.card.embedding_dim)),
                np.stack([np.cos(angle), np.sin(angle)], 1) * 30,
                labels,
                perplexity=10.0,
            )
            write_manifest_entry(map_path.name, map_path, weights_dir=folder, model=name)
    return folder


@pytest.fixture(scope="session")
def random_store(tmp_path_factory) -> Path:
    """Weights folder with random (untrained) weights for every model; used to exercise the pipeline only."""
    return make_weight_store(tmp_path_factory.mktemp("weights"), list_models())


@pytest.fixture(scope="session")
def app_server(tmp_path_factory) -> Iterator[str]:
    """`python app.py` on a free loopback port over random weights with reference maps; yields its URL."""
    with serve_app(tmp_path_factory) as (url, _):
        yield url


@contextmanager
def serve_app(tmp_path_factory) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run `python app.py` on a free loopback port over random weights of every model (with t-SNE maps).

    Yields:
        The app's URL and its process, once the app answers.
    """
    store = make_weight_store(tmp_path_factory.mktemp("served"), list_models(), tsne=True)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = dict(os.environ, FER_DEMO_WEIGHTS_DIR=str(store), HF_HUB_OFFLINE="1", GRADIO_SERVER_PORT=str(port))
    log = (tmp_path_factory.mktemp("server") / "app.log").open("w")
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 600  # a busy machine can take minutes to import torch and Gradio
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"app.py did not start; see {log.name}") from None
            time.sleep(1)
    try:
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


@pytest.fixture
def use_store(monkeypatch):
    """Point the weight store at a folder, offline (no Hub look-up)."""

    def use(folder: Path) -> Path:
        monkeypatch.setenv("FER_DEMO_WEIGHTS_DIR", str(folder))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        return folder

    return use
