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
