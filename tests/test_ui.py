"""The app's callbacks and figures, called directly (the browser tests drive the same callbacks)."""

from __future__ import annotations

import io
import json

import numpy as np
import plotly.graph_objects as go
import pytest
from PIL import Image

from fer_demo import Predictor
from fer_demo.embedding import ReferenceMap, load_reference_maps
from fer_demo.labels import EXPRESSIONS
from fer_demo.ui import DemoApp, Session, build_demo
from tests.conftest import make_weight_store


def as_figure(value) -> go.Figure:
    """A `gr.Plot` value as a plotly figure; building it validates every property of the figure's JSON."""
    return go.Figure(json.loads(value.plot))


@pytest.fixture(scope="module")
def reference_map() -> ReferenceMap:
    """A small reference map: 7 well separated clusters of 32-d points with spread-out 2-D coordinates."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 20)
    centers = rng.normal(0, 10, (7, 32))
    embeddings = centers[labels] + rng.normal(0, 1, (140, 32))
    coords = np.stack([np.cos(labels * 0.9), np.sin(labels * 0.9)], 1) * 30 + rng.normal(0, 2, (140, 2))
    return ReferenceMap(embeddings.astype(np.float32), coords, labels, perplexity=15.0), centers


def test_new_points_land_in_their_cluster(reference_map):
    reference, centers = reference_map
    placed = reference.place(centers[[2, 5]] + 0.1)
    for point, k in zip(placed, (2, 5), strict=True):
        nearest = reference.labels[np.argsort(np.linalg.norm(reference.coords - point, axis=1))[:10]]
        assert np.bincount(nearest, minlength=7).argmax() == k


@pytest.fixture
def app(random_store, use_store) -> DemoApp:
    use_store(random_store)
    return DemoApp(Predictor.load(), {})


def test_photo_callback_renders_every_panel(app, astronaut):
    annotated, message, picker, overview, *columns, details, session = app.analyze_photo(astronaut, Session())
    assert annotated.shape == astronaut.shape and not np.array_equal(annotated, astronaut)
    assert "Found 1 face" in message
    overview = as_figure(overview)
    assert len(overview.data) == 5 and overview.data[-1].name == "ensemble"  # four models + ensemble
    panels = dict(zip(app.models, zip(*[iter(columns)] * 4, strict=True), strict=True))
    for name, (label, *_) in panels.items():
        assert set(label) == set(EXPRESSIONS) and abs(sum(label.values()) - 1) < 1e-5, name
    captions = {name: [caption for _, caption in panel[1]["value"]] for name, panel in panels.items()}
    assert captions == {
        "dacl": [],
        "ed2l": ["distilling branch", "dispelling branch"],
        "gcnet": ["input", "generated neutral"],
        "idferm": ["input", "generated neutral"],
    }
    attention = panels["dacl"][2]
    assert attention["visible"] and len(as_figure(attention["value"]).data[0].y) == 512
    assert not panels["ed2l"][2]["visible"]
    assert set(details["models"]) == {"dacl", "ed2l", "gcnet", "idferm"}
    assert len(session.faces) == 1


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, format="PNG")
    return buffer.getvalue()[:40]


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (np.full((240, 320, 3), 200, np.uint8), "No face found"),
        (_truncated_png(), "Cannot read this image"),
        (b"%PDF-1.4 not an image", "Cannot read this image"),
    ],
    ids=["no-face", "truncated-png", "pdf"],
)
def test_bad_inputs_give_a_message_not_an_exception(app, payload, expected):
    annotated, message, *_ = app.analyze_photo(payload, Session())
    assert expected in message


def test_webcam_frames_extend_the_trail(random_store, use_store, reference_map, astronaut):
    use_store(random_store)
    reference, _ = reference_map
    predictor = Predictor.load(["ed2l"])
    maps = {
        "ed2l": ReferenceMap(
            np.random.default_rng(1).normal(size=(140, 256)).astype(np.float32),
            reference.coords,
            reference.labels,
            15.0,
        )
    }
    app = DemoApp(predictor, maps)
    session = Session()
    for _ in range(3):
        *outputs, session = app.analyze_frame(astronaut, session)
    assert len(session.trails["ed2l"]) == 3
    tsne = outputs[4 + 3]  # first (only) model column: label, pictures, attention, t-SNE
    tsne = as_figure(tsne)
    assert [trace.name for trace in tsne.data] == [*EXPRESSIONS, "recent frames", "this face"]
    assert len(tsne.data[-2].x) == 3 and tsne.data[-1].x[0] == pytest.approx(session.trails["ed2l"][-1][0])


def test_the_demo_builds_and_exposes_a_predict_api(random_store, use_store):
    use_store(random_store)
    demo = build_demo()
    assert "/predict" in [f"/{dep.api_name}" for dep in demo.fns.values() if dep.api_name]


def test_reference_maps_load_verified_from_the_store(tmp_path, use_store):
    use_store(make_weight_store(tmp_path, ["ed2l"], tsne=True))
    maps = load_reference_maps(["ed2l", "dacl"])  # dacl has no map: skipped with a warning
    assert list(maps) == ["ed2l"]
    assert maps["ed2l"].coords.shape == (84, 2) and maps["ed2l"].labels.shape == (84,)


def test_about_table_reads_the_manifest_metrics(tmp_path, use_store):
    from fer_demo.hub import write_manifest_entry
    from fer_demo.ui import model_table

    store = use_store(make_weight_store(tmp_path / "weights", ["gcnet"]))
    metrics = {
        "fer2013_private_test": {"accuracy": 0.5432},
        "identity_probe_ckplus": {"embedding": 0.1, "baseline_embedding": 0.2, "pixels": 0.9},
        "neutral_reference": {"eval_identity": {"generated_rank1": 0.35}, "chance_rank1": 0.0588},
    }
    write_manifest_entry("gcnet.safetensors", store / "gcnet.safetensors", weights_dir=store, model="gcnet",
                         metrics=metrics)  # fmt: skip
    row = next(line for line in model_table(Predictor.load(["gcnet"])).splitlines() if line.startswith("| `gcnet`"))
    assert "| loaded |" in row and "54.3%" in row
    assert "10.0% / 20.0% / 90.0%" in row and "35.0% (5.9%)" in row
    dacl = next(line for line in model_table(Predictor.load(["gcnet"])).splitlines() if line.startswith("| `dacl`"))
    assert "no trained weights yet" in dacl
    assert "Ensemble: geometric mean of the loaded models' calibrated probabilities (gcnet 1.00)" in model_table(
        Predictor.load(["gcnet"])
    )


def test_about_tab_reports_the_fitted_ensemble(tmp_path, use_store):
    from fer_demo.hub import sha256_file, write_manifest_ensemble
    from fer_demo.ui import model_table

    store = use_store(make_weight_store(tmp_path / "weights", ["dacl", "ed2l"]))
    hashes = {name: sha256_file(store / f"{name}.safetensors") for name in ("dacl", "ed2l")}
    accuracy = {"pool": 0.614, "geometric_mean": 0.59, "dacl": 0.612, "ed2l": 0.572}
    write_manifest_ensemble({"dacl": 0.9, "ed2l": 0.1}, hashes, weights_dir=store, accuracy={"PrivateTest": accuracy})
    text = model_table(Predictor.load(["dacl", "ed2l"]))
    assert "weights fitted on FER2013 PublicTest (dacl 0.90, ed2l 0.10); PrivateTest accuracy 61.4%" in text
    assert "best single model (dacl) 61.2%" in text
