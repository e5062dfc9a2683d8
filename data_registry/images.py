"""Reading a site's image and mask files into 8-bit greyscale arrays, or saying why not.

Ultrasound exports arrive as 8-bit grey, grey stored in RGB/RGBA/palette, or 16-bit containers.
Those that carry plain grey values are normalised; those that would need guessing (real colour,
transparency, 16-bit intensities above 255 that need a window) are refused with a reason code
that intake turns into a quarantine record.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from data_registry.exceptions import ImageError

MIN_SIDE = 16
MAX_SIDE = 4096
_COLOUR_TOLERANCE = 8  # grey stored as colour differs between channels by compression noise only
_COLOUR_FRACTION = 0.01  # share of pixels allowed to be coloured (caliper marks, annotations)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _open_checked(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageError("missing-file", f"{path.name}: no such file")
    if path.stat().st_size == 0:
        raise ImageError("unreadable-image", f"{path.name}: zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("absurd-size", f"{path.name}: {e}") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError("unreadable-image", f"{path.name}: not an image ({e})") from e
    width, height = image.size
    if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
        raise ImageError(
            "absurd-size",
            f"{path.name}: {width}x{height} px, expected each side in {MIN_SIDE}..{MAX_SIDE}",
        )
    try:
        image.load()
    except OSError as e:
        raise ImageError("truncated-image", f"{path.name}: {e}") from e
    return image


def _to_grey(image: Image.Image, name: str) -> np.ndarray:
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image)
        if values.min() < 0 or values.max() > 255:
            raise ImageError(
                "unsupported-image-mode",
                f"{name}: {mode} image with intensities {values.min()}..{values.max()}; "
                "expected 8-bit grey (a 16-bit range needs a window that only the site can set)",
            )
        return values.astype(np.uint8)
    if mode in ("P", "PA", "LA", "RGB", "RGBA"):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.int16)
        if (rgba[..., 3] < 255).any():
            raise ImageError(
                "unsupported-image-mode", f"{name}: {mode} image with transparent pixels"
            )
        rgb = rgba[..., :3]
        spread = rgb.max(axis=-1) - rgb.min(axis=-1)
        coloured = float((spread > _COLOUR_TOLERANCE).mean())
        if coloured > _COLOUR_FRACTION:
            raise ImageError(
                "unsupported-image-mode",
                f"{name}: {mode} image with colour content in {coloured:.1%} of pixels "
                "(Doppler or overlays); expected greyscale B-mode",
            )
        return np.round(rgb.mean(axis=-1)).astype(np.uint8)
    raise ImageError("unsupported-image-mode", f"{name}: image mode {mode} is not supported")


def read_grey(path: Path) -> np.ndarray:
    """Read an image as an 8-bit greyscale array (H, W).

    Raises:
        ImageError: with ``reason`` one of missing-file, unreadable-image, truncated-image,
            absurd-size, unsupported-image-mode.
    """
    with _open_checked(path) as image:
        return _to_grey(image, path.name)


def read_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a lesion mask as a boolean array that must have the image's ``shape`` (H, W)."""
    try:
        grey = read_grey(path)
    except ImageError as e:
        reason = "unreadable-mask" if e.reason != "missing-file" else "missing-file"
        raise ImageError(reason, e.detail) from e
    if grey.shape != shape:
        raise ImageError(
            "mask-size-mismatch",
            f"{path.name}: mask is {grey.shape[1]}x{grey.shape[0]}, image is {shape[1]}x{shape[0]}",
        )
    return grey > 127


def encode_png(array: np.ndarray) -> bytes:
    """Deterministic PNG bytes of a uint8 or bool array."""
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)  # speckle barely compresses
    return buffer.getvalue()


def seed_point(mask: np.ndarray) -> tuple[int, int]:
    """The mask's interior point nearest its centroid, as (x, y).

    Uses the largest connected component and prefers points away from the border (distance
    transform), so a crescent-shaped lesion does not get a seed outside it.
    """
    from scipy import ndimage

    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        raise ValueError("empty mask has no seed point")
    top, left = max(int(ys.min()) - 1, 0), max(int(xs.min()) - 1, 0)
    box = mask[top : int(ys.max()) + 2, left : int(xs.max()) + 2]  # the transforms cost by area
    labels, count = ndimage.label(box)
    sizes = ndimage.sum_labels(box, labels, index=np.arange(1, count + 1))
    largest = labels == (int(np.argmax(sizes)) + 1)
    depth = ndimage.distance_transform_edt(np.pad(largest, 1))[1:-1, 1:-1]
    cy, cx = ndimage.center_of_mass(largest)
    ys, xs = np.nonzero(depth >= max(1.0, 0.5 * depth.max()))
    nearest = int(np.argmin((ys - cy) ** 2 + (xs - cx) ** 2))
    return int(xs[nearest]) + left, int(ys[nearest]) + top
