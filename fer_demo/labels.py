"""The seven canonical expressions and the label maps of each data set."""

from __future__ import annotations

EXPRESSIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""Canonical class order of every model and result (the FER2013 order)."""

CONTEMPT = 7
"""Label value the shared data sets use for contempt (CK+, some pairs sets); not one of the seven."""
