"""Predictor on real photos with every model, and its behaviour when weights are missing or corrupt.

The weights here are seeded random initialisations: these tests check the pipeline, not accuracy.
"""

from __future__ import annotations

import json
import threading

import cv2
import numpy as np
import pytest

from fer_demo import EXPRESSIONS, Predictor
from fer_demo.faces import ImageError
from fer_demo.hub import WeightsNotFoundError, WeightSource
from fer_demo.models import get_card, list_models
from tests.conftest import make_weight_store


@pytest.fixture(scope="module")
def group_photo(astronaut) -> np.ndarray:
    """Three faces on one canvas: the astronaut, a mirrored copy and a smaller copy."""
    face = astronaut[0:220, 120:300]
    canvas = np.full((420, 900, 3), 128, np.uint8)
    canvas[100:320, 20:200] = face
    canvas[100:320, 320:500] = face[:, ::-1]
    small = cv2.resize(face, (135, 165))
    canvas[120:285, 650:785] = small
    return canvas


@pytest.fixture
def predictor(random_store, use_store) -> Predictor:
    use_store(random_store)
    return Predictor.load()


def test_every_model_answers_for_the_astronaut(predictor, astronaut):
    assert set(predictor.models) == set(list_models()) and not predictor.unavailable
    assert all(source.source is WeightSource.BUNDLED for source in predictor.sources.values())
    faces = predictor.predict(astronaut)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 140 < (x0 + x1) / 2 < 280 and 40 < (y0 + y1) / 2 < 200
    for name, result in faces[0].results.items():
        card = get_card(name)
        assert result.probs.shape == (len(EXPRESSIONS),)
        assert np.isclose(result.probs.sum(), 1, atol=1e-5) and (result.probs >= 0).all()
        assert result.label in EXPRESSIONS
        assert result.embedding.shape == (card.embedding_dim,)
    results = faces[0].results
    for name in ("idferm", "gcnet"):
        assert results[name].neutral.shape == get_card(name).input_size and results[name].neutral.dtype == np.uint8
    for heatmap in results["ed2l"].heatmaps.values():
        assert heatmap.shape == get_card("ed2l").input_size
        assert 0 <= heatmap.min() and heatmap.max() <= 1
    assert results["dacl"].attention.shape == (512,)
    assert ((results["dacl"].attention > 0) & (results["dacl"].attention <= 1)).all()
    assert results["dacl"].center.shape == (512,)
    assert np.isclose(faces[0].ensemble.sum(), 1, atol=1e-5)


def test_predict_crops_matches_predict_on_the_aligned_face(predictor, astronaut):
    face = predictor.predict(astronaut)[0]
    probs = predictor.predict_crops(face.face.aligned[None])
    for name, result in face.results.items():
        np.testing.assert_allclose(probs[name][0], result.probs, atol=1e-5)


def test_predict_crops_takes_gray_data_set_faces_in_batches(predictor):
    crops = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    probs = predictor.predict_crops(crops, batch_size=2)
    assert set(probs) == set(list_models())
    assert all(p.shape == (5, 7) and np.allclose(p.sum(1), 1, atol=1e-5) for p in probs.values())


def test_several_faces_each_get_every_model(predictor, group_photo):
    faces = predictor.predict(group_photo)
    assert len(faces) == 3
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in faces]
    assert areas == sorted(areas, reverse=True)
    assert all(set(f.results) == set(list_models()) for f in faces)


def test_no_face_gives_an_empty_list(predictor):
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8)[None, :, None], (240, 1, 3))
    assert predictor.predict(gradient) == []


def test_unreadable_input_raises_a_clear_error(predictor):
    with pytest.raises(ImageError):
        predictor.predict(b"this is not an image")


def test_models_run_side_by_side_give_each_model_its_own_answers(predictor, group_photo):
    faces = predictor.detector.detect(group_photo)
    together = [predictor.predict_faces(faces) for _ in range(2)]  # the second call runs the slowest model first
    for name, model in predictor.models.items():
        alone = Predictor({name: model}, predictor.detector).predict_faces(faces)
        for answers in together:
            for joint, single in zip(answers, alone, strict=True):
                np.testing.assert_allclose(joint.results[name].probs, single.results[name].probs, atol=1e-5)
                np.testing.assert_allclose(joint.results[name].embedding, single.results[name].embedding, atol=1e-4)


def test_concurrent_predictions_agree(predictor, astronaut):
    expected = predictor.predict(astronaut)[0].results["ed2l"].probs
    answers, errors = [], []

    def work():
        try:
            for _ in range(3):
                answers.append(predictor.predict(astronaut)[0].results["ed2l"].probs)
        except Exception as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(answers) == 9 and all(np.allclose(a, expected, atol=1e-5) for a in answers)


def test_models_without_weights_are_reported_not_faked(tmp_path, use_store, astronaut):
    use_store(make_weight_store(tmp_path, []))
    predictor = Predictor.load()
    assert predictor.models == {}
    assert set(predictor.unavailable) == set(list_models())
    assert all("No trained weights" in message for message in predictor.unavailable.values())
    faces = predictor.predict(astronaut)
    assert len(faces) == 1 and faces[0].results == {} and faces[0].ensemble is None
    with pytest.raises(WeightsNotFoundError, match="dacl"):
        Predictor.load(["dacl"])


def test_a_corrupt_weight_file_leaves_the_other_models_working(tmp_path, use_store, astronaut):
    folder = use_store(make_weight_store(tmp_path, list_models()))
    path = folder / "gcnet.safetensors"
    path.write_bytes(path.read_bytes()[:-100] + b"\0" * 100)
    predictor = Predictor.load()
    assert set(predictor.models) == {"dacl", "ed2l", "idferm"}
    assert "gcnet.safetensors" in predictor.unavailable["gcnet"]
    assert set(predictor.predict(astronaut)[0].results) == {"dacl", "ed2l", "idferm"}


def test_weights_with_wrong_shapes_name_the_model(tmp_path, use_store):
    folder = make_weight_store(tmp_path, ["ed2l"])
    (folder / "dacl.safetensors").write_bytes((folder / "ed2l.safetensors").read_bytes())
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["dacl.safetensors"] = dict(manifest["files"]["ed2l.safetensors"], model="dacl")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    use_store(folder)
    predictor = Predictor.load()
    assert "do not fit model 'dacl'" in predictor.unavailable["dacl"]
    assert "ed2l" in predictor.models


def test_ensemble_is_a_weighted_log_linear_pool():
    a, b = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.2, 0.6])
    only_a = Predictor({}, detector=object(), ensemble_weights={"a": 1.0, "b": 0.0})
    assert np.allclose(only_a.ensemble({"a": a, "b": b}), a)
    equal = Predictor({}, detector=object(), ensemble_weights={"a": 0.5, "b": 0.5})
    geometric = np.sqrt(a * b)
    assert np.allclose(equal.ensemble({"a": a, "b": b}), geometric / geometric.sum())
    assert equal.ensemble({}) is None


def test_face_results_carry_the_predictors_ensemble(predictor, group_photo):
    faces = predictor.predict(group_photo)
    for face in faces:
        expected = predictor.ensemble({name: result.probs for name, result in face.results.items()})
        assert np.allclose(face.ensemble, expected, atol=1e-6)
