"""Image loading, face detection (MediaPipe) and similarity alignment of faces to a FER2013-like crop."""

from __future__ import annotations

import io
import logging
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

MAX_PIXELS = 50_000_000
"""Largest image (width x height) that `load_image` accepts."""

MAX_SIDE = 1920
"""`load_image` downscales larger images so that their longer side is this long."""

MIN_SIDE = 8
"""Smallest width or height that `load_image` accepts."""

ALIGNED_SIZE = 128
"""Side of the aligned face crops that `FaceDetector.detect` returns."""

TEMPLATE = np.array(
    [
        [0.3106, 0.4143],
        [0.6927, 0.4024],
        [0.5113, 0.6092],
        [0.5176, 0.7894],
    ]
)
"""(4, 2) key point positions in an aligned crop, in units of the crop side: image-left eye (the subject's right
eye), image-right eye, nose tip, mouth centre. Median `FaceDetector` key points over 475 of the first 500 lossless
FER2013 PublicTest faces (48x48 upsampled to 192x192); `benchmarks/calibrate_template.py` reproduces them. The
eyes are not level on purpose: MediaPipe places the image-left eye slightly lower on FER2013 faces and their mirror
images alike, so aligning photos with the same detector to these raw medians reproduces FER2013's framing."""

Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_OPEN_LOCK = threading.Lock()
_WHITE = 255
_HEIF = "Unsupported image format: HEIC/HEIF photos need a HEIF decoder; save the photo as JPEG or PNG"
_UNSUPPORTED = "Unsupported image format: this installation cannot decode {} images; save the photo as JPEG or PNG"
_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "Not an image file: the data looks like a PDF document"),
    (b"PK\x03\x04", 0, "Not an image file: the data looks like a ZIP archive (or an office document)"),
    (b"ftypheic", 4, _HEIF),
    (b"ftypheix", 4, _HEIF),
    (b"ftypmif1", 4, _HEIF),
    (b"ftypmsf1", 4, _HEIF),
    (b"ftypavif", 4, _UNSUPPORTED.format("AVIF")),
    (b"WEBP", 8, _UNSUPPORTED.format("WebP")),
    (b"ftyp", 4, "Not an image file: the data looks like a video or other ISO media file"),
)


class ImageError(ValueError):
    """The input cannot be used as an image; the message says why in words fit for an end user."""


def _sniff(data: bytes) -> str | None:
    """A specific error message for well-known non-image data, else None."""
    for magic, offset, message in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return message
    head = data[:512]
    if b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            return None
        return "Not an image file: the data looks like a text file"
    return None


def _too_large(pixels: int) -> ImageError:
    return ImageError(f"Image too large: {pixels:,} pixels exceeds the {MAX_PIXELS:,} pixel limit")


