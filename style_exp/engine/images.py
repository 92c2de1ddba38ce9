"""Reading, resizing and writing images; everything in between is float32 RGB in 0..255."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from style_exp.spec.errors import UserError

# Photographs of several hundred megapixels are legitimate inputs here; they are
# decoded once and downscaled straight away. Past this we refuse with a clear error.
MAX_PIXELS = 1_000_000_000
# Every side of a working image is at least this: the TV loss differences neighbours, so
# a 1 px side leaves it nothing to average (NaN). A 3000x20 photo at size=64 becomes 64x2.
MIN_SIDE = 2
TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


class ImageError(UserError):
    """An input image is missing, unreadable or unusable; ``where`` names the file."""


def load_image(path: str | os.PathLike, longest_side: int | None = None) -> np.ndarray:
    """Any common image file as RGB float32 0..255, upright, optionally downscaled.

    Handles EXIF orientation, grayscale, palette, alpha (composited on white) and
    16-bit images. JPEGs are decoded at reduced scale when much larger than needed.
    """
    with _opened(path) as image:
        if longest_side is not None:
            image.draft("RGB", (longest_side, longest_side))
        rgb = _to_rgb(ImageOps.exif_transpose(image))
    if min(rgb.shape[:2]) < 1:
        raise ImageError("image is empty", str(path))
    if longest_side is not None:
        rgb = resize_longest(rgb, longest_side)
    return rgb


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as :func:`load_image` turns it upright, read from
    the header alone: how inputs are checked in a blink before anything loads."""
    with _opened(path) as image:
        width, height = image.size
        if image.getexif().get(ExifTags.Base.Orientation) in TRANSPOSING_ORIENTATIONS:
            width, height = height, width
    if min(width, height) < 1:
        raise ImageError("image is empty", str(path))
    return width, height


@contextlib.contextmanager
def _opened(path: str | os.PathLike) -> Iterator[Image.Image]:
    """The opened image file; a missing, unreadable or corrupt one is an ImageError naming it.

    Decoding errors surface while the caller reads pixels, so they are caught here too.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError("image file not found", str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, MAX_PIXELS
            try:
                with Image.open(path) as image:
                    yield image
            finally:
                Image.MAX_IMAGE_PIXELS = previous
    except (UnidentifiedImageError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as error:
        raise ImageError(f"cannot read image: {error}", str(path)) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image, corrupt or truncated? {error}",
                         str(path)) from error


def _to_rgb(image: Image.Image) -> np.ndarray:
    """Decode into an RGB float array whatever the mode (bit depth is scaled to 0..255)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        data = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or data.max() > 255 else 255.0
        gray = np.clip(data * (255.0 / peak), 0, 255)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image, dtype=np.float32), 0, 255)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("RGB"), dtype=np.float32)


def resize_longest(image: np.ndarray, longest_side: int) -> np.ndarray:
    """Resize so the longer side is ``longest_side`` px, keeping the aspect ratio."""
    return resize(image, fitted_size((image.shape[1], image.shape[0]), longest_side))


def fitted_size(size: tuple[int, int], longest_side: int) -> tuple[int, int]:
    """(width, height) scaled so the longer side is ``longest_side``, each at least MIN_SIDE."""
    width, height = size
    scale = longest_side / max(width, height)
    return max(MIN_SIDE, round(width * scale)), max(MIN_SIDE, round(height * scale))


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize to (width, height) with a filter suited to the direction (Lanczos/bicubic)."""
    if (image.shape[1], image.shape[0]) == size:
        return image.astype(np.float32, copy=False)
    shrinking = size[0] < image.shape[1]
    channels = [
        Image.fromarray(image[..., c].astype(np.float32), mode="F").resize(
            size, Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack([np.asarray(c) for c in channels], axis=2), 0, 255)


def pixels_digest(*arrays: np.ndarray) -> str:
    """Which pixels (or mask values) these are, shapes and types included: what keys the
    values a sweep's jobs share in one process (about a millisecond per 256 px image)."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.asarray(array)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes: how runs record exactly which input they used.

    For a directory (of video frames) it hashes every file's name and digest, in
    name order.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for child in sorted(p for p in path.iterdir() if p.is_file()):
            digest.update(f"{child.name}\0{file_sha256(child)}\n".encode())
        return digest.hexdigest()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Round and clip a float image to displayable bytes."""
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def save_image(image: np.ndarray, path: str | os.PathLike) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves half an image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=path.suffix, delete=False) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format=Image.registered_extensions().get(
            path.suffix.lower(), "PNG"))
    os.chmod(tmp.name, 0o644)
    os.replace(tmp.name, path)
    return path
