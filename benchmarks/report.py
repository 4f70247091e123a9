"""Tables and figures from the newest result files; the README results section and the model cards' metrics.

``python -m benchmarks report [--write [README.md]] [--cards [docs/MODEL_CARDS.md]]`` prints the Markdown results
table, writes the plotly figures next to the result files (HTML, and PNG when kaleido can export), and replaces the
text between `README_MARKERS` in the README and between `CARD_MARKERS` in the model cards.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from benchmarks import common
from benchmarks.peers import PEERS
from fer_demo.models import get_card, list_models

logger = logging.getLogger(__name__)

README_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")
CARD_MARKERS = ("<!-- metrics:start -->", "<!-- metrics:end -->")
SET_COLUMNS = (
    ("fer2013_private", "FER2013 Private"),
    ("fer2013_public", "FER2013 Public"),
    ("ferplus_test", "FER+ test"),
    ("ckplus", "CK+ all (zero-shot)"),
    ("ckplus7_10fold", "CK+ 10-fold"),
    ("jaffe", "JAFFE"),
    ("rafd_subset", "RaFD"),
    ("nimstim_subset", "NimStim"),
    ("yale_faces", "Yale"),
)
LATENCY_ROWS = (
    ("decode", "decode JPEG"),
    ("detect_align", "detect + align"),
    ("models", "all models"),
    ("figures", "figures (t-SNE placement + render)"),
    ("models_figures_per_face", "models + figures, per face"),
    ("full", "full frame (`DemoApp.analyze_frame`)"),
)
ACCURACY_TARGET = 0.68
LATENCY_TARGET_MS = 40.0


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}"


def _cell(report: dict[str, Any] | None) -> str:
    if not report or report.get("accuracy") is None:
        return "—"
    return f"{_pct(report['accuracy'])} ({_pct(report.get('mean_class_accuracy'))})"


def _where(result: dict[str, Any]) -> str:
    machine = result["machine"]
    load = ", ".join(f"{v:.1f}" for v in machine["loadavg"])
    git = result["git"]
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; load average {load} at the start; "
        f"commit `{git['short']}`{' (uncommitted changes)' if git['dirty'] else ''}, {result['date'][:10]}"
    )


def accuracy_table(result: dict[str, Any], file_name: str) -> list[str]:
    """Markdown lines: accuracy (mean per-class accuracy) in % per model and set."""
    present = [(key, title) for key, title in SET_COLUMNS if key in result["sets"] or key == "ckplus7_10fold"]
    models = result["models"]
    lines = [
        "| model | " + " | ".join(title for _, title in present) + " |",
        "|---|" + "---|" * len(present),
    ]
    for name, model in models.items():
        if "error" in model:
            lines.append(f"| {name} | " + " | ".join("failed" for _ in present) + " |")
            continue
        untrained = model["kind"] in ("ours", "ensemble") and not model.get("trained")
        label = {"ours": f"**{name}**", "ensemble": "**ensemble**"}.get(model["kind"], f"{name} (peer)")
        cells = []
        for key, _ in present:
            report = model["results"].get(key)
            cells.append("n/a" if untrained and report else _cell(report))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    sizes = ", ".join(
        f"{result['sets'][key]['title']} {result['sets'][key]['n']:,}" for key, _ in present if key in result["sets"]
    )
    lines += [
        "",
        f"Accuracy (mean per-class accuracy), %. Faces: {sizes}. CK+ all: 54 contempt faces, a class no model has, "
        "count as errors. CK+ 10-fold: fine-tuned per fold, from `weights/manifest.json`; the ensemble's pools the "
        "models fine-tuned on the other nine folds with the app's weights.",
    ]
    if result.get("pipeline_only"):
        lines.append(
            f"n/a: {', '.join(result['pipeline_only'])} had no trained weights in this run (untrained placeholder "
            "weights: the run checked the pipeline, not accuracy)."
        )
    if result.get("peers_source"):
        lines.append(f"Peer rows copied from `{result['peers_source']}` (same data), not measured in this run.")
    lines.append(f"Made by `{result['command']}` → `benchmarks/results/{file_name}`; {_where(result)}.")
    return lines


def latency_table(result: dict[str, Any], file_name: str) -> list[str]:
    """Markdown lines: wall-clock p50 / p95 and CPU p50 in ms of our stages and of each peer's full pipeline, with
    ratios and peak RSS."""
    images = list(result["ours"]["images"])
    header = "| | " + " | ".join(f"{key}: p50 / p95 (CPU p50) ms" for key in images) + " | peak RSS MiB |"
    lines = [header, "|---|" + "---|" * (len(images) + 1)]
    ours = result["ours"]
    for key, title in LATENCY_ROWS:
        cells = []
        for image in images:
            stage = ours["images"][image]["stages"].get(key)
            cells.append("—" if stage is None else f"{stage['p50']:.1f} / {stage['p95']:.1f} ({stage['cpu_p50']:.1f})")
        rss = f"{ours['peak_rss_mb']:.0f}" if key == "full" else ""
        lines.append(f"| ours: {title} | " + " | ".join(cells) + f" | {rss} |")
    for name, peer in result["peers"].items():
        if "images" not in peer:
            lines.append(f"| {name}: failed | " + " | ".join("—" for _ in images) + " | |")
            continue
        cells = []
        for image in images:
            timing, ratio = peer["images"][image], result["ratios"][name][image]
            cells.append(
                f"{timing['p50']:.1f} / {timing['p95']:.1f} ({timing['cpu_p50']:.1f}); "
                f"{ratio['peer_full_over_ours_full']:.2f}× ours (CPU {ratio['peer_full_over_ours_full_cpu']:.2f}×); "
                f"faces {timing['faces']}"
            )
        lines.append(f"| {name}: full pipeline | " + " | ".join(cells) + f" | {peer['peak_rss_mb']:.0f} |")
    faces = ", ".join(f"{image} {ours['images'][image]['faces']}" for image in images)
    lines += [
        "",
        f"Timed frames per image: {result['repeats']}, after {result['warmup']} warm-up frames; faces found by ours: "
        f"{faces}. CPU: time of all threads of the process. Ratios: the peer's full-pipeline p50 over ours (above 1: "
        f"ours is faster). Ours: one process, torch threads {ours['torch_threads']}; each peer in its own process "
        "and environment, run after ours.",
    ]
    if result.get("pipeline_only"):
        lines.append("Our models ran with untrained placeholder weights (same architectures, so the same cost).")
    lines.append(f"Made by `{result['command']}` → `benchmarks/results/{file_name}`; {_where(result)}.")
    return lines


def targets(accuracy: dict[str, Any] | None, latency: dict[str, Any] | None) -> list[str]:
    """Markdown bullets: each target of the issue, the measured value and whether it is met."""
    lines = []
    if accuracy and "fer2013_private" in accuracy["sets"]:
        ours = {n: m for n, m in accuracy["models"].items() if m["kind"] == "ours" and m.get("trained")}
        peers = {n: m for n, m in accuracy["models"].items() if m["kind"] == "peer" and "results" in m}
        peer_best = max((m["results"]["fer2013_private"]["accuracy"] for m in peers.values()), default=None)
        if ours:
            name, best = max(
                ((n, m["results"]["fer2013_private"]["accuracy"]) for n, m in ours.items()), key=lambda item: item[1]
            )
            met = best >= ACCURACY_TARGET and (peer_best is None or best > peer_best)
            lines.append(
                f"- Best single model on FER2013 PrivateTest ≥ {100 * ACCURACY_TARGET:.0f}% and ahead of every peer: "
                f"{name} {_pct(best)}% vs best peer {_pct(peer_best)}% — **{'met' if met else 'not met'}**."
            )
        else:
            lines.append(
                f"- Best single model on FER2013 PrivateTest ≥ {100 * ACCURACY_TARGET:.0f}%: no trained model yet"
                + ("" if peer_best is None else f" (best peer {_pct(peer_best)}%)")
                + " — **not measured**."
            )
    if latency:
        images = latency["ours"]["images"]
        per_face = {image: data["stages"]["models_figures_per_face"]["p50"] for image, data in images.items()}
        met = max(per_face.values()) <= LATENCY_TARGET_MS
        values = ", ".join(f"{image} {value:.1f} ms" for image, value in per_face.items())
        lines.append(
            f"- Models + figures p50 ≤ {LATENCY_TARGET_MS:.0f} ms per face on {latency['machine']['cores']} cores: "
            f"{values} — **{'met' if met else 'not met'}**."
        )
        comparisons = []
        for name, peer in latency["peers"].items():
            for image, timing in peer.get("images", {}).items():
                ours = images[image]["stages"]["full"]["p50"]
                comparisons.append(
                    (f"{name} {image} {timing['p50']:.1f} ms vs ours {ours:.1f} ms", ours < timing["p50"])
                )
        if comparisons:
            met = all(faster for _, faster in comparisons)
            lines.append(
                "- Our full frame faster than every peer's full pipeline (p50, same images, same run): "
                + "; ".join(text for text, _ in comparisons)
                + f" — **{'met' if met else 'not met'}**."
            )
    return lines


def results_section(folder: Path = common.RESULTS_DIR) -> str:
    """The Markdown of the README results section from the newest accuracy and latency results in `folder`."""
    lines = [
        "## Benchmarks",
        "",
        "Generated by `python -m benchmarks report` from the newest results in "
        "`benchmarks/results/`; regenerate everything with `python -m benchmarks all`.",
        "",
    ]
    accuracy_path, latency_path = common.latest_result("accuracy", folder), common.latest_result("latency", folder)
    accuracy = common.load_result(accuracy_path) if accuracy_path else None
    latency = common.load_result(latency_path) if latency_path else None
    if accuracy is None and latency is None:
        return "\n".join([*lines, "No results yet: run `python -m benchmarks all`."])
    lines += ["### Targets", "", *targets(accuracy, latency), ""]
    if accuracy:
        lines += ["### Accuracy", "", *accuracy_table(accuracy, accuracy_path.name), ""]
        figure = accuracy_path.with_suffix(".html").name
        lines += [f"Figures: `benchmarks/results/{figure}`, `benchmarks/results/{figure[:-5]}-confusion.html`.", ""]
    if latency:
        lines += ["### Latency", "", *latency_table(latency, latency_path.name), ""]
        lines += [f"Figure: `benchmarks/results/{latency_path.with_suffix('.html').name}`.", ""]
    skipped = (accuracy or {}).get("peers_skipped") or {}
    if skipped:
        lines += ["Peers not run: " + "; ".join(f"`{name}` ({why})" for name, why in skipped.items()) + ".", ""]
    lines.append("How each peer is called: " + " ".join(f"**{spec.name}**: {spec.notes}" for spec in PEERS.values()))
    return "\n".join(lines).rstrip() + "\n"


def _calibration(report: dict[str, Any] | None) -> str:
    if not report:
        return "not calibrated (T = 1)"
    ece, nll = report["PrivateTest"]["ece"], report["PrivateTest"]["nll"]
    return f"T = {report['temperature']:.2f}: {_pct(ece[0])} → {_pct(ece[1])} / {nll[0]:.2f} → {nll[1]:.2f}"


def cards_section() -> str:
    """Markdown of the model cards' generated part: each model's card facts and the metrics in the weight manifest."""
    models = common.weights_info()["models"]
    lines = [
        "### Architecture and input (from `fer_demo.models.get_card`)",
        "",
        "| model | paper | input (H×W×C) | contrast | mean / std | test time | embedding | departures from the paper |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in list_models():
        card = get_card(name)
        height, width = card.input_size
        lines.append(
            f"| `{name}` | [{card.paper}]({card.url}) | {height}×{width}×{card.channels} | {card.equalize or 'none'} | "
            f"{card.mean[0]} / {card.std[0]} | {'face + mirror, logits averaged' if card.flip_average else 'face'} | "
            f"{card.embedding_dim} | {card.notes} |"
        )
    columns = (
        ("fer2013_private_test", "FER2013 Private"),
        ("fer2013_public_test", "FER2013 Public"),
        ("ferplus_test", "FER+ test"),
        ("ckplus7_10fold", "CK+ 10-fold"),
    )
    lines += [
        "",
        "### Metrics (from `weights/manifest.json`)",
        "",
        "| model | weights (SHA-256) | "
        + " | ".join(title for _, title in columns)
        + " | identity probe (CK+) | temperature: PrivateTest ECE / NLL, raw → calibrated |",
        "|---|---|" + "---|" * (len(columns) + 2),
    ]
    for name in list_models():
        entry = models.get(name)
        if not entry or not entry["trained"]:
            lines.append(f"| `{name}` | no trained weights yet |" + " — |" * (len(columns) + 2))
            continue
        metrics = entry["metrics"]
        probe = metrics.get("identity_probe_ckplus") or {}
        probe_text = "—" if "embedding" not in probe else f"{_pct(probe['embedding'])} (chance {_pct(probe['chance'])})"
        cells = [_cell(metrics.get(key)) for key, _ in columns]
        lines.append(
            f"| `{name}` | `{entry['sha256'][:12]}` | "
            + " | ".join(cells)
            + f" | {probe_text} | {_calibration(entry.get('calibration'))} |"
        )
    lines += [
        "",
        "Accuracy (mean per-class accuracy), %, as `python -m training export` recorded them. Identity probe: accuracy "
        "of a linear probe that recognises the CK+ subject from the expression embedding (lower: less identity). "
        "Temperature: T of softmax(logits / T), fitted on PublicTest by `python -m training calibrate`; expected "
        "calibration error (%, 15 bins) and negative log-likelihood on PrivateTest before → after.",
        "",
        "### Peer packages in the benchmark (from `benchmarks.peers`)",
        "",
        "| package | model | detector | licence | weights in the wheel |",
        "|---|---|---|---|---|",
        *(
            f"| [{spec.package}]({spec.url}) | {spec.model} | {spec.detector} | {spec.license} | {spec.weights} |"
            for spec in PEERS.values()
        ),
        "",
        "Generated by `python -m benchmarks report --cards`; do not edit by hand.",
    ]
    return "\n".join(lines) + "\n"


def replace_section(path: Path, text: str, markers: tuple[str, str]) -> None:
    """Replace the text between two marker lines of a file.

    Raises:
        ValueError: The file lacks a marker.
    """
    content = path.read_text(encoding="utf-8")
    start, end = markers
    if start not in content or end not in content:
        raise ValueError(f"{path} lacks the markers {start!r} and {end!r}")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    path.write_text(f"{head}{start}\n{text}{end}{tail}", encoding="utf-8")
    logger.info("Updated %s", path)


def accuracy_figures(result: dict[str, Any]) -> dict[str, go.Figure]:
    """Bars of accuracy per set and model, and the FER2013 PrivateTest confusion matrices (row-normalised)."""
    models = {name: m for name, m in result["models"].items() if "results" in m}
    bars = go.Figure()
    sets = [key for key, _ in SET_COLUMNS if key in result["sets"] or key == "ckplus7_10fold"]
    titles = dict(SET_COLUMNS)
    for name, model in models.items():
        values = [(model["results"].get(key) or {}).get("accuracy") for key in sets]
        bars.add_bar(x=[titles[key] for key in sets], y=values, name=name)
    bars.update_layout(
        barmode="group",
        yaxis={"range": [0, 1], "tickformat": ".0%", "title": "accuracy"},
        title=f"Accuracy per data set ({result['date'][:10]}, commit {result['git']['short']})",
        height=450,
    )
    key = "fer2013_private" if "fer2013_private" in result["sets"] else next(iter(result["sets"]), None)
    figures = {"": bars}
    if key is not None and models:
        classes = result["classes"][:7]
        cols = min(4, len(models))
        rows = -(-len(models) // cols)
        confusion = make_subplots(rows=rows, cols=cols, subplot_titles=list(models))
        for i, model in enumerate(models.values()):
            matrix = np.asarray(model["results"][key]["confusion"], float)[:7, :7]
            normalised = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
            confusion.add_heatmap(
                z=normalised,
                x=list(classes),
                y=list(classes),
                zmin=0,
                zmax=1,
                colorscale="Blues",
                showscale=i == 0,
                row=i // cols + 1,
                col=i % cols + 1,
            )
        confusion.update_yaxes(autorange="reversed")
        confusion.update_layout(
            title=f"{result['sets'][key]['title']}: confusion (rows true, columns predicted, row-normalised)",
            height=320 * rows,
            width=330 * cols,
        )
        figures["-confusion"] = confusion
    return figures


def latency_figure(result: dict[str, Any]) -> go.Figure:
    """Horizontal bars: p50 with p95 whiskers of our stages and of each peer's full pipeline, per image."""
    figure = go.Figure()
    for image, data in result["ours"]["images"].items():
        labels, p50, p95 = [], [], []
        for key, title in LATENCY_ROWS:
            if key in data["stages"]:
                labels.append(f"ours: {title}")
                p50.append(data["stages"][key]["p50"])
                p95.append(data["stages"][key]["p95"])
        for name, peer in result["peers"].items():
            if "images" in peer:
                labels.append(f"{name}: full pipeline")
                p50.append(peer["images"][image]["p50"])
                p95.append(peer["images"][image]["p95"])
        figure.add_bar(
            y=labels,
            x=p50,
            name=image,
            orientation="h",
            error_x={"type": "data", "symmetric": False, "array": np.subtract(p95, p50)},
        )
    figure.update_layout(
        barmode="group",
        xaxis_title="ms per frame (p50, whisker to p95)",
        height=520,
        yaxis={"autorange": "reversed"},
        title=f"Latency ({result['machine']['cpu']}, {result['machine']['cores']} "
        f"cores, load {result['machine']['loadavg'][0]:.1f})",
    )
    return figure