def _open_bytes(data: bytes) -> Image.Image:
    if not data:
        raise ImageError("Not an image file: the file is empty (0 bytes)")
    try:
        # The pixel limit must be an error, not a warning; the filter change is process-wide, hence the lock.
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        match = re.search(r"\((\d+) pixels\)", str(error))
        if match:
            raise _too_large(int(match.group(1))) from None
        raise ImageError(f"Image too large: more than {MAX_PIXELS:,} pixels") from None
    except UnidentifiedImageError:
        message = _sniff(data)
        if message is not None:
            raise ImageError(message) from None
        raise ImageError(
            f"Not an image file: could not decode {len(data):,} bytes (cannot identify image file)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise ImageError(f"Image is truncated or corrupt: {error}") from None


def _read_path(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"File not found: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"Not a file: {path} is a directory") from None
    except OSError as error:
        raise ImageError(f"Cannot read {path}: {error.strerror or error}") from None


def _decode(img: Image.Image, draft_side: int | None) -> Image.Image:
    """Load the pixels (first frame) and apply the EXIF orientation; JPEGs may decode at a reduced size."""
    try:
        width, height = img.size
        if width * height > MAX_PIXELS:
            raise _too_large(width * height)
        if draft_side is not None and img.format == "JPEG":
            # Let the JPEG decoder shrink by 1/2, 1/4 or 1/8 while keeping both sides >= draft_side.
            img.draft(None, (draft_side, draft_side))
        img.load()
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise ImageError(f"Image too large: {error}") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as error:
        raise ImageError(f"Image is truncated or corrupt: {error}") from None
    try:
        return ImageOps.exif_transpose(img)
    except Exception as error:  # a malformed EXIF block must not reject otherwise good pixels
        logger.warning("Ignoring unreadable EXIF orientation: %s", error)
        return img


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    """Map a numeric array of any dtype onto 0..255."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint16:
        return (array.astype(np.uint32) * 255 + 32767) // 65535
    data = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    peak = float(data.max()) if data.size else 0.0
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if peak <= 1.0 else 1.0
    elif peak <= 255:
        scale = 1.0
    elif peak <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / peak
    return np.clip(np.rint(data * scale), 0, 255).astype(np.uint8)


def _composite_on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Blend uint8 RGB over white in exact integer arithmetic; uint16 temporaries keep a 50-megapixel image cheap."""
    # (rgb * a + 255 * (255 - a)) / 255 == (255 * 255 - (255 - rgb) * a) / 255, rounded to nearest by + 127.
    blended = np.subtract(_WHITE, rgb, dtype=np.uint16)
    blended *= alpha[..., None]
    np.subtract(_WHITE * _WHITE + _WHITE // 2, blended, out=blended)
    blended //= _WHITE
    return blended.astype(np.uint8)


def _array_to_rgb(array: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1|2|3|4) array of any numeric dtype -> (H, W, 3) uint8 RGB; alpha is composited on white."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise ImageError(f"Unsupported array dtype {array.dtype}: expected numbers")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        gray = _scale_to_uint8(array)
        return np.repeat(gray[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (2, 3, 4):
        raise ImageError(f"Unsupported array shape {array.shape}: expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)")
    pixels = _scale_to_uint8(array)
    if pixels.shape[2] == 2:
        return _composite_on_white(np.repeat(pixels[..., :1], 3, axis=2), pixels[..., 1])
    if pixels.shape[2] == 4:
        return _composite_on_white(pixels[..., :3], pixels[..., 3])
    return pixels


def _pil_to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode.startswith("I") or mode == "F":
        return _array_to_rgb(np.asarray(img))
    if mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in img.info:
        rgba = np.asarray(img.convert("RGBA"))
        return _composite_on_white(rgba[..., :3], rgba[..., 3])
    if mode != "RGB":
        try:
            img = img.convert("RGB")
        except ValueError as error:
            raise ImageError(f"Unsupported colour mode {mode}: {error}") from None
    return np.array(img)


def load_image(source, *, max_side: int | None = MAX_SIDE) -> np.ndarray:
    """Read an image into an upright RGB array.

    Args:
        source: A path (str or Path), the encoded bytes of an image file, a PIL image or a numpy array ((H, W),
            (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA; uint8, uint16, bool or float in [0, 1]).
        max_side: Downscale (keeping the aspect ratio) so that the longer side is at most this; None keeps the size.

    Returns:
        (H, W, 3) uint8 C-contiguous RGB array. EXIF orientation is applied, transparency is composited on white,
        16-bit and float data is scaled to 8 bits, and animations give their first frame.

    Raises:
        ImageError: The source is missing, empty, not an image, truncated or corrupt, in an unsupported format,
            smaller than 8x8 or larger than `MAX_PIXELS`.
    """
    if source is None:
        raise ImageError("No image given")
    if isinstance(source, np.ndarray):
        if source.ndim >= 2 and source.shape[0] * source.shape[1] > MAX_PIXELS:
            raise _too_large(source.shape[0] * source.shape[1])
        rgb = _array_to_rgb(source)
        if rgb is source:
            rgb = source.copy(order="C")
    else:
        draft_side = max_side
        if isinstance(source, (str, Path)):
            img = _open_bytes(_read_path(Path(source)))
        elif isinstance(source, (bytes, bytearray, memoryview)):
            img = _open_bytes(bytes(source))
        elif isinstance(source, Image.Image):
            img, draft_side = source, None
        else:
            raise ImageError(f"Unsupported image source of type {type(source).__name__}")
        rgb = _pil_to_rgb(_decode(img, draft_side))
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"Image too small: {width}x{height} pixels (minimum {MIN_SIDE}x{MIN_SIDE})")
    if max_side is not None and max(height, width) > max_side:
        scale = max_side / max(height, width)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(rgb)


@dataclass(frozen=True, slots=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        box: (4,) float x0, y0, x1, y1 in image pixels (clipped to the image).
        score: Detector confidence in [0, 1].
        landmarks: (4, 2) float image pixels, in `TEMPLATE` order.
        aligned: (S, S, 3) uint8 RGB crop aligned to `TEMPLATE`.
        matrix: (2, 3) float similarity transform from image pixels to crop pixels.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    aligned: np.ndarray
    matrix: np.ndarray

    def __repr__(self) -> str:
        box = ", ".join(f"{v:.0f}" for v in self.box)
        return f"Face(box=[{box}], score={self.score:.2f})"


def _similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Closed-form least-squares similarity (Umeyama) mapping src onto dst, as a (2, 3) matrix."""
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    variance = float((src_c**2).sum())
    if variance <= 1e-12:
        raise ValueError("Degenerate landmarks: all points coincide")
    a = float((src_c * dst_c).sum())
    b = float((src_c[:, 0] * dst_c[:, 1] - src_c[:, 1] * dst_c[:, 0]).sum())
    rotation = np.array([[a, -b], [b, a]]) / variance
    return np.hstack([rotation, (dst_mean - rotation @ src_mean)[:, None]])


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Warp a face so that its key points land on `TEMPLATE` (rotation, uniform scale and translation only).

    Args:
        image: (H, W, 3) uint8 RGB image.
        landmarks: (4, 2) image pixel key points in `TEMPLATE` order.
        size: Side of the square crop.

    Returns:
        (crop, matrix): the (size, size, 3) uint8 crop and the (2, 3) float64 image -> crop transform.

    Raises:
        ValueError: The landmarks are not (4, 2) finite numbers or all coincide.
    """
    src = np.asarray(landmarks, dtype=np.float64)
    if src.shape != TEMPLATE.shape or not np.isfinite(src).all():
        raise ValueError(f"Expected (4, 2) finite landmarks, got {src.shape}")
    dst = TEMPLATE * size
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32), method=cv2.LMEDS)
    if matrix is None or not np.isfinite(matrix).all():
        matrix = _similarity_lstsq(src, dst)
    matrix = matrix.astype(np.float64)
    crop = cv2.warpAffine(
        np.ascontiguousarray(image), matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    return crop, matrix


def crop_to_image(matrix: np.ndarray) -> np.ndarray:
    """Invert an image -> crop `Face.matrix`: the (2, 3) float64 transform from crop pixels to image pixels."""
    return cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter))


@dataclass(frozen=True, slots=True)
class _Candidate:
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    context: bool


class FaceDetector:
    """MediaPipe face detector that returns aligned faces; thread-safe, and every call is independent (no tracking).

    MediaPipe's full-range BlazeFace model (model_selection=1) runs twice on each image: on the image as it is, and
    on a "context" canvas, the image shrunk into the middle of a black square four times its longer side. Alone, the
    full-range model misses faces that fill the frame (35 of 300 FER2013 faces, 65 of 110 NimStim crops) and places
    poor key points on the close-ups it does find; the context pass finds 280 of 300 and 110 of 110 (a mid-gray
    border found only 243 of 300). The short-range model (model_selection=0) also finds close-ups but fires on
    random noise (36 of 240 noise images at score >= 0.5, up to 0.69), while neither full-range pass reported a face
    on 400 noise images, so it is not used. Where both passes find a face, the context pass gives the key points
    of close-ups (box side >= 60% of the image's longer side) and the plain pass those of smaller faces.
    """

    _CONTEXT_SIDE = 192  # longer side of the image on the context canvas (the model's input is 192x192)
    _CONTEXT_PAD = 1.5  # black border on each side of the context canvas, in image sides
    _CLOSE_UP = 0.6  # box side / image side from which the context pass's key points are preferred
    _NMS_IOU = 0.3  # boxes overlapping more than this are one face

    def __init__(self, min_confidence: float = 0.5, max_faces: int = 10, min_face_size: int = 24) -> None:
        """Create the MediaPipe graph.

        Args:
            min_confidence: Smallest detector score kept.
            max_faces: Most faces returned per image (the largest ones).
            min_face_size: Smallest face box side, in image pixels.
        """
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if max_faces < 1 or min_face_size < 1:
            raise ValueError(f"max_faces and min_face_size must be >= 1, got {max_faces} and {min_face_size}")
        self.min_confidence = min_confidence
        self.max_faces = max_faces
        self.min_face_size = min_face_size
        self._lock = threading.Lock()
        self._graph = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence
        )

    def __repr__(self) -> str:
        return (
            f"FaceDetector(min_confidence={self.min_confidence}, max_faces={self.max_faces}, "
            f"min_face_size={self.min_face_size})"
        )

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        """Release the MediaPipe graph; `detect` fails afterwards. Closing twice is fine."""
        with self._lock:
            if self._graph is not None:
                self._graph.close()
                self._graph = None

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find, align and sort the faces in an image.

        Args:
            image: (H, W, 3) uint8 RGB array of any size.

        Returns:
            Faces sorted by box area, largest first, at most `max_faces`; [] when there is none.

        Raises:
            ValueError: `image` is not an (H, W, 3) uint8 array.
            RuntimeError: The detector is closed.
        """
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            shape = getattr(image, "shape", None)
            raise ValueError(f"Expected an (H, W, 3) uint8 RGB array, got {type(image).__name__} {shape}")
        height, width = image.shape[:2]
        if min(height, width) < self.min_face_size:
            return []
        image = np.ascontiguousarray(image)
        context, offset, scale = self._context_canvas(image)
        with self._lock:
            if self._graph is None:
                raise RuntimeError("FaceDetector is closed")
            plain_result = self._graph.process(image)
            context_result = self._graph.process(context)
        candidates = self._candidates(plain_result, image.shape, np.zeros(2), 1.0, False)
        candidates += self._candidates(context_result, context.shape, offset, scale, True)
        faces = []
        for candidate in self._select(candidates, width, height):
            crop, matrix = align_face(image, candidate.landmarks, ALIGNED_SIZE)
            faces.append(Face(candidate.box, candidate.score, candidate.landmarks, crop, matrix))
        return faces

    def _context_canvas(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """The image shrunk to at most `_CONTEXT_SIDE` and centred on a black canvas: (canvas, (x, y) offset, scale)."""
        height, width = image.shape[:2]
        scale = min(1.0, self._CONTEXT_SIDE / max(height, width))
        small = image
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        side = max(small.shape[:2])
        pad = round(self._CONTEXT_PAD * side)
        canvas = np.zeros((side + 2 * pad, side + 2 * pad, 3), np.uint8)
        top, left = pad + (side - small.shape[0]) // 2, pad + (side - small.shape[1]) // 2
        canvas[top : top + small.shape[0], left : left + small.shape[1]] = small
        return canvas, np.array([left, top], dtype=np.float64), scale

    @staticmethod
    def _candidates(
        result, shape: tuple[int, ...], offset: np.ndarray, scale: float, context: bool
    ) -> list[_Candidate]:
        """MediaPipe detections of an image of `shape` as candidates in the coordinates of the original image."""
        size = np.array([shape[1], shape[0]], dtype=np.float64)
        out = []
        for detection in result.detections or []:
            location = detection.location_data
            if len(location.relative_keypoints) < 4:
                continue
            rel = location.relative_bounding_box
            corners = np.array([[rel.xmin, rel.ymin], [rel.xmin + rel.width, rel.ymin + rel.height]]) * size
            points = np.array([[point.x, point.y] for point in location.relative_keypoints[:4]]) * size
            corners = (corners - offset) / scale
            points = (points - offset) / scale
            if np.isfinite(corners).all() and np.isfinite(points).all():
                out.append(_Candidate(corners.reshape(4), float(detection.score[0]), points, context))
        return out

    def _select(self, candidates: list[_Candidate], width: int, height: int) -> list[_Candidate]:
        """Clip boxes, drop small or degenerate faces, keep one candidate per face, sort by area, cap the count."""
        longest = max(width, height)
        usable = []
        for candidate in candidates:
            box = np.clip(candidate.box, 0, [width, height, width, height])
            eye_distance = float(np.linalg.norm(candidate.landmarks[1] - candidate.landmarks[0]))
            if min(box[2] - box[0], box[3] - box[1]) < self.min_face_size or eye_distance < 1.0:
                continue
            usable.append(_Candidate(box, candidate.score, candidate.landmarks, candidate.context))

        def preference(candidate: _Candidate) -> tuple[bool, float]:
            box = candidate.box
            close_up = max(box[2] - box[0], box[3] - box[1]) >= self._CLOSE_UP * longest
            return candidate.context == close_up, candidate.score

        kept: list[_Candidate] = []
        for candidate in sorted(usable, key=preference, reverse=True):
            if all(_iou(candidate.box, other.box) <= self._NMS_IOU for other in kept):
                kept.append(candidate)
        kept.sort(key=lambda c: (c.box[2] - c.box[0]) * (c.box[3] - c.box[1]), reverse=True)
        return kept[: self.max_faces]
