"""Image loading, MediaPipe face detection and alignment on real images (skimage's astronaut and friends)."""

from __future__ import annotations

import io
import struct
import threading
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from fer_demo import faces as faces_module
from fer_demo.faces import (
    ALIGNED_SIZE,
    MAX_SIDE,
    TEMPLATE,
    Face,
    FaceDetector,
    ImageError,
    align_face,
    crop_to_image,
    load_image,
)
from tests.conftest import encode

ASTRONAUT_FACE = (150, 40, 290, 190)
"""Region (x0, y0, x1, y1) that holds the astronaut's face, checked by eye."""


@pytest.fixture(scope="module")
def detector():
    with FaceDetector() as face_detector:
        yield face_detector


def crop_points(face: Face) -> np.ndarray:
    """The face's landmarks mapped into its aligned crop."""
    return np.hstack([face.landmarks, np.ones((4, 1))]) @ face.matrix.T


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REPLICATE)


def three_faces(astronaut: np.ndarray) -> np.ndarray:
    """Three copies of the astronaut's head (large, mirrored, small) side by side on a gray canvas."""
    head = astronaut[30:210, 130:320]
    canvas = np.full((500, 900, 3), 128, np.uint8)
    x = 20
    for scale, mirror in ((1.4, False), (1.0, True), (0.7, False)):
        copy = cv2.resize(head[:, ::-1] if mirror else head, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        canvas[40 : 40 + copy.shape[0], x : x + copy.shape[1]] = copy
        x += copy.shape[1] + 30
    return canvas


def png_claiming_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR (with a correct CRC) claims another size."""
    png = bytearray(encode(Image.new("L", (10, 10)), "PNG"))
    png[16:24] = struct.pack(">II", width, height)
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])))
    return bytes(png)


# Detection and alignment


def test_astronaut_has_one_aligned_face(detector, astronaut):
    found = detector.detect(astronaut)
    assert len(found) == 1
    face = found[0]
    x0, y0, x1, y1 = face.box
    assert ASTRONAUT_FACE[0] <= x0 < x1 <= ASTRONAUT_FACE[2] and ASTRONAUT_FACE[1] <= y0 < y1 <= ASTRONAUT_FACE[3]
    assert 80 < x1 - x0 < 140 and face.score > 0.8
    assert face.landmarks[0, 0] < face.landmarks[1, 0], "image-left eye comes first"
    assert face.aligned.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3) and face.aligned.dtype == np.uint8
    assert face.matrix.shape == (2, 3) and face.matrix.dtype == np.float64
    points = crop_points(face)
    assert abs(points[0, 1] - points[1, 1]) < 4
    assert np.abs(points - TEMPLATE * ALIGNED_SIZE).max() < 6
    assert repr(face) == f"Face(box=[{x0:.0f}, {y0:.0f}, {x1:.0f}, {y1:.0f}], score={face.score:.2f})"


def roll(face: Face) -> float:
    """Rotation of the image -> crop transform in degrees (counter-clockwise as cv2.getRotationMatrix2D)."""
    return float(np.degrees(np.arctan2(-face.matrix[1, 0], face.matrix[0, 0])))


@pytest.mark.parametrize("degrees", [25, -25])
def test_alignment_removes_roll(detector, astronaut, degrees):
    found = detector.detect(rotate(astronaut, degrees))
    assert len(found) == 1
    points = crop_points(found[0])
    assert abs(points[0, 1] - points[1, 1]) < 4
    assert np.abs(points - TEMPLATE * ALIGNED_SIZE).max() < 8
    upright = detector.detect(astronaut)[0]
    assert abs(roll(upright) - roll(found[0]) - degrees) < 3, "the alignment turns the face back by the rotation"


def test_aligned_crop_matches_upright_crop(detector, astronaut):
    upright = detector.detect(astronaut)[0].aligned.astype(float)
    rotated = detector.detect(rotate(astronaut, 25))[0].aligned.astype(float)
    assert np.abs(upright - rotated).mean() < 20


def test_several_faces_sorted_largest_first(detector, astronaut):
    image = three_faces(astronaut)
    found = detector.detect(image)
    assert len(found) == 3
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in found]
    assert areas == sorted(areas, reverse=True)
    assert [f.box[0] for f in found] == sorted(f.box[0] for f in found), "the largest copy is the leftmost"
    with FaceDetector(max_faces=2) as two:
        capped = two.detect(image)
    assert len(capped) == 2
    np.testing.assert_allclose(capped[0].box, found[0].box)
    np.testing.assert_allclose(capped[1].box, found[1].box)


def test_min_face_size_drops_small_faces(astronaut):
    with FaceDetector(min_face_size=90) as picky:
        found = picky.detect(three_faces(astronaut))
    assert len(found) == 2


def test_close_up_face(detector, astronaut):
    found = detector.detect(np.ascontiguousarray(astronaut[75:175, 175:275]))
    assert len(found) == 1
    assert abs(crop_points(found[0])[0, 1] - crop_points(found[0])[1, 1]) < 5


def test_small_face_in_large_image(detector, astronaut):
    canvas = np.full((1200, 1600, 3), 90, np.uint8)
    canvas[700:880, 1100:1290] = cv2.resize(astronaut[30:210, 130:320], (190, 180))
    found = detector.detect(canvas)
    assert len(found) == 1
    assert 1100 < found[0].box[0] < found[0].box[2] < 1300


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(np.dstack([np.tile(np.linspace(0, 255, 640, dtype=np.uint8), (480, 1))] * 3), id="gradient"),
        pytest.param(np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8), id="noise"),
        pytest.param(data.coffee(), id="coffee"),
        pytest.param(data.chelsea(), id="cat"),
    ],
)
def test_no_face(detector, image):
    assert detector.detect(image) == []


@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (8, 8), (23, 23), (1, 500), (30, 2000), (4000, 4000)])
def test_any_size_returns_a_list(detector, shape):
    assert detector.detect(np.zeros((*shape, 3), np.uint8)) == []


def test_tiny_images_reach_mediapipe():
    with FaceDetector(min_face_size=1) as eager:
        for side in (1, 2, 5, 16):
            assert eager.detect(np.full((side, side, 3), 200, np.uint8)) == []


def test_detect_rejects_non_rgb(detector):
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        detector.detect(np.zeros((32, 32, 3), np.float32))


def test_closed_detector_refuses(astronaut):
    face_detector = FaceDetector()
    face_detector.close()
    face_detector.close()
    with pytest.raises(RuntimeError, match="closed"):
        face_detector.detect(astronaut)


def test_thread_safe(detector, astronaut):
    reference = detector.detect(astronaut)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(detector.detect(astronaut))
        except Exception as error:  # collected and reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(results) == 20
    for found in results:
        assert len(found) == 1
        np.testing.assert_array_equal(found[0].box, reference[0].box)
        np.testing.assert_array_equal(found[0].landmarks, reference[0].landmarks)
        np.testing.assert_array_equal(found[0].aligned, reference[0].aligned)


def test_align_face_recovers_a_known_similarity():
    image = data.astronaut()
    angle, scale, shift = np.radians(20), 1.7, np.array([40.0, 25.0])
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = TEMPLATE * 64 @ rotation.T + shift
    crop, matrix = align_face(image, landmarks, 64)
    assert crop.shape == (64, 64, 3) and crop.dtype == np.uint8
    mapped = np.hstack([landmarks, np.ones((4, 1))]) @ matrix.T
    np.testing.assert_allclose(mapped, TEMPLATE * 64, atol=1e-3)
    back = crop_to_image(matrix)
    np.testing.assert_allclose(np.hstack([mapped, np.ones((4, 1))]) @ back.T, landmarks, atol=1e-3)


def test_align_face_falls_back_when_opencv_gives_up(monkeypatch):
    landmarks = TEMPLATE * 100 + 30
    expected = align_face(data.astronaut(), landmarks, 100)[1]
    monkeypatch.setattr(faces_module.cv2, "estimateAffinePartial2D", lambda *args, **kwargs: (None, None))
    _, matrix = align_face(data.astronaut(), landmarks, 100)
    np.testing.assert_allclose(matrix, expected, atol=1e-4)
    with pytest.raises(ValueError, match="Degenerate"):
        align_face(data.astronaut(), np.full((4, 2), 50.0), 100)


def test_align_face_rejects_bad_landmarks():
    with pytest.raises(ValueError, match="landmarks"):
        align_face(data.astronaut(), np.zeros((5, 2)), 64)
    with pytest.raises(ValueError, match="landmarks"):
        align_face(data.astronaut(), np.full((4, 2), np.nan), 64)


def test_crop_to_image_maps_heatmap_back(detector, astronaut):
    face = detector.detect(astronaut)[0]
    back = crop_to_image(face.matrix)
    centre = back @ np.array([ALIGNED_SIZE / 2, ALIGNED_SIZE / 2, 1.0])
    x0, y0, x1, y1 = face.box
    assert x0 < centre[0] < x1 and y0 < centre[1] < y1


# Image loading


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_load_from_path_bytes_pil_and_array(tmp_path, astronaut, fmt):
    path = tmp_path / f"astronaut.{fmt.lower()}"
    Image.fromarray(astronaut).save(path, fmt)
    tolerance = 0 if fmt == "PNG" else 8
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        image = load_image(source)
        assert image.shape == astronaut.shape and image.dtype == np.uint8
        assert image.flags.c_contiguous and image.flags.writeable
        assert np.abs(image.astype(int) - astronaut).mean() <= tolerance
    mirrored = load_image(astronaut[:, ::-1])
    np.testing.assert_array_equal(mirrored, astronaut[:, ::-1])
    assert mirrored.flags.c_contiguous and not np.shares_memory(load_image(astronaut), astronaut)


def test_grayscale(astronaut, detector):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    for source in (gray, gray[..., None], encode(gray, "PNG")):
        image = load_image(source)
        assert image.shape == (*gray.shape, 3)
        np.testing.assert_array_equal(image[..., 1], gray)
    assert len(detector.detect(load_image(gray))) == 1


def test_rgba_and_la_composite_on_white(astronaut):
    rgba = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    rgba[:100, :100, 3] = 0
    rgba[100:200, :100, 3] = 128
    for source in (rgba, encode(rgba, "PNG")):
        image = load_image(source)
        assert (image[:100, :100] == 255).all()
        np.testing.assert_array_equal(image[200:], astronaut[200:])
        expected = np.rint(astronaut[100:200, :100] * (128 / 255) + 255 * (127 / 255))
        assert np.abs(image[100:200, :100] - expected).max() <= 1
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    la = np.dstack([gray, np.where(np.arange(512) < 256, 0, 255).astype(np.uint8)[None, :].repeat(512, 0)])
    for source in (la, encode(Image.fromarray(la, "LA"), "PNG")):
        image = load_image(source)
        assert (image[:, :256] == 255).all()
        np.testing.assert_array_equal(image[:, 256:, 0], gray[:, 256:])


def test_palette_images(astronaut):
    palette = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    image = load_image(encode(palette, "PNG"))
    assert image.shape == astronaut.shape and np.abs(image.astype(int) - astronaut).mean() < 8
    transparent = Image.new("P", (16, 16), 1)
    transparent.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    transparent.putpixel((0, 0), 0)
    image = load_image(encode(transparent, "PNG", transparency=0))
    assert tuple(image[0, 0]) == (255, 255, 255) and tuple(image[5, 5]) == (10, 200, 30)


def test_cmyk_jpeg(astronaut):
    image = load_image(encode(Image.fromarray(astronaut).convert("CMYK"), "JPEG", quality=95))
    assert image.shape == astronaut.shape and np.abs(image.astype(int) - astronaut).mean() < 8


def test_16_bit_png_is_scaled(astronaut):
    gray = cv2.cvtColor(astronaut, cv2.COLOR_RGB2GRAY)
    png = encode(Image.fromarray(gray.astype(np.uint16) * 257), "PNG")
    assert Image.open(io.BytesIO(png)).mode == "I;16"
    image = load_image(png)
    np.testing.assert_array_equal(image[..., 0], gray)
    np.testing.assert_array_equal(load_image(gray.astype(np.uint16) * 257)[..., 2], gray)
    np.testing.assert_array_equal(load_image(Image.fromarray(gray.astype(np.int32), "I"))[..., 0], gray)


def test_float_and_bool_arrays(astronaut):
    image = load_image(astronaut / 255.0)
    np.testing.assert_array_equal(image, astronaut)
    mask = np.zeros((20, 30), bool)
    mask[5:10] = True
    image = load_image(mask)
    assert image[7, 0, 0] == 255 and image[0, 0, 0] == 0


@pytest.mark.parametrize("orientation, turns", [(6, 1), (8, -1), (3, 2)])
def test_exif_orientation(detector, astronaut, orientation, turns):
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(np.rot90(astronaut, turns))
    jpeg = encode(stored, "JPEG", quality=95, exif=exif)
    image = load_image(jpeg)
    assert image.shape == astronaut.shape
    assert np.abs(image.astype(int) - astronaut).mean() < 6
    assert len(detector.detect(image)) == 1


def test_animated_gif_gives_first_frame():
    frames = [Image.new("RGB", (32, 24), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    image = load_image(buffer.getvalue())
    assert image.shape == (24, 32, 3)
    assert (image == (255, 0, 0)).all()


def test_large_image_is_downscaled(tmp_path, astronaut):
    big = cv2.resize(astronaut, (4000, 3000), interpolation=cv2.INTER_LINEAR)
    assert load_image(big).shape == (1440, MAX_SIDE, 3)
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=90)
    assert load_image(path).shape == (1440, MAX_SIDE, 3)
    assert load_image(big, max_side=None).shape == big.shape
    assert load_image(np.zeros((12, 4000, 3), np.uint8)).shape == (6, MAX_SIDE, 3)


def text_bytes() -> bytes:
    return b"name,score\nalice,1\n"


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("face.txt", "not a face")
    return buffer.getvalue()


JPEG = encode(data.astronaut(), "JPEG")
PNG = encode(data.astronaut(), "PNG")


@pytest.mark.parametrize(
    "payload, message",
    [
        pytest.param(text_bytes(), "Not an image file: the data looks like a text file", id="text"),
        pytest.param(b"", "Not an image file: the file is empty (0 bytes)", id="empty"),
        pytest.param(JPEG[: len(JPEG) // 2], "Image is truncated or corrupt: image file is truncated", id="cut-jpeg"),
        pytest.param(PNG[: len(PNG) // 2], "Image is truncated or corrupt", id="cut-png"),
        pytest.param(b"\x13\x37" * 8 + PNG[16:], f"could not decode {len(PNG):,} bytes", id="garbage-header"),
        pytest.param(encode(Image.new("RGB", (1, 1)), "PNG"), "Image too small: 1x1 pixels (minimum 8x8)", id="1x1"),
        pytest.param(encode(Image.new("RGB", (40, 7)), "PNG"), "Image too small: 40x7 pixels", id="40x7"),
        pytest.param(
            png_claiming_size(10_000, 6_000),
            "Image too large: 60,000,000 pixels exceeds the 50,000,000 pixel limit",
            id="60-megapixel",
        ),
        pytest.param(png_claiming_size(20_000, 20_000), "Image too large: 400,000,000 pixels", id="400-megapixel"),
        pytest.param(zip_bytes(), "Not an image file: the data looks like a ZIP archive", id="zip"),
        pytest.param(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "looks like a PDF document", id="pdf"),
        pytest.param(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64), "HEIC/HEIF", id="heic"),
    ],
)
def test_bad_input_raises_image_error(tmp_path, payload, message):
    path = tmp_path / "upload.jpg"
    path.write_bytes(payload)
    for source in (payload, path):
        with pytest.raises(ImageError) as caught:
            load_image(source)
        assert message in str(caught.value)


def test_real_over_limit_png(tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (10_000, 6_000)).save(path)
    with pytest.raises(ImageError, match="60,000,000 pixels exceeds"):
        load_image(path)


@pytest.mark.parametrize(
    "source, message",
    [
        (None, "No image given"),
        (42, "Unsupported image source of type int"),
        (np.zeros((8, 8, 5), np.uint8), "Unsupported array shape"),
        (np.zeros(10, np.uint8), "Unsupported array shape"),
        (np.array([["a"] * 8] * 8), "Unsupported array dtype"),
        (np.zeros((2, 2, 3), np.uint8), "Image too small: 2x2"),
    ],
)
def test_bad_source_types(source, message):
    with pytest.raises(ImageError, match=message):
        load_image(source)


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(ImageError, match="File not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_image_error_is_value_error():
    assert issubclass(ImageError, ValueError)