def write_figure(figure: go.Figure, path: Path) -> None:
    """HTML (plotly.js from its CDN) and, when kaleido can export, PNG. The plot's element id is the file's stem
    (plotly would draw a random one), so regenerating a figure from the same result gives the same bytes."""
    figure.write_html(path.with_suffix(".html"), include_plotlyjs="cdn", div_id=path.stem)
    try:
        figure.write_image(path.with_suffix(".png"), scale=1.5)
    except Exception as error:  # kaleido missing or without a browser: HTML only
        logger.info("No PNG for %s (%s)", path.name, str(error).splitlines()[0] if str(error) else type(error).__name__)


def write_figures(folder: Path = common.RESULTS_DIR) -> None:
    """Figures of the newest accuracy and latency results, next to them."""
    accuracy_path, latency_path = common.latest_result("accuracy", folder), common.latest_result("latency", folder)
    if accuracy_path:
        for suffix, figure in accuracy_figures(common.load_result(accuracy_path)).items():
            write_figure(figure, accuracy_path.with_name(accuracy_path.stem + suffix + ".html"))
    if latency_path:
        write_figure(latency_figure(common.load_result(latency_path)), latency_path.with_suffix(".html"))


def main(folder: Path = common.RESULTS_DIR, write: Path | None = None, cards: Path | None = None) -> str:
    """Write the figures, print the results section and update the README and model cards when asked."""
    write_figures(folder)
    section = results_section(folder)
    print(section)
    if write is not None:
        replace_section(write, section, README_MARKERS)
    if cards is not None:
        replace_section(cards, cards_section(), CARD_MARKERS)
    return section
