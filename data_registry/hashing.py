"""Perceptual hashes and near-duplicate grouping within a site.

A 256-bit DCT perceptual hash (imagehash's pHash on a 16x16 grid) survives resizing, small
intensity changes and recompression; two images whose hashes differ in at most
``NEAR_DUPLICATE_BITS`` bits are treated as copies of one acquisition.
"""

from __future__ import annotations

from collections.abc import Sequence

import imagehash
import numpy as np
from PIL import Image

HASH_SIZE = 16
# Of 256 bits. Measured on the shared data: distinct images of BUS-BRA and BrEaST never come
# closer than 70 bits, while BUSI's near copies (other frames of one acquisition, re-cropped or
# annotated) lie at 0-64; 60 keeps a margin to the distinct ones.
NEAR_DUPLICATE_BITS = 60


def perceptual_hash(image: np.ndarray) -> str:
    """Hex pHash of an 8-bit greyscale image."""
    return str(imagehash.phash(Image.fromarray(image), hash_size=HASH_SIZE))


def hash_bits(hashes: Sequence[str]) -> np.ndarray:
    """Unpack hex hashes into a (n, bits) boolean matrix."""
    if not hashes:
        return np.zeros((0, HASH_SIZE * HASH_SIZE), dtype=bool)
    raw = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), dtype=np.uint8)
    return np.unpackbits(raw.reshape(len(hashes), -1), axis=1).astype(bool)


def hamming_matrix(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """Pairwise Hamming distances (n_a, n_b) between two lists of hashes."""
    bits_a = hash_bits(a).astype(np.int32)
    bits_b = hash_bits(b).astype(np.int32)
    # |a xor b| = |a| + |b| - 2 a·b
    return bits_a.sum(1)[:, None] + bits_b.sum(1)[None, :] - 2 * bits_a @ bits_b.T


def near_pairs(hashes: Sequence[str], max_bits: int = NEAR_DUPLICATE_BITS) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes are within ``max_bits``."""
    if len(hashes) < 2:
        return []
    distance = hamming_matrix(hashes, hashes)
    i, j = np.nonzero(np.triu(distance <= max_bits, k=1))
    return list(zip(i.tolist(), j.tolist(), strict=True))


def connected_groups(count: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Union-find over ``pairs``: a group index for each of ``count`` items (smallest member)."""
    parent = list(range(count))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [root(i) for i in range(count)]


# --- near copies of locked test images ------------------------------------------------------
# A locked image must not come back for training as a trivially edited copy: mirrored, cropped
# by a few per cent, padded, shifted, slightly rotated, brighter or darker. One pHash of the
# whole image moves 66-142 bits under such edits. So the vendor hashes every locked image in
# many poses (mirrored or not, rotated by -4/0/+4 degrees, and eleven windows: whole, centred
# 2.5 %/5 % crops, 5 % off one side or one corner), after trimming uniform borders (padding),
# and a hospital hashes each of its images whole and centre-cropped. A case is a copy of a
# locked image when any of its probes lies within COPY_BITS of any pose (an untrimmed whole
# pose and probe cover a contrast stretch that changes what trimming removes). Measured on the
# shared data (``python -m bench.registry --only-copies``, 100 locked images per site): mirror,
# crops of 3-8 % (centred, one side, one corner), 20 px padding, 12x8 px shifts, rotations of
# 2-5 degrees, brightness, gamma, contrast and resizing land within 0-56 bits (all caught); a
# 20x20 px shift reached 80 bits (3 of 300 missed); distinct images of the three sites came no
# closer than 64 bits (0 of 625,700 pairs within 60).
COPY_BITS = 60
_WORK_SIDE = 160  # poses are computed on a copy this size: pHash looks at 64x64 anyway
_ANGLES = (0.0, -4.0, 4.0)
_F = 0.05
_WINDOWS = (
    (0.0, 0.0, 0.0, 0.0),
    (_F / 2, _F / 2, _F / 2, _F / 2),
    (_F, _F, _F, _F),
    (_F, 0.0, 0.0, 0.0),
    (0.0, _F, 0.0, 0.0),
    (0.0, 0.0, _F, 0.0),
    (0.0, 0.0, 0.0, _F),
    (_F, 0.0, _F, 0.0),
    (_F, 0.0, 0.0, _F),
    (0.0, _F, _F, 0.0),
    (0.0, _F, 0.0, _F),
)


def trim_uniform_border(image: np.ndarray, spread: int = 1) -> np.ndarray:
    """Drop border rows and columns of (nearly) one grey value: padding, however wide."""
    wide = image.astype(np.int16)
    rows = np.nonzero(wide.max(axis=1) - wide.min(axis=1) > spread)[0]
    cols = np.nonzero(wide.max(axis=0) - wide.min(axis=0) > spread)[0]
    if rows.size < 16 or cols.size < 16:
        return image
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _working_copy(image: np.ndarray, trim: bool = True) -> np.ndarray:
    trimmed = trim_uniform_border(image) if trim else image
    height, width = trimmed.shape
    scale = _WORK_SIDE / max(height, width)
    if scale >= 1.0:
        return np.ascontiguousarray(trimmed)
    size = (max(round(width * scale), 16), max(round(height * scale), 16))
    return np.asarray(Image.fromarray(trimmed).resize(size, Image.Resampling.LANCZOS))


def _window(image: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    height, width = image.shape
    return image[
        round(height * top) : height - round(height * bottom),
        round(width * left) : width - round(width * right),
    ]


def _phashes(arrays: Sequence[np.ndarray]) -> tuple[str, ...]:
    """:func:`perceptual_hash` of many images at once (the same bits, one DCT call)."""
    import scipy.fftpack

    side = HASH_SIZE * 4  # imagehash's highfreq_factor
    pixels = np.stack(
        [
            np.asarray(
                Image.fromarray(np.ascontiguousarray(a)).resize(
                    (side, side), Image.Resampling.LANCZOS
                )
            )
            for a in arrays
        ]
    ).astype(np.float64)
    low = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=1), axis=2)[:, :HASH_SIZE, :HASH_SIZE]
    median = np.median(low.reshape(len(arrays), -1), axis=1)
    bits = low > median[:, None, None]
    return tuple(np.packbits(b.ravel()).tobytes().hex() for b in bits)


