"""Pure metric functions on label arrays (no models, no data loading)."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return matrix


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Fraction of correct predictions."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float((y_true == y_pred).mean()) if len(y_true) else float("nan")


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class from a confusion matrix; NaN for classes absent from the ground truth."""
    totals = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, np.diag(matrix) / totals, np.nan)


def mean_class_accuracy(matrix: np.ndarray) -> float:
    """Mean of the per-class accuracies over the classes present in the ground truth."""
    return float(np.nanmean(per_class_accuracy(matrix)))


def summarize(y_true: np.ndarray, y_pred: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Accuracy, mean per-class accuracy, per-class accuracy and confusion matrix as a JSON-able dict."""
    matrix = confusion_matrix(y_true, y_pred, len(classes))
    recall = per_class_accuracy(matrix)
    return {
        "n": int(len(y_true)),
        "accuracy": accuracy(y_true, y_pred),
        "mean_class_accuracy": mean_class_accuracy(matrix),
        "per_class_accuracy": {
            name: None if np.isnan(value) else float(value) for name, value in zip(classes, recall, strict=True)
        },
        "classes": list(classes),
        "confusion": matrix.tolist(),
    }


def negative_log_likelihood(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean −log p(true class) of (N, C) probabilities (clipped at 1e-12)."""
    probs, y_true = np.asarray(probs, np.float64), np.asarray(y_true)
    return float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean())


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE (Guo et al. 2017): |accuracy − confidence| of equal-width confidence bins, weighted by bin size."""
    probs, y_true = np.asarray(probs), np.asarray(y_true)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == y_true
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    error = 0.0
    for b in np.unique(which):
        in_bin = which == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)
