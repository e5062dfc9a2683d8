"""Regression: a barely trained network's mask must not crash training, packaging or analysis.

After one epoch on a small run (3 phantom sites x 40 cases, ``train-central --epochs 1``) the
predicted masks are scattered pixels. The lexicon rules then found no outline and
``max(contours)`` raised ``ValueError: max() arg is an empty sequence``, a traceback out of
``train-central``. Such a mask is now "too small to describe" (``MaskError``), which the analysis
already turns into "no rule descriptors".
"""

from __future__ import annotations

import numpy as np
import pytest

from models.analysis import descriptors_from_rules
from models.descriptors import describe
from models.exceptions import MaskError


def _scattered_mask(shape=(96, 128), step=3) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[10:40:step, 10:40:step] = True  # 100 isolated pixels: enough pixels, no region
    return mask


def test_scattered_mask_pixels_are_too_small_to_describe_not_a_crash():
    image = (np.random.default_rng(0).random((96, 128)) * 255).astype(np.uint8)
    with pytest.raises(MaskError):
        describe(image, _scattered_mask())
    assert descriptors_from_rules(image, _scattered_mask()) == {}
    thin = np.zeros((96, 128), bool)
    thin[40, 10:90] = True  # a one-pixel line: 80 pixels, no outline at the 0.5 level
    with pytest.raises(MaskError):
        describe(image, thin)
    blob = _scattered_mask()
    blob[50:60, 50:62] = True  # a real region among the specks is still described
    assert descriptors_from_rules(image, blob)["shape"] in {"oval", "round", "irregular"}
