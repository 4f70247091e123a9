"""Nothing crashes, nothing leaks: bad and unusual inputs, faulty weights and a faulty Hub.

One corpus of files, generated here from scikit-image's astronaut photo, goes through the three entry points,
`Predictor.predict`, the CLI (in-process and as a subprocess) and the app's `/predict` API (`gradio_client` against
`python app.py`); each file gets the same specific answer everywhere. The in-process paths run the cheapest model
(GCNet) to keep the run short; the app runs all four, and its answers must match the in-process ones.

Measured limits of the face detector (MediaPipe's full-range model sees the whole image at 192x192):
- a 5x4 grid of 160 px astronaut heads: `FaceDetector(max_faces=20)` finds 17 of the 20 faces; the `Predictor`'s
  default detector returns the 10 largest (`max_faces=10`);
- the same grid of 16 px heads: no face (their ~8 px boxes are below `min_face_size=24`); 48 px heads give 3;
- faces whose head is narrower than about 1/8 of the image's longer side are missed whatever their pixel size
  (a 128 px head is found on a 640 or 1024 px wide canvas, not on a 1600 px one).
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import subprocess
import sys
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from huggingface_hub import try_to_load_from_cache
from PIL import Image, features

from fer_demo import Predictor
from fer_demo.__main__ import main
from fer_demo.embedding import load_reference_maps
from fer_demo.faces import MAX_PIXELS, MAX_SIDE, FaceDetector, ImageError, load_image
from fer_demo.hub import WeightSource, resolve_weights, sha256_file, write_manifest_entry
from fer_demo.models import list_models
from fer_demo.predictor import FaceResult
from fer_demo.ui import DemoApp, Session, build_demo
from tests.conftest import ROOT, FakeHub, encode, make_weight_store

ASTRONAUT_FACE = (150.0, 40.0, 290.0, 190.0)
"""Region (x0, y0, x1, y1) of the 512x512 astronaut photo that holds the face."""
BIG_SIDE = 7000
"""Side of the 49-megapixel test photo; `load_image` brings it down to `MAX_SIDE`."""
MODELS = ["gcnet"]
"""Models of the in-process paths."""


def head_grid(astronaut: np.ndarray, side: int, rows: int = 4, cols: int = 5) -> np.ndarray:
    """`rows` x `cols` copies of the astronaut's head, `side` px each, a quarter side apart on gray."""
    head = cv2.resize(astronaut[30:210, 130:320], (side, side), interpolation=cv2.INTER_AREA)
    gap = side // 4
    canvas = np.full((rows * (side + gap) + gap, cols * (side + gap) + gap, 3), 128, np.uint8)
    for row in range(rows):
        for col in range(cols):
            y, x = gap + row * (side + gap), gap + col * (side + gap)
            canvas[y : y + side, x : x + side] = head
    return canvas


def png_claiming_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header (CRC included) claims another size: a decompression bomb's calling card."""
    png = bytearray(encode(Image.new("L", (10, 10)), "PNG"))
    png[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    png[29:33] = zlib.crc32(bytes(png[12:29])).to_bytes(4, "big")
    return bytes(png)


def zip_bytes(_) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("face.jpg", "not a face")
    return buffer.getvalue()


def rgba_png(astronaut: np.ndarray) -> bytes:
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:, :100, 3] = 0
    rgba[400:, :, 3] = 60
    return encode(rgba, "PNG")


