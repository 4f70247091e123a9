"""Gradio layout and callbacks: photo and webcam input, per-method results side by side, live t-SNE, teaching view.

Callbacks call only `Predictor` and `fer_demo.viz`; no model code lives here.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
from gradio.data_classes import FileData

from fer_demo import viz
from fer_demo.embedding import ReferenceMap, load_reference_maps
from fer_demo.faces import ImageError, load_image
from fer_demo.hub import WeightsError, load_manifest
from fer_demo.labels import EXPRESSIONS
from fer_demo.models import get_card, list_models
from fer_demo.predictor import FaceResult, Predictor

logger = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
TRAIL_LENGTH = 12
QUEUE_SIZE = 32
LAUNCH_OPTIONS = {"max_file_size": "20mb", "show_error": True, "css": ".method-title {min-height: 5.5em}"}
"""Options for `demo.launch()`: uploads over 20 MB are refused before they reach a callback; the method columns'
titles take the same height, so the panels below them line up whichever title wraps."""
STREAM_EVERY = 0.25
STREAM_TIME_LIMIT = 120

INTRO = """# fer-demo: identity-disentangled facial expression recognition
Four published methods read the same face. Each tries to separate *what the face expresses* from *who the person
is* (and from pose and light) in its own way: **IDFERM** and **GCNet** generate a neutral face of the same person
and compare against it, **ED²L** splits features into an expression branch and a non-expression branch, and
**DACL** learns which of its 512 feature elements matter. Upload a photo or start the webcam."""


@dataclass(eq=False)
class Session:
    """Per-browser-session state: the faces of the last frame and each model's recent t-SNE positions."""

    faces: list[FaceResult] = field(default_factory=list)
    image: np.ndarray | None = None
    trails: dict[str, deque] = field(default_factory=dict)
    selected: int = 0


class DemoApp:
    """Holds the predictor and reference maps and renders results for the Gradio components."""

    def __init__(self, predictor: Predictor, maps: dict[str, ReferenceMap]) -> None:
        self.predictor = predictor
        self.maps = maps
        self.models = [name for name in list_models() if name in predictor.models]
        self.map_figures = {name: viz.tsne_map_figure(name, ref.coords, ref.labels) for name, ref in maps.items()}

    # ---- rendering -------------------------------------------------------------------------------------------
    def render(self, session: Session, message: str) -> tuple:
        """All output values for the current session state, in `build_demo`'s output order."""
        faces = session.faces
        annotated = None if session.image is None else viz.draw_faces(session.image, faces, session.selected)
        choices = [f"Face {i + 1}" for i in range(len(faces))]
        picker = gr.update(choices=choices, value=choices[session.selected] if faces else None, visible=len(faces) > 1)
        face = faces[session.selected] if faces else None
        columns = []
        for name in self.models:
            result = face.results.get(name) if face else None
            if result is None:
                columns.extend([None, gr.update(value=[], visible=False), gr.update(value=None, visible=False), None])
                continue
            pictures = viz.model_gallery(face, result)
            attention = None if result.attention is None else viz.plot_value(viz.attention_figure(result))
            columns.extend(
                [
                    viz.label_scores(result),
                    gr.update(value=pictures, visible=bool(pictures)),
                    gr.update(value=attention, visible=attention is not None),
                    self._tsne(name, session) if name in self.maps else None,
                ]
            )
        overview = viz.plot_value(viz.probability_figure(face)) if face and face.results else None
        return (annotated, message, picker, overview, *columns, face_json(face) if face else None)

    def _tsne(self, name: str, session: Session):
        return viz.plot_value(viz.tsne_figure(self.map_figures[name], list(session.trails.get(name, []))))

    def _place(self, session: Session) -> None:
        face = session.faces[session.selected]
        for name in self.maps:
            if name in face.results:
                point = self.maps[name].place(face.results[name].embedding[None])[0]
                session.trails.setdefault(name, deque(maxlen=TRAIL_LENGTH)).append(point)

    # ---- callbacks -------------------------------------------------------------------------------------------
    def analyze_photo(self, upload, session: Session) -> tuple:
        """Upload callback: analyse every face of a photo (a fresh t-SNE trail).

        The photo component does not decode uploads itself (`preprocess=False`): the raw file goes to
        `fer_demo.faces.load_image`, which applies EXIF rotation and turns unreadable files into clear messages.
        """
        session = Session()
        return (*self._analyze(_upload_path(upload), session), session)

    def analyze_frame(self, frame, session: Session) -> tuple:
        """Webcam callback: analyse one frame and extend the t-SNE trail."""
        session = session or Session()
        return (*self._analyze(frame, session), session)

    def select_face(self, choice: str | None, session: Session) -> tuple:
        """Face picker callback."""
        if session.faces and choice:
            session.selected = min(int(choice.split()[-1]) - 1, len(session.faces) - 1)
            session.trails = {}
            self._place(session)
        return (*self.render(session, self._message(session.faces)), session)

    def _analyze(self, image, session: Session) -> tuple:
        if image is None:
            session.faces, session.image = [], None
            return self.render(session, "Upload a photo or start the webcam.")
        try:
            session.image = load_image(image)
            start = time.perf_counter()
            session.faces = self.predictor.predict(session.image)
            elapsed = time.perf_counter() - start
        except ImageError as error:
            session.faces, session.image = [], None
            return self.render(session, f"**Cannot read this image.** {error}")
        session.selected = min(session.selected, max(len(session.faces) - 1, 0))
        if session.faces:
            self._place(session)
        return self.render(session, self._message(session.faces, elapsed))

    def _message(self, faces: list[FaceResult], elapsed: float | None = None) -> str:
        if not faces:
            return "**No face found.** Try a frontal, well-lit face that fills more of the picture."
        if not self.predictor.models:
            return f"Found {len(faces)} face(s), but **no model has trained weights yet**, so there is no prediction."
        timing = f" in {elapsed * 1000:.0f} ms" if elapsed is not None else ""
        lines = [f"Found {len(faces)} face(s){timing}."]
        for i, face in enumerate(faces):
            answers = ", ".join(
                f"{name}: {result.label} ({result.confidence:.0%})" for name, result in face.results.items()
            )
            lines.append(f"- Face {i + 1}: {answers}")
        return "\n".join(lines)

    def predict_api(self, image: FileData) -> dict:
        """Predict the expression of every face in an image file; returns JSON-ready probabilities per model."""
        try:
            faces = self.predictor.predict(_upload_path(image))
        except ImageError as error:
            return {"error": str(error), "faces": []}
        return {"faces": [face_json(face) for face in faces], "classes": list(EXPRESSIONS)}


