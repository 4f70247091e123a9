"""The benchmark's quick run (our models only, no peers) on seeded random weights: result structure and ranges.

Random weights check the pipeline, not accuracy; the results must say so. Sizes are smaller than the command line's
``--quick`` (300 faces, 3 timed frames) to keep this test short.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from benchmarks import accuracy, common, latency, report
from benchmarks.datasets import EVAL_SETS
from fer_demo import Predictor
from fer_demo.models import list_models
from tests.conftest import make_weight_store
from training.data import CLASSES, DEFAULT_DATA_DIR, FaceSet

FACES = 32


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """Quick accuracy (if the data sets are there) and latency results over a random-weight store."""
    store = make_weight_store(tmp_path_factory.mktemp("weights"), list_models(), tsne=True)
    out = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FER_DEMO_WEIGHTS_DIR", str(store))
        patch.setenv("HF_HUB_OFFLINE", "1")
        predictor = Predictor.load()
        latency_path = latency.run(quick=True, warmup=0, repeats=1, out_dir=out, predictor=predictor)
        has_data = (DEFAULT_DATA_DIR / "fer2013.npz").is_file()
        accuracy_path = accuracy.run(quick=True, limit=FACES, out_dir=out, predictor=predictor) if has_data else None
    return out, accuracy_path, latency_path


def _check_report(report_: dict, n: int) -> None:
    assert report_["n"] == n
    assert 0 <= report_["accuracy"] <= 1 and 0 <= report_["mean_class_accuracy"] <= 1
    matrix = np.asarray(report_["confusion"])
    assert matrix.shape == (len(CLASSES), len(CLASSES)) and matrix.sum() == n
    assert np.isclose(np.trace(matrix) / n, report_["accuracy"])


def test_quick_accuracy_reports_every_model_and_the_ensemble_as_pipeline_only(quick_run):
    out, path, _ = quick_run
    if path is None:
        pytest.skip(f"FER2013 not found under {DEFAULT_DATA_DIR}")
    result = json.loads(path.read_text())
    assert result["kind"] == "accuracy" and result["mode"] == "quick"
    assert result["git"]["commit"] is None or len(result["git"]["commit"]) == 40
    assert result["machine"]["cores"] >= 1 and len(result["machine"]["loadavg"]) == 3
    assert set(result["pipeline_only"]) == set(list_models())
    assert set(result["models"]) == {*list_models(), "ensemble"}
    assert list(result["sets"]) == ["fer2013_private"] and result["sets"]["fer2013_private"]["n"] == FACES
    for name, model in result["models"].items():
        assert not model["trained"], name
        _check_report(model["results"]["fer2013_private"], FACES)
        assert model["results"]["fer2013_private"]["missing_classes"] == []
    assert not any(model["kind"] == "peer" for model in result["models"].values())


def test_quick_latency_times_every_stage_for_one_and_four_faces(quick_run):
    _, _, path = quick_run
    result = json.loads(path.read_text())
    assert result["kind"] == "latency" and result["peers"] == {} and result["repeats"] == 1
    ours = result["ours"]
    assert ours["torch_threads"] >= 1 and ours["peak_rss_mb"] >= ours["rss_after_load_mb"] > 50
    assert set(ours["tsne_models"]) == set(list_models())
    assert {key: ours["images"][key]["faces"] for key in ("1-face", "4-faces")} == {"1-face": [1], "4-faces": [4]}
    expected = {
        "decode",
        "detect_align",
        "tsne_place",
        "render",
        "full",
        "models",
        "figures",
        "models_figures_per_face",
    }
    for image in ours["images"].values():
        stages = image["stages"]
        assert expected | {f"model:{name}" for name in list_models()} == set(stages)
        for stage in stages.values():
            assert len(stage["ms"]) == len(stage["cpu_ms"]) == 1 and 0 < stage["p50"] <= stage["p95"] < 600_000
        (faces,) = image["faces"]
        figures = stages["tsne_place"]["ms"][0] + stages["render"]["ms"][0]
        assert np.isclose(stages["figures"]["ms"][0], figures, atol=0.01)
        per_face = (stages["models"]["ms"][0] + figures) / faces
        assert np.isclose(stages["models_figures_per_face"]["ms"][0], per_face, atol=0.01)


def test_report_renders_tables_figures_and_replaces_the_readme_section(quick_run, tmp_path):
    out, accuracy_path, latency_path = quick_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\nbefore\n{report.README_MARKERS[0]}\nOLD SECTION\n{report.README_MARKERS[1]}\nafter\n")
    section = report.main(out, write=readme)
    text = readme.read_text()
    assert "OLD SECTION" not in text and text.startswith("# x\n\nbefore\n") and text.endswith("after\n")
    assert section in text and "### Latency" in section and "n/a" not in section.split("### Latency")[1]
    assert "python -m benchmarks latency --quick --warmup 0 --repeats 1`" in section
    assert "untrained placeholder weights" in section
    figure = latency_path.with_suffix(".html")
    first = figure.read_bytes()
    report.write_figures(out)
    assert figure.read_bytes() == first  # regenerating a figure from the same result changes no byte
    if accuracy_path is not None:
        assert "### Accuracy" in section and "| **dacl** | n/a |" in section
        assert accuracy_path.with_suffix(".html").is_file()
    other = tmp_path / "other.md"
    other.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        report.replace_section(other, "x", report.README_MARKERS)


def test_a_class_the_classifier_lacks_is_reported_and_counted_as_errors():
    labels = np.array([0, 3, 7, 7, 6])
    faces = FaceSet("toy", np.zeros((5, 48, 48), np.uint8), labels)
    probs = np.eye(3)[[0, 1, 1, 1, 2]]
    result = accuracy.score(probs, ["Anger", "happiness", "neutral"], faces)
    assert result["missing_classes"] == ["contempt"] and result["missing_faces"] == 2
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["per_class_accuracy"]["contempt"] == 0 and result["per_class_accuracy"]["fear"] is None
    with pytest.raises(ValueError, match="'unknown'"):
        accuracy.class_mapping(["angry", "unknown"])


def test_the_ensemble_reports_the_manifests_ckplus_pool_only_for_the_weight_files_it_was_fitted_for(
    tmp_path, use_store
):
    use_store(make_weight_store(tmp_path / "weights", ["dacl", "ed2l"]))
    weights = common.weights_info()["models"]
    predictor = Predictor.load(["dacl", "ed2l"])
    faces = {"toy": FaceSet("toy", np.random.default_rng(0).integers(0, 256, (7, 48, 48), np.uint8), np.arange(7))}
    pooled = {"accuracy": 0.95, "mean_class_accuracy": 0.93, "n": 981}
    record = {"sha256": {name: weights[name]["sha256"] for name in ("dacl", "ed2l")}, "ckplus7_10fold": pooled}

    models = accuracy.evaluate_ours(predictor, faces, weights, complete=False, ensemble_record=record)
    source = "weights/manifest.json (python -m training calibrate --ckplus-folds)"
    assert models["ensemble"]["results"]["ckplus7_10fold"] == {**pooled, "source": source}
    assert set(models["ensemble"]["results"]) == {"toy", "ckplus7_10fold"}
    other = {**record, "sha256": {**record["sha256"], "ed2l": "0" * 64}}
    models = accuracy.evaluate_ours(predictor, faces, weights, complete=False, ensemble_record=other)
    assert set(models["ensemble"]["results"]) == {"toy"}


@pytest.mark.parametrize("name", ["ckplus", "jaffe", "rafd_subset", "nimstim_subset", "yale_faces"])
def test_the_small_evaluation_sets_load_with_their_documented_sizes(name):
    if not (DEFAULT_DATA_DIR / f"{name}.npz").is_file():
        pytest.skip(f"{name} not found under {DEFAULT_DATA_DIR}")
    faces = EVAL_SETS[name].load(None)
    assert (
        len(faces) == {"ckplus": 981, "jaffe": 213, "rafd_subset": 117, "nimstim_subset": 110, "yale_faces": 59}[name]
    )
    assert faces.images.dtype == np.uint8 and 0 <= faces.labels.min() and faces.labels.max() < len(CLASSES)


def test_a_result_is_dirty_for_changed_code_not_for_the_files_the_benchmark_writes(tmp_path, monkeypatch):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True)

    git("init", "-q")
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "README.md").write_text("results\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "start")
    monkeypatch.setattr(common, "ROOT", tmp_path)
    (tmp_path / "benchmarks" / "results" / "today-latency.json").write_text("{}")
    (tmp_path / "README.md").write_text("new results\n")
    assert common.git_commit()["dirty"] is False
    (tmp_path / "code.py").write_text("x = 2\n")
    assert common.git_commit()["dirty"] is True


def test_model_cards_show_each_models_calibration_and_test_time_view(tmp_path, use_store):
    store = use_store(make_weight_store(tmp_path / "weights", ["dacl", "ed2l"]))
    manifest = json.loads((store / "manifest.json").read_text())
    calibration = {"temperature": 2.5, "PrivateTest": {"ece": [0.2, 0.03], "nll": [1.9, 1.1]}}
    manifest["files"]["ed2l.safetensors"].update(data={"train": "fer2013/Training"}, calibration=calibration)
    (store / "manifest.json").write_text(json.dumps(manifest))
    table_rows = [line for line in report.cards_section().splitlines() if line.startswith("| `")]
    rows = {line.split(" | ")[0]: line for line in table_rows}  # a model's metrics row follows its card row
    assert rows["| `ed2l`"].endswith("| T = 2.50: 20.0 → 3.0 / 1.90 → 1.10 |")
    assert "no trained weights yet" in rows["| `dacl`"]  # no training provenance: a placeholder
    cards = [line.split(" | ") for line in table_rows if "](" in line]  # card rows link the paper
    test_time = {cells[0]: cells[5] for cells in cards}
    assert test_time == dict.fromkeys(
        ("| `dacl`", "| `ed2l`", "| `gcnet`", "| `idferm`"), "face + mirror, logits averaged"
    )