def copy_poses(image: np.ndarray) -> tuple[str, ...]:
    """The locked side: pHashes of an image in every pose a trivial edit could put it in."""
    from scipy import ndimage

    base = _working_copy(image)
    poses: list[np.ndarray] = []
    for mirrored in (base, base[:, ::-1]):
        for angle in _ANGLES:
            turned = (
                mirrored
                if angle == 0.0
                else ndimage.rotate(mirrored, angle, reshape=False, order=1, mode="nearest")
            )
            poses.extend(_window(turned, *w) for w in _WINDOWS)
    whole = _working_copy(image, trim=False)  # for edits that change what trimming removes
    poses.extend((whole, whole[:, ::-1]))
    return _phashes(poses)


def copy_probes(image: np.ndarray) -> tuple[str, ...]:
    """The hospital side: pHashes of an image, trimmed (whole and 5 % cropped) and untrimmed."""
    base = _working_copy(image)
    untrimmed = _working_copy(image, trim=False)  # a contrast stretch that clips
    return _phashes((base, _window(base, *_WINDOWS[2]), untrimmed))


def _packed(hashes: Sequence[str]) -> np.ndarray:
    raw = b"".join(bytes.fromhex(h) for h in hashes)
    return np.frombuffer(raw, dtype=np.uint64).reshape(len(hashes), -1)


def nearest_pose_bits(probes: Sequence[Sequence[str]], poses: Sequence[str]) -> np.ndarray:
    """Per case (one list of probes each), the fewest bits between any probe and any pose."""
    best = np.full(len(probes), HASH_SIZE * HASH_SIZE + 1, dtype=np.int64)
    if not poses or not probes:
        return best
    pose_bits = _packed(poses)
    owner = np.repeat(np.arange(len(probes)), [len(p) for p in probes])
    flat = [h for case in probes for h in case]
    if not flat:
        return best
    probe_bits = _packed(flat)
    chunk = max(1, 1_000_000 // len(poses))  # about 32 MB of XORs at a time
    for start in range(0, len(flat), chunk):
        xor = probe_bits[start : start + chunk, None, :] ^ pose_bits[None, :, :]
        distance = np.bitwise_count(xor).sum(axis=2).min(axis=1)
        np.minimum.at(best, owner[start : start + chunk], distance)
    return best