def animated_gif(astronaut: np.ndarray) -> bytes:
    frames = [Image.fromarray(astronaut), Image.new("RGB", (512, 512)), Image.new("RGB", (512, 512), "white")]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def exif_rotated_jpeg(astronaut: np.ndarray) -> bytes:
    """Pixels stored turned a quarter to the left, with EXIF orientation 6 saying how to turn them upright."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(np.ascontiguousarray(np.rot90(astronaut, 1)), "JPEG", quality=95, exif=exif)


def png_16_bit(astronaut: np.ndarray) -> bytes:
    ok, png = cv2.imencode(".png", cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    assert ok
    return png.tobytes()


def big_jpeg(astronaut: np.ndarray) -> bytes:
    return encode(cv2.resize(astronaut, (BIG_SIDE, BIG_SIDE), interpolation=cv2.INTER_LINEAR), "JPEG", quality=85)


def half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def scaled(region: tuple[float, ...], factor: float) -> tuple[float, ...]:
    return tuple(v * factor for v in region)


@dataclass(frozen=True)
class Case:
    """One corpus file and the answer every entry point must give for it.

    Attributes:
        name: File name in the corpus (non-images carry image suffixes, as mislabelled uploads do).
        make: Builds the file's bytes from the astronaut photo.
        error: Fragment of the expected `ImageError` message; empty for readable images.
        faces: Number of faces expected in a readable image.
        region: (x0, y0, x1, y1) that every face box lies in, in `load_image` pixels.
    """

    name: str
    make: Callable[[np.ndarray], bytes]
    error: str = ""
    faces: int = 0
    region: tuple[float, ...] | None = None


CASES = [
    Case("text.jpg", lambda a: b"name,score\nalice,1\n", error="Not an image file: the data looks like a text file"),
    Case("scan.jpg", lambda a: b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n", error="the data looks like a PDF document"),
    Case("archive.png", zip_bytes, error="the data looks like a ZIP archive"),
    Case("empty.jpg", lambda a: b"", error="Not an image file: the file is empty (0 bytes)"),
    Case("truncated.jpg", lambda a: half(encode(a, "JPEG")), error="Image is truncated or corrupt"),
    Case("truncated.png", lambda a: half(encode(a, "PNG")), error="Image is truncated or corrupt"),
    Case("corrupt-header.png", lambda a: b"\x13\x37" * 8 + encode(a, "PNG")[16:], error="could not decode"),
    Case("one-pixel.png", lambda a: encode(Image.new("RGB", (1, 1)), "PNG"), error="Image too small: 1x1 pixels"),
    Case(
        "60-megapixel.png",
        lambda a: encode(Image.new("L", (10_000, 6_000)), "PNG"),
        error="Image too large: 60,000,000 pixels exceeds the 50,000,000 pixel limit",
    ),
    Case("bomb.png", lambda a: png_claiming_size(20_000, 20_000), error="Image too large: 400,000,000 pixels"),
    Case("photo.heic", lambda a: b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64), error="HEIC/HEIF"),
    Case("49-megapixel.jpg", big_jpeg, faces=1, region=scaled(ASTRONAUT_FACE, MAX_SIDE / 512)),
    Case("16-bit.png", png_16_bit, faces=1, region=ASTRONAUT_FACE),
    Case("grayscale.jpg", lambda a: encode(Image.fromarray(a).convert("L"), "JPEG"), faces=1, region=ASTRONAUT_FACE),
    Case("rgba.png", rgba_png, faces=1, region=ASTRONAUT_FACE),
    Case(
        "palette.png",
        lambda a: encode(Image.fromarray(a).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        faces=1,
        region=ASTRONAUT_FACE,
    ),
    Case("cmyk.jpg", lambda a: encode(Image.fromarray(a).convert("CMYK"), "JPEG"), faces=1, region=ASTRONAUT_FACE),
    Case("animated.gif", animated_gif, faces=1, region=ASTRONAUT_FACE),
    Case("exif-rotated.jpg", exif_rotated_jpeg, faces=1, region=ASTRONAUT_FACE),
    Case("photo.webp", lambda a: encode(a, "WEBP", quality=90), faces=1, region=ASTRONAUT_FACE)
    if features.check("webp")
    else Case("photo.webp", lambda a: b"RIFF\x1a\0\0\0WEBPVP8 \x0e\0\0\0" + bytes(14), error="cannot decode WebP"),
    Case("blank.png", lambda a: encode(np.full((300, 400, 3), 180, np.uint8), "PNG")),
    Case("twenty-faces.png", lambda a: encode(head_grid(a, 160), "PNG"), faces=10),
    Case("tiny-faces.png", lambda a: encode(head_grid(a, 16), "PNG")),
    Case("face-at-border.png", lambda a: encode(a[80:, 190:], "PNG"), faces=1, region=(0.0, 0.0, 100.0, 100.0)),
]
ERRORS = [case for case in CASES if case.error]
IDS = [case.name for case in CASES]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, astronaut) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for case in CASES:
        (folder / case.name).write_bytes(case.make(astronaut))
    return folder


@pytest.fixture(scope="module")
def store(random_store) -> Iterator[Path]:
    """Module-wide `use_store(random_store)`."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_DEMO_WEIGHTS_DIR", str(random_store))
        patch.setenv("HF_HUB_OFFLINE", "1")
        yield random_store


