"""Property tests (hypothesis) of image loading, detection, alignment and per-model preprocessing.

Images of any size from 1x1 to 4000x4000 with cheap content (a constant, a small random tile repeated, a gradient, or
the astronaut photo stretched to the size) either yield well-formed faces or an empty list, never an exception; the
alignment undoes any similarity transform and takes any key points; every model's input transform turns face crops of
any size into finite tensors of the card's shape.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from skimage import data

from fer_demo.faces import (
    ALIGNED_SIZE,
    MAX_SIDE,
    MIN_SIDE,
    TEMPLATE,
    FaceDetector,
    ImageError,
    align_face,
    load_image,
)
from fer_demo.models import get_card, list_models
from fer_demo.preprocess import prepare

ASTRONAUT = data.astronaut()
SIDES = st.integers(1, 4000)
SMALLEST, LARGEST = np.zeros((1, 1, 3), np.uint8), np.full((4000, 4000, 3), 255, np.uint8)
PROPERTY = settings(max_examples=40, deadline=None, database=None)


@st.composite
def images(draw) -> np.ndarray:
    """An (H, W, 3) uint8 image of 1 to 4000 pixels a side whose content costs little to make at any size."""
    h, w = draw(SIDES), draw(SIDES)
    kind = draw(st.sampled_from(["constant", "tile", "gradient", "photo"]))
    if kind == "constant":
        return np.full((h, w, 3), draw(st.tuples(*[st.integers(0, 255)] * 3)), np.uint8)
    if kind == "tile":
        side = draw(st.integers(1, 32))
        tile = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(0, 256, (side, side, 3), np.uint8)
        return np.tile(tile, (-(-h // side), -(-w // side), 1))[:h, :w]
    if kind == "gradient":
        start, stop = draw(st.integers(0, 255)), draw(st.integers(0, 255))
        ramp = np.linspace(start, stop, w, dtype=np.float32).astype(np.uint8)
        return np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (h, w, 3)))
    return cv2.resize(ASTRONAUT, (w, h), interpolation=cv2.INTER_AREA if w * h < 512 * 512 else cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as face_detector:
        yield face_detector


def assert_well_formed(faces: list, image: np.ndarray, max_faces: int) -> None:
    assert isinstance(faces, list) and len(faces) <= max_faces
    height, width = image.shape[:2]
    for face in faces:
        x0, y0, x1, y1 = face.box
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert 0.0 <= face.score <= 1.0
        assert np.isfinite(face.landmarks).all() and face.landmarks.shape == (4, 2)
        assert np.isfinite(face.matrix).all() and face.matrix.shape == (2, 3)
        assert face.aligned.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3) and face.aligned.dtype == np.uint8


@PROPERTY
@given(image=images())
@example(image=SMALLEST)
@example(image=LARGEST)
def test_detect_any_image_returns_a_list(detector, image):
    assert_well_formed(detector.detect(image), image, detector.max_faces)


@PROPERTY
@given(image=images())
@example(image=SMALLEST)
@example(image=LARGEST)
def test_load_then_detect_returns_a_list_or_says_too_small(detector, image):
    """The app's path: `load_image` refuses images under 8 px a side by name and downscales large ones."""
    if min(image.shape[:2]) < MIN_SIDE:
        with pytest.raises(ImageError, match="Image too small"):
            load_image(image)
        return
    loaded = load_image(image)
    assert max(loaded.shape[:2]) <= MAX_SIDE
    assert_well_formed(detector.detect(loaded), loaded, detector.max_faces)


@PROPERTY
@given(crop=images(), count=st.integers(1, 3))
def test_prepare_gives_finite_tensors_of_the_card_shape(crop, count):
    for gray in (False, True):
        faces = np.stack([cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if gray else crop] * count)
        for name in list_models():
            card = get_card(name)
            tensor = prepare(faces, card)
            assert tuple(tensor.shape) == (count, card.channels, *card.input_size)
            assert tensor.dtype.is_floating_point and bool(tensor.isfinite().all())


COORDINATES = st.floats(-10_000, 10_000, allow_nan=False)


@PROPERTY
@given(
    angle=st.floats(-np.pi, np.pi),
    scale=st.floats(0.05, 50),
    shift=st.tuples(COORDINATES, COORDINATES),
    size=st.integers(8, 256),
)
def test_align_face_undoes_any_similarity(angle, scale, shift, size):
    """Key points that are a rotated, scaled and shifted `TEMPLATE` land back on it in the crop."""
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = TEMPLATE * size @ rotation.T + np.array(shift)
    crop, matrix = align_face(ASTRONAUT, landmarks, size)
    assert crop.shape == (size, size, 3) and crop.dtype == np.uint8
    mapped = np.hstack([landmarks, np.ones((4, 1))]) @ matrix.T
    np.testing.assert_allclose(mapped, TEMPLATE * size, atol=0.05)


@PROPERTY
@given(landmarks=st.lists(st.tuples(COORDINATES, COORDINATES), min_size=4, max_size=4))
def test_align_face_takes_any_key_points(landmarks):
    """Any four finite key points give a crop and a finite transform, or a `ValueError` when they (nearly) coincide."""
    points = np.array(landmarks)
    try:
        crop, matrix = align_face(ASTRONAUT, points, 64)
    except ValueError as error:
        assert "Degenerate" in str(error) and ((points - points.mean(axis=0)) ** 2).sum() <= 1e-12
        return
    assert crop.shape == (64, 64, 3) and np.isfinite(matrix).all()