def _upload_path(upload):
    """The uploaded file's path from an unprocessed image payload; other values pass through unchanged."""
    if isinstance(upload, dict):
        return upload.get("path")
    return getattr(upload, "path", upload)


def face_json(face: FaceResult) -> dict:
    """JSON-ready summary of one face: box, each model's label and probabilities, and the ensemble."""
    ensemble = face.ensemble
    return {
        "box": [round(float(v), 1) for v in face.box],
        "models": {
            name: {
                "label": r.label,
                "probs": {k: round(float(p), 4) for k, p in zip(EXPRESSIONS, r.probs, strict=True)},
            }
            for name, r in face.results.items()
        },
        "ensemble": None if ensemble is None else EXPRESSIONS[int(ensemble.argmax())],
    }


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def model_table(predictor: Predictor) -> str:
    """Markdown table of every model: status, weight source and the measured metrics recorded in the manifest."""
    try:
        manifest = load_manifest()
    except WeightsError as error:  # the About tab must render even with a broken manifest
        logger.warning("Manifest unreadable: %s", error)
        manifest = {}
    files = manifest.get("files", {})
    rows = [
        "| model | method | status | weights from | FER2013 PrivateTest | CK+ 10-fold "
        "| identity probe (embedding / softmax baseline / pixels) | neutral reference: rank-1 (chance) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in list_models():
        card = get_card(name)
        metrics = files.get(card.weight_file, {}).get("metrics", {})
        source = predictor.sources.get(name)
        status = "loaded" if name in predictor.models else "no trained weights yet"
        probe = metrics.get("identity_probe_ckplus", {})
        neutral = metrics.get("neutral_reference", {})
        rank1 = neutral.get("eval_identity", {}).get("generated_rank1")
        rows.append(
            f"| `{name}` | {card.title} | {status} | {source.source.value if source else '—'} | "
            f"{_percent(metrics.get('fer2013_private_test', {}).get('accuracy'))} | "
            f"{_percent(metrics.get('ckplus7_10fold', {}).get('accuracy'))} | "
            f"{_percent(probe.get('embedding'))} / {_percent(probe.get('baseline_embedding'))} / "
            f"{_percent(probe.get('pixels'))} | "
            + (f"{_percent(rank1)} ({_percent(neutral.get('chance_rank1'))})" if rank1 is not None else "—")
            + " |"
        )
    return (
        "\n".join(rows)
        + _ensemble_note(predictor, manifest.get("ensemble"))
        + (
            "\n\nIdentity probe: accuracy of a linear classifier that recognises the CK+ subject from the embedding, "
            "trained on some of each subject's sequences and tested on the others (lower = less identity kept). "
            "Neutral reference: on subjects held out of the generator's training, how often the generated neutral face "
            "is closest (by an identity network trained on CK+) to the subject's own real neutral face among all "
            "held-out subjects' neutral faces."
        )
    )


def _ensemble_note(predictor: Predictor, ensemble: dict | None) -> str:
    weights = ", ".join(f"{name} {weight:.2f}" for name, weight in predictor.ensemble_weights.items())
    if not ensemble or predictor.ensemble_weights != ensemble["weights"]:
        return f"\n\nEnsemble: geometric mean of the loaded models' calibrated probabilities ({weights})."
    accuracy = ensemble["accuracy"]["PrivateTest"]
    best = max(ensemble["weights"], key=lambda name: accuracy[name])
    return (
        f"\n\nEnsemble: the calibrated probabilities pooled with weights fitted on FER2013 PublicTest ({weights}); "
        f"PrivateTest accuracy {_percent(accuracy['pool'])}, best single model ({best}) {_percent(accuracy[best])}."
    )


TEACHING = """## How to read the pictures
- **Probabilities**: each model's softmax over the seven expressions, calibrated by temperature scaling on FER2013
  PublicTest (so "80 %" is right about 80 % of the time there); *ensemble* pools them, each model weighted by how
  much it adds to the others on PublicTest.
- **Generated neutral (IDFERM, GCNet)**: the generator's guess of the same person with a neutral face. IDFERM
  pushes the expression embedding of the photo *away* from the embedding of this reference (radial metric
  learning), GCNet classifies the *difference* between the two encodings. What stays the same in both images
  (identity, light) cancels out.
- **ED²L heat-maps**: channel sums of the first layer of each branch. The *distilling* branch is trained to
  recognise the expression; the *dispelling* branch is trained so that an adversary *cannot* read the expression
  from it, so it keeps identity, pose and light. The paper reports that the first looks at eyes, nose and mouth,
  the second at expression-invariant regions such as the forehead.
- **DACL attention**: one weight per feature element, from the attention network; the sparse center loss pulls
  only the high-weight elements toward their class center. The orange dots show how far each element of this face
  is from the predicted class's center.
- **t-SNE**: reference faces (FER2013 PrivateTest) in each model's embedding, coloured by their label, with this
  face placed among them by openTSNE; on the webcam the black trail shows the last frames.
"""


def build_demo(predictor: Predictor | None = None, maps: dict[str, ReferenceMap] | None = None) -> gr.Blocks:
    """Build the Gradio app (not launched)."""
    predictor = predictor or Predictor.load()
    maps = load_reference_maps(list(predictor.models)) if maps is None else maps
    app = DemoApp(predictor, maps)
    examples = sorted(str(p) for p in EXAMPLES_DIR.glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})

    with gr.Blocks(title="fer-demo: identity-disentangled facial expression recognition") as demo:
        session = gr.State(Session())
        gr.Markdown(INTRO)
        if predictor.unavailable:
            gr.Markdown(
                "**Models without trained weights (not shown):** " + ", ".join(f"`{n}`" for n in predictor.unavailable)
            )
        with gr.Tabs():
            with gr.Tab("Photo"):
                with gr.Row():
                    photo = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Photo", height=360)
                    photo_out = gr.Image(label="Detected faces", interactive=False, height=360)
                if examples:
                    gr.Examples(examples, inputs=photo)
            with gr.Tab("Webcam"):
                with gr.Row():
                    camera = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="Webcam", height=360)
                    camera_out = gr.Image(label="Detected faces", interactive=False, height=360)
            with gr.Tab("About the methods"):
                gr.Markdown(TEACHING)
                gr.Markdown("## Models\n" + model_table(predictor))
        message = gr.Markdown("Upload a photo or start the webcam.", elem_id="message")
        picker = gr.Radio(label="Face", visible=False, interactive=True)
        overview = gr.Plot(label="All methods and their ensemble")
        columns = []
        with gr.Row(equal_height=False):
            for name in app.models:
                with gr.Column(min_width=260):
                    gr.Markdown(f"### {get_card(name).title}", elem_classes="method-title")
                    columns.extend(
                        [
                            gr.Label(num_top_classes=3, label=f"{name}: expression"),
                            gr.Gallery(label=f"{name}: pictures", columns=2, height=200, visible=False),
                            gr.Plot(label=f"{name}: attention weights", visible=False),
                            gr.Plot(label=f"{name}: t-SNE position", visible=name in maps),
                        ]
                    )
        details = gr.JSON(label="Result")

        panel = [message, picker, overview, *columns, details, session]
        photo.change(
            app.analyze_photo, [photo, session], [photo_out, *panel], preprocess=False, api_visibility="private"
        )
        camera.stream(
            app.analyze_frame,
            [camera, session],
            [camera_out, *panel],
            stream_every=STREAM_EVERY,
            time_limit=STREAM_TIME_LIMIT,
            concurrency_limit=2,
            show_progress="hidden",
            api_visibility="private",
        )
        picker.input(app.select_face, [picker, session], [photo_out, *panel], api_visibility="private")
        gr.api(app.predict_api, api_name="predict")
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=2)
    return demo
