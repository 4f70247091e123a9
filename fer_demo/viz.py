"""Figures and overlays built from `FaceResult`s: boxes, probabilities, references, heat-maps, attention, t-SNE."""

from __future__ import annotations

import cv2
import numpy as np
import plotly.io as pio
from gradio.components.plot import PlotData

from fer_demo.labels import EXPRESSIONS
from fer_demo.predictor import FaceResult, ModelResult

COLORS = ("#d62728", "#8c564b", "#9467bd", "#2ca02c", "#1f77b4", "#ff7f0e", "#7f7f7f")
"""One colour per expression, in `EXPRESSIONS` order."""

DISPLAY_SIZE = 192


def _hex_to_bgr(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (5, 3, 1))


def draw_faces(image: np.ndarray, faces: list[FaceResult], selected: int | None = None) -> np.ndarray:
    """RGB copy of `image` with a numbered box and the ensemble's label on every face."""
    canvas = np.ascontiguousarray(image.copy())
    thickness = max(2, round(max(image.shape[:2]) / 400))
    for i, face in enumerate(faces):
        x0, y0, x1, y1 = (int(round(v)) for v in face.box)
        ensemble = face.ensemble
        if ensemble is None:
            text, color = f"#{i + 1}", (255, 255, 255)
        else:
            k = int(ensemble.argmax())
            text = f"#{i + 1} {EXPRESSIONS[k]} {ensemble[k]:.0%}"
            color = _hex_to_bgr(COLORS[k])[::-1]
        width = thickness * (2 if i == selected else 1)
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, width)
        scale = max(0.5, (x1 - x0) / 250)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        top = max(0, y0 - th - 2 * thickness)
        cv2.rectangle(canvas, (x0, top), (x0 + tw + 2 * thickness, top + th + 2 * thickness), color, -1)
        cv2.putText(
            canvas,
            text,
            (x0 + thickness, top + th + thickness // 2),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            thickness,
            cv2.LINE_AA,
        )
    return canvas


def probability_figure(face: FaceResult) -> dict:
    """Grouped bars: each model's seven probabilities, and the ensemble's."""
    rows = [(name, result.probs) for name, result in face.results.items()]
    if face.ensemble is not None:
        rows.append(("ensemble", face.ensemble))
    bars = [
        {
            "type": "bar",
            "x": list(EXPRESSIONS),
            "y": probs.tolist(),
            "name": name,
            "hovertemplate": "%{x}: %{y:.1%}<extra>" + name + "</extra>",
        }
        for name, probs in rows
    ]
    layout = {
        "barmode": "group",
        "yaxis": {"range": [0, 1], "tickformat": ".0%"},
        "height": 320,
        "margin": {"l": 40, "r": 10, "t": 50, "b": 30},
        "legend": {"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom"},
    }
    return {"data": bars, "layout": layout}


def _display(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape[:2]
    size = (round(DISPLAY_SIZE * width / height), DISPLAY_SIZE)
    return cv2.resize(gray, size, interpolation=cv2.INTER_CUBIC)


def model_input_gray(face: FaceResult, size: tuple[int, int]) -> np.ndarray:
    """The aligned face as a gray image of `size` (H, W), centre-cropped like the models' input."""
    gray = cv2.cvtColor(face.face.aligned, cv2.COLOR_RGB2GRAY)
    side = gray.shape[0]
    keep = min(side, round(side * size[1] / size[0]))
    left = (side - keep) // 2
    return cv2.resize(gray[:, left : left + keep], (size[1], size[0]), interpolation=cv2.INTER_AREA)


def model_gallery(face: FaceResult, result: ModelResult) -> list[tuple[np.ndarray, str]]:
    """(image, caption) pairs of a model's picture outputs: its neutral reference next to its input, its heat-maps."""
    pairs = []
    if result.neutral is not None:
        pairs.append((_display(model_input_gray(face, result.neutral.shape)), "input"))
        pairs.append((_display(result.neutral), "generated neutral"))
    pairs.extend(branch_heatmaps(face, result))
    return pairs


def label_scores(result: ModelResult) -> dict[str, float]:
    """Expression -> probability, for `gr.Label`."""
    return {expression: float(p) for expression, p in zip(EXPRESSIONS, result.probs, strict=True)}


def heatmap_overlay(gray: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB overlay of a [0, 1] heat-map (jet colour map) on a gray face of the same size."""
    colored = cv2.applyColorMap((np.clip(heatmap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    return _display(cv2.addWeighted(base, 1 - alpha, colored, alpha, 0))


def branch_heatmaps(face: FaceResult, result: ModelResult) -> list[tuple[np.ndarray, str]]:
    """(overlay, caption) for each of a model's heat-maps on the face it saw."""
    pairs = []
    for branch, heatmap in result.heatmaps.items():
        gray = model_input_gray(face, heatmap.shape)
        pairs.append((heatmap_overlay(gray, heatmap), f"{branch} branch"))
    return pairs


def attention_figure(result: ModelResult) -> dict:
    """DACL's 512 attention weights sorted high to low, with |x_j - c_j| to the predicted class's center."""
    order = np.argsort(-result.attention)
    traces = [
        {
            "type": "scatter",
            "y": result.attention[order].tolist(),
            "name": "attention a_j",
            "mode": "lines",
            "line": {"color": "#1f77b4"},
        }
    ]
    if result.center is not None:
        gap = np.abs(result.embedding - result.center)[order]
        traces.append(
            {
                "type": "scatter",
                "y": (gap / max(gap.max(), 1e-8)).tolist(),
                "name": f"|x_j - c_j| to the {result.label} center (scaled)",
                "mode": "markers",
                "marker": {"size": 3, "color": "#ff7f0e"},
                "opacity": 0.6,
            }
        )
    layout = {
        "height": 320,
        "margin": {"l": 40, "r": 10, "t": 30, "b": 40},
        "xaxis": {"title": {"text": "feature element (sorted by attention)"}},
        "yaxis": {"range": [0, 1.02]},
        "legend": {"orientation": "h", "y": -0.35},
    }
    return {"data": traces, "layout": layout}


def tsne_map_figure(model: str, coords: np.ndarray, labels: np.ndarray) -> dict:
    """A model's t-SNE reference map coloured by expression (the part of `tsne_figure` that never changes)."""
    traces = [
        {
            "type": "scatter",
            "x": coords[labels == k, 0].tolist(),
            "y": coords[labels == k, 1].tolist(),
            "mode": "markers",
            "name": expression,
            "marker": {"size": 4, "color": COLORS[k], "opacity": 0.55},
        }
        for k, expression in enumerate(EXPRESSIONS)
    ]
    layout = {
        "title": {"text": f"{model}: expression embedding (t-SNE)", "font": {"size": 12}},
        "height": 420,
        "margin": {"l": 10, "r": 10, "t": 35, "b": 10},
        "xaxis": {"visible": False},
        "yaxis": {"visible": False},
        "legend": {"itemsizing": "constant", "orientation": "h", "y": -0.02, "font": {"size": 10}},
    }
    return {"data": traces, "layout": layout}


def tsne_figure(reference: dict, trail: list[np.ndarray] | None = None) -> dict:
    """A `tsne_map_figure` with the face's recent positions as a trail and its current position as a star."""
    if not trail:
        return reference
    path = np.asarray(trail, dtype=float)
    marks = [
        {
            "type": "scatter",
            "x": path[:, 0].tolist(),
            "y": path[:, 1].tolist(),
            "mode": "lines+markers",
            "name": "recent frames",
            "line": {"color": "black", "width": 1},
            "marker": {"size": 5, "color": "black"},
        },
        {
            "type": "scatter",
            "x": path[-1:, 0].tolist(),
            "y": path[-1:, 1].tolist(),
            "mode": "markers",
            "name": "this face",
            "marker": {"size": 16, "color": "gold", "symbol": "star", "line": {"width": 1.5}},
        },
    ]
    return {"data": [*reference["data"], *marks], "layout": reference["layout"]}


def plot_value(figure: dict) -> PlotData:
    """A plotly figure dict as the value of a `gr.Plot`.

    The figures here are plotly's JSON form, serialised without building `plotly.graph_objects` (whose validation
    takes tens of milliseconds per figure, too slow for live video); the tests validate each figure's form once.
    """
    return PlotData(type="plotly", plot=pio.to_json(figure, validate=False))
