"""`python -m fer_demo predict` over images, folders and videos, to JSON and CSV."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from fer_demo.__main__ import main
from fer_demo.labels import EXPRESSIONS
from fer_demo.models import list_models
from tests.conftest import make_weight_store


@pytest.fixture
def inputs(tmp_path, astronaut):
    folder = tmp_path / "inputs"
    (folder / "nested").mkdir(parents=True)
    Image.fromarray(astronaut).save(folder / "astronaut.jpg")
    Image.fromarray(np.full((200, 300, 3), 90, np.uint8)).save(folder / "nested" / "blank.png")
    (folder / "notes.txt").write_text("not an image")
    video = folder / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (512, 512))
    for _ in range(20):
        writer.write(cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))
    writer.release()
    return folder


def test_json_over_a_folder_with_an_image_a_video_and_a_blank(inputs, random_store, use_store, tmp_path):
    use_store(random_store)
    out = tmp_path / "out.json"
    assert main(["predict", str(inputs), "--every", "1", "-o", str(out)]) == 0
    records = json.loads(out.read_text())
    by_source = {}
    for record in records:
        by_source.setdefault(record["source"].split("/")[-1], []).append(record)
    assert set(by_source) == {"astronaut.jpg", "blank.png", "clip.avi"}  # notes.txt is not an image suffix
    (photo,) = by_source["astronaut.jpg"]
    assert set(photo["models"]) == set(list_models())
    assert set(photo["models"]["dacl"]["probs"]) == set(EXPRESSIONS)
    assert by_source["blank.png"][0]["error"] == "no face found"
    frames = by_source["clip.avi"]
    assert [r["frame"] for r in frames] == [0, 10] and [r["time_s"] for r in frames] == [0.0, 1.0]


def test_csv_has_one_row_per_face_and_model_and_reports_bad_files(inputs, random_store, use_store, tmp_path):
    use_store(random_store)
    out = tmp_path / "out.csv"
    code = main(
        [
            "predict",
            str(inputs / "astronaut.jpg"),
            str(inputs / "notes.txt"),
            "--models",
            "ed2l,dacl",
            "--format",
            "csv",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    photo_rows = [r for r in rows if r["source"].endswith("astronaut.jpg")]
    assert sorted(r["model"] for r in photo_rows) == ["dacl", "ed2l"]
    assert all(abs(sum(float(r[e]) for e in EXPRESSIONS) - 1) < 1e-3 for r in photo_rows)
    (bad,) = [r for r in rows if r["source"].endswith("notes.txt")]
    assert "image" in bad["error"].lower()


def test_without_weights_the_cli_says_so(tmp_path, astronaut):
    folder = make_weight_store(tmp_path / "weights", [])
    image = tmp_path / "a.png"
    Image.fromarray(astronaut).save(image)
    env = {"FER_DEMO_WEIGHTS_DIR": str(folder), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "fer_demo", "predict", str(image)], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 2
    assert "No model has trained weights" in done.stderr
