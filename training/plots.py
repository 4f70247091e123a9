"""Plotly HTML reports: training curves and confusion matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def training_curves(history: list[dict], title: str) -> go.Figure:
    """Loss terms (left) and accuracies (right) per epoch from a run's history."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("training losses", "accuracy"))
    epochs = [row["epoch"] for row in history]
    loss_keys = [key for key in history[0]["train"] if key != "accuracy" and not key.endswith("accuracy")]
    for key in loss_keys:
        figure.add_scatter(x=epochs, y=[row["train"][key] for row in history], name=key, row=1, col=1)
    figure.add_scatter(x=epochs, y=[row["train"]["accuracy"] for row in history], name="train accuracy", row=1, col=2)
    for key in ("accuracy", "mean_class_accuracy"):
        figure.add_scatter(x=epochs, y=[row["val"][key] for row in history], name=f"val {key}", row=1, col=2)
    figure.update_xaxes(title_text="epoch")
    figure.update_layout(title=title)
    return figure


def confusion_figure(matrix: np.ndarray | list, classes: tuple[str, ...] | list[str], title: str) -> go.Figure:
    """Row-normalised confusion heat-map (true class rows, predicted columns) annotated with counts."""
    matrix = np.asarray(matrix)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = go.Figure(
        go.Heatmap(
            z=rates,
            x=list(classes),
            y=list(classes),
            text=matrix,
            texttemplate="%{text}",
            colorscale="Blues",
            zmin=0,
            zmax=1,
        )
    )
    figure.update_layout(title=title, xaxis_title="predicted", yaxis_title="true", yaxis_autorange="reversed")
    return figure


def write_html(figure: go.Figure, path: Path) -> None:
    """Self-contained HTML (plotly.js embedded, so it opens offline)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.write_html(path, include_plotlyjs=True)