@pytest.fixture(scope="module")
def predictor(store) -> Predictor:
    return Predictor.load(MODELS)


def assert_boxes_in(boxes: list, region: tuple[float, ...] | None) -> None:
    if region is None:
        return
    x0, y0, x1, y1 = region
    for box in boxes:
        assert x0 <= box[0] < box[2] <= x1 and y0 <= box[1] < box[3] <= y1, f"box {box} outside {region}"


# Predictor.predict


@pytest.fixture(scope="module")
def predicted(predictor, corpus) -> dict[str, tuple[list[FaceResult] | Exception, float]]:
    """`Predictor.predict` over the corpus: file name -> (faces or the exception raised, seconds taken)."""
    answers = {}
    for case in CASES:
        start = time.perf_counter()
        try:
            answer = predictor.predict(corpus / case.name)
        except Exception as error:  # reported by the test of this case
            answer = error
        answers[case.name] = answer, time.perf_counter() - start
    return answers


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_predictor(predicted, case):
    faces, seconds = predicted[case.name]
    if case.error:
        assert isinstance(faces, ImageError) and case.error in str(faces)
        assert seconds < 5, "refusing a file must not decode it"
        return
    if isinstance(faces, Exception):
        raise faces
    assert len(faces) == case.faces
    assert all(list(face.results) == MODELS for face in faces)
    assert_boxes_in([face.box for face in faces], case.region)


def test_twenty_faces_reach_the_detector_limit(corpus):
    """17 of the 20 faces with the cap lifted; see the module docstring."""
    with FaceDetector(max_faces=20) as detector:
        found = detector.detect(load_image(corpus / "twenty-faces.png"))
    assert len(found) >= 16
    with FaceDetector(max_faces=20, min_face_size=1) as detector:
        assert len(detector.detect(load_image(corpus / "tiny-faces.png"))) > 0, "the tiny heads are faces"


def test_face_at_the_border_is_clipped_to_the_image(predicted):
    (face,), _ = predicted["face-at-border.png"]
    assert face.box[0] == 0 and face.box[1] == 0, "the face is cut by the top and left edges"
    assert face.face.aligned.shape == (128, 128, 3)


@pytest.mark.filterwarnings("ignore:image file could not be identified")
@pytest.mark.parametrize("plugin, fmt", [("WebPImagePlugin", "WebP"), ("AvifImagePlugin", "AVIF")])
def test_formats_this_pillow_cannot_decode_are_named(monkeypatch, astronaut, plugin, fmt):
    """Pillow built without libwebp or libavif: its plugin reports the format as unsupported."""
    module = importlib.import_module(f"PIL.{plugin}")
    if not module.SUPPORTED:
        pytest.skip(f"this Pillow cannot write {fmt} to build the test file")
    encoded = encode(astronaut, fmt.upper())
    monkeypatch.setattr(module, "SUPPORTED", False)
    with pytest.raises(ImageError, match=f"Unsupported image format: this installation cannot decode {fmt} images"):
        load_image(encoded)


