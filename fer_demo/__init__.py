"""fer-demo: identity-disentangled facial expression recognition (IDFERM, ED²L, GCNet, DACL).

`Predictor` and the result types load lazily, so `fer_demo.models` (used by training) does not import the face
detector.
"""

from __future__ import annotations

from fer_demo.labels import EXPRESSIONS

__all__ = ["EXPRESSIONS", "FaceResult", "ModelResult", "Predictor"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in {"FaceResult", "ModelResult", "Predictor"}:
        from fer_demo import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'fer_demo' has no attribute {name!r}")
