"""The app's `/predict` endpoint through `gradio_client`, against `python app.py` on loopback."""

from __future__ import annotations

import pytest
from gradio_client import Client, handle_file
from PIL import Image

from fer_demo.labels import EXPRESSIONS


@pytest.fixture(scope="module")
def client(app_server) -> Client:
    return Client(app_server, verbose=False)


def test_predict_returns_json_probabilities_for_every_model(client, astronaut, tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    answer = client.predict(handle_file(str(path)), api_name="/predict")
    assert answer["classes"] == list(EXPRESSIONS)
    (face,) = answer["faces"]
    assert set(face["models"]) == {"dacl", "ed2l", "gcnet", "idferm"}
    for model in face["models"].values():
        assert set(model["probs"]) == set(EXPRESSIONS)
        assert abs(sum(model["probs"].values()) - 1) < 1e-3
        assert model["label"] in EXPRESSIONS


def test_predict_reports_unreadable_files(client, tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a whole jpeg")
    answer = client.predict(handle_file(str(path)), api_name="/predict")
    assert answer["faces"] == []
    assert "image" in answer["error"].lower()