def test_decoding_the_worst_allowed_image_is_bounded(tmp_path):
    """A 49-megapixel RGBA PNG, the costliest kind of image under `MAX_PIXELS`, decodes within 24 bytes a pixel.

    Measured: ~1 GB (about 21 bytes a pixel: the decoded image, NumPy's copy, uint16 compositing, the result).
    """
    assert BIG_SIDE**2 < MAX_PIXELS
    color = (200, 120, 40)
    path, warm_up = tmp_path / "huge-rgba.png", tmp_path / "small.png"
    Image.new("RGBA", (BIG_SIDE, BIG_SIDE), (*color, 128)).save(path, compress_level=1)
    Image.new("RGBA", (64, 64)).save(warm_up)
    script = (  # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent through exec
        "import re, sys\n"
        "from pathlib import Path\n"
        "from fer_demo.faces import load_image\n"
        "def peak(): return int(re.search(r'VmHWM:\\s+(\\d+) kB', Path('/proc/self/status').read_text())[1])\n"
        "load_image(sys.argv[2])\n"
        "before = peak()\n"
        "image = load_image(sys.argv[1])\n"
        "print(*image.shape, *image[0, 0].tolist(), (peak() - before) * 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path), str(warm_up)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr
    *shape_and_pixel, grown = map(int, done.stdout.split())
    print(f"49-megapixel RGBA PNG: peak RSS grew by {grown / 2**20:.0f} MiB")
    assert shape_and_pixel == [MAX_SIDE, MAX_SIDE, 3, *(round((c * 128 + 255 * 127) / 255) for c in color)]
    assert grown < 24 * BIG_SIDE**2


# The command line

CLI_OPTIONS = ["--models", ",".join(MODELS)]


@pytest.fixture(scope="module")
def cli_records(store, corpus, tmp_path_factory) -> dict[str, list[dict]]:
    """`python -m fer_demo predict` over the whole corpus, in-process: source file name -> records.

    One model is enough here (the `Predictor` tests run all four): the command line adds reading and reporting.
    """
    out = tmp_path_factory.mktemp("cli") / "records.json"
    assert main(["predict", *(str(corpus / case.name) for case in CASES), *CLI_OPTIONS, "-o", str(out)]) == 0
    records: dict[str, list[dict]] = {}
    for record in json.loads(out.read_text()):
        records.setdefault(Path(record["source"]).name, []).append(record)
    return records


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cli(cli_records, case):
    records = cli_records[case.name]
    if case.error or not case.faces:
        (record,) = records
        assert (case.error or "no face found") in record["error"]
        return
    assert len(records) == case.faces and [r["face"] for r in records] == list(range(case.faces))
    assert all(list(r["models"]) == MODELS and "error" not in r for r in records)
    assert_boxes_in([r["box"] for r in records], case.region)


def test_cli_process_survives_the_corpus(store, corpus, cli_records, tmp_path):
    """The same run as a separate process: exit code 0, one error line per bad file, the in-process records."""
    out = tmp_path / "records.json"
    paths = [str(corpus / case.name) for case in CASES]
    done = subprocess.run(
        [sys.executable, "-m", "fer_demo", "predict", *paths, *CLI_OPTIONS, "-o", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if "ERROR fer_demo:" in line]  # tqdm may share the line
    assert len(errors) == len(ERRORS)
    assert all(any(case.name in line and case.error in line for line in errors) for case in ERRORS)
    records = json.loads(out.read_text())
    expected = [record for case in CASES for record in cli_records[case.name]]
    assert [(Path(r["source"]).name, r.get("error"), r.get("box")) for r in records] == [
        (Path(r["source"]).name, r.get("error"), r.get("box")) for r in expected
    ]


# The /predict API of the app


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server, verbose=False)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_api(client, predicted, corpus, case):
    """Every model answers, with the in-process `Predictor`'s boxes and GCNet probabilities (same seeded weights)."""
    answer = client.predict(handle_file(str(corpus / case.name)), api_name="/predict")
    if case.error:
        assert answer["faces"] == [] and case.error in answer["error"]
        return
    assert "error" not in answer
    assert all(set(face["models"]) == set(list_models()) for face in answer["faces"])
    expected, _ = predicted[case.name]
    assert [face["box"] for face in answer["faces"]] == [[round(float(v), 1) for v in f.box] for f in expected]
    for face, reference in zip(answer["faces"], expected, strict=True):
        for name, result in reference.results.items():
            assert np.allclose(list(face["models"][name]["probs"].values()), result.probs, atol=1e-4)


def test_upload_over_the_size_limit_is_refused(app_server, client, corpus, tmp_path):
    """`LAUNCH_OPTIONS` caps uploads at 20 MB: the server answers 413 to a bigger upload before anything reads it,
    `gradio_client` (which reads the limit from the app's config) refuses to send it, and the app keeps serving."""
    limit = 20 * 2**20
    huge = tmp_path / "huge.jpg"
    huge.write_bytes(encode(np.zeros((8, 8, 3), np.uint8), "JPEG") + bytes(limit))
    with huge.open("rb") as stream:
        response = httpx.post(f"{app_server}gradio_api/upload", files={"files": stream}, timeout=120)
    assert response.status_code == 413
    assert f"File size exceeded maximum allowed size of {limit} bytes." in response.text
    with pytest.raises(ValueError, match=f"exceeds the maximum file size of {limit} bytes"):
        client.predict(handle_file(str(huge)), api_name="/predict")
    answer = client.predict(handle_file(str(corpus / "grayscale.jpg")), api_name="/predict")
    assert len(answer["faces"]) == 1


# Faulty weights and a faulty Hub


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Hugging Face cache of the test's own, with the Hub allowed (the cache folder is passed explicitly)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in ("FER_DEMO_HUB_REPO", "FER_DEMO_HUB_REVISION"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "hf_cache"
    path.mkdir()
    return path


def test_hub_dropping_mid_download_falls_back_to_bundled(tmp_path, hub_cache, monkeypatch, caplog):
    """The Hub sends half the file and vanishes: huggingface_hub retries (5 times, 1 s apart), then the bundled copy
    is used, and nothing half-downloaded is left where the cache would serve it."""
    store = make_weight_store(tmp_path / "weights", ["gcnet"])
    filename = "gcnet.safetensors"
    repo_id = json.loads((store / "manifest.json").read_text())["hub"]["repo_id"]
    hub = FakeHub(repo_id, filename, (store / filename).read_bytes(), drop_midway=True)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    caplog.set_level(logging.WARNING, logger="fer_demo.hub")
    start = time.monotonic()
    try:
        resolved = resolve_weights(filename, weights_dir=store, offline=False, cache_dir=hub_cache)
    finally:
        hub.go_offline()
    elapsed = time.monotonic() - start
    assert any(request.startswith("GET ") for request in hub.requests)
    assert resolved.source is WeightSource.BUNDLED and resolved.sha256 == sha256_file(store / filename)
    assert elapsed < 30
    (warning,) = [record.getMessage() for record in caplog.records if record.name == "fer_demo.hub"]
    assert filename in warning and hub.endpoint in warning and "falling back" in warning
    assert try_to_load_from_cache(repo_id, filename, cache_dir=hub_cache, revision="main") is None


def damage_manifest(folder: Path, how: str) -> None:
    manifest = folder / "manifest.json"
    if how == "missing":
        manifest.unlink()
    elif how == "not-json":
        manifest.write_text(manifest.read_text()[:-10])
    else:
        manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format": 2}))


@pytest.mark.parametrize(
    "how, problem, fix",
    [
        ("missing", "manifest.json is missing", "git checkout -- weights/manifest.json"),
        ("not-json", "is not valid JSON", "restore it from version control"),
        ("wrong-format", "is malformed: 'format' is 2, expected 1", "See weights/README.md"),
    ],
)
def test_a_broken_manifest_disables_every_model_but_not_the_app(
    tmp_path, use_store, astronaut, caplog, how, problem, fix
):
    folder = use_store(make_weight_store(tmp_path / "weights", ["gcnet"]))
    damage_manifest(folder, how)
    predictor = Predictor.load()
    assert predictor.models == {} and set(predictor.unavailable) == set(list_models())
    assert all(problem in reason and fix in reason for reason in predictor.unavailable.values())

    demo = build_demo(predictor)
    notes = [block.value for block in demo.blocks.values() if isinstance(block, gr.Markdown)]
    assert any("Models without trained weights" in note and all(m in note for m in list_models()) for note in notes)
    message = DemoApp(predictor, {}).analyze_photo(astronaut, Session())[1]
    assert "Found 1 face(s), but **no model has trained weights yet**" in message

    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(photo)
    caplog.set_level(logging.ERROR, logger="fer_demo")
    assert main(["predict", str(photo)]) == 2
    assert main(["predict", str(photo), "--models", "gcnet"]) == 2
    errors = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2 and all(problem in error and fix in error for error in errors)
    assert all(f"- {name}: " in errors[0] for name in list_models()) and "--models gcnet" in errors[1]


@pytest.mark.parametrize(
    "fault, problem",
    [
        ("missing-file", "not bundled at"),
        ("truncated-rehashed", "matches its manifest hash but is not a valid safetensors file"),
    ],
)
def test_one_faulty_weight_file_leaves_the_others_working(tmp_path, use_store, astronaut, caplog, fault, problem):
    """test_predictor.py covers a corrupt (checksum) and a misshapen file; these are the other two faults."""
    folder = use_store(make_weight_store(tmp_path / "weights", ["ed2l", "gcnet"]))
    path = folder / "gcnet.safetensors"
    if fault == "missing-file":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        write_manifest_entry(path.name, path, weights_dir=folder, model="gcnet")
    predictor = Predictor.load()
    assert list(predictor.models) == ["ed2l"]
    reason = predictor.unavailable["gcnet"]
    assert "gcnet.safetensors" in reason and problem in reason and "python -m training export gcnet" in reason
    assert set(predictor.predict(astronaut)[0].results) == {"ed2l"}

    photo, out = tmp_path / "astronaut.png", tmp_path / "out.json"
    Image.fromarray(astronaut).save(photo)
    assert main(["predict", str(photo), "-o", str(out)]) == 0
    assert list(json.loads(out.read_text())[0]["models"]) == ["ed2l"]
    caplog.set_level(logging.ERROR, logger="fer_demo")
    assert main(["predict", str(photo), "--models", "ed2l,gcnet"]) == 2
    (error,) = [record.getMessage() for record in caplog.records if record.levelno == logging.ERROR]
    assert problem in error and "python -m training export gcnet" in error


def test_loading_every_model_and_map_never_unpickles(tmp_path, random_store, use_store, monkeypatch, astronaut):
    """At run time, not only in the source (test_hub.py scans it): no `pickle` class look-up, no `torch.load`."""
    unpickled: list[tuple] = []
    watching = threading.Event()

    def audit(event: str, args: tuple) -> None:
        if watching.is_set() and event == "pickle.find_class":
            unpickled.append(args)

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load called")

    sys.addaudithook(audit)
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch.serialization, "load", refuse)
    maps_store = make_weight_store(tmp_path / "maps", ["gcnet"], tsne=True)
    use_store(random_store)
    watching.set()
    try:
        predictor = Predictor.load()
        use_store(maps_store)
        maps = load_reference_maps(["gcnet"])
        predictor.predict(astronaut)
    finally:
        watching.clear()
    assert set(predictor.models) == set(list_models()) and set(maps) == {"gcnet"}
    assert unpickled == []
