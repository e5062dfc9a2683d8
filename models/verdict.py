"""What the console may say about a click: whether it found a lesion, how it words its
suggestion, which of suggestion and BI-RADS category governs, and the model's release status.

No verdict without a lesion: :func:`lesion_at_click` decides whether the predicted mask is a
plausible lesion under the click; when it is not, the report carries no probability, suggestion
or category, and says :data:`NO_LESION`.

Plausibility bounds, from the radiologists' masks of the three real sites in ``../shared/data``
(2,181 lesion masks of BUSI, BUS-BRA and BrEaST-Lesions_USG; images at most 384 px on their
longer side), as a share of the image's area: smallest 0.21 %, 0.5th percentile 0.50 %, median
5.9 %, 99th percentile 38.8 %, largest 57.5 %. A mask below :data:`MIN_AREA_FRACTION` (about half
the smallest real lesion) or above :data:`MAX_AREA_FRACTION` (about 1.2 times the largest) is
not taken for a lesion. Relative bounds, because a console's images may be larger or smaller
than these. Light: numpy only (the console imports it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_AREA_FRACTION = 0.001
"""Smallest plausible lesion, as a share of the image (real masks: smallest 0.0021)."""
MAX_AREA_FRACTION = 0.70
"""Largest plausible lesion, as a share of the image (real masks: largest 0.575)."""
CLICK_TOLERANCE_PX = 1
"""The mask must cover the click or a pixel this close to it (a rounded sub-pixel click)."""
NO_LESION = "no lesion found at the click"
SUGGESTIONS = {"benign": "possibly benign", "malignant": "possibly malignant"}
"""The mode's call, worded as what it is: a suggestion, never a diagnosis."""
SIGNED = "signed-release"
CANDIDATE = "unreleased-candidate"
CANDIDATE_STATEMENT = "unreleased candidate: not for clinical use"

BIRADS_MEANING = {
    "3": "probably benign (likelihood of malignancy at most 2 %), for which the ACR recommends "
    "short-interval follow-up rather than biopsy",
    "4": "suspicious (likelihood of malignancy above 2 % and below 95 %), for which the ACR "
    "recommends tissue diagnosis (biopsy)",
    "4A": "suspicious, low suspicion (likelihood of malignancy above 2 % to 10 %), for which the "
    "ACR recommends tissue diagnosis (biopsy)",
    "4B": "suspicious, moderate suspicion (above 10 % to 50 %), for which the ACR recommends "
    "tissue diagnosis (biopsy)",
    "4C": "suspicious, high suspicion (above 50 % to below 95 %), for which the ACR recommends "
    "tissue diagnosis (biopsy)",
    "5": "highly suggestive of malignancy (95 % or more), for which the ACR recommends tissue "
    "diagnosis (biopsy)",
}
"""ACR BI-RADS (5th edition) assessment categories as the report explains them."""


@dataclass(frozen=True)
class LesionCheck:
    """Whether the mask is a plausible lesion at the click.

    Attributes:
        found: True when it is.
        area_fraction: the mask's share of the image.
        reason: why not (None when found).
    """

    found: bool
    area_fraction: float
    reason: str | None = None

    @property
    def finding(self) -> str:
        """One line for the report."""
        return "lesion found at the click" if self.found else f"{NO_LESION}: {self.reason}"


def lesion_at_click(mask: np.ndarray, seed: Sequence[float]) -> LesionCheck:
    """Decide whether ``mask`` is a plausible lesion under the click ``seed`` (x, y).

    Args:
        mask: the predicted lesion mask (non-zero = lesion), 2-D.
        seed: the click (x, y) in pixels.

    Returns:
        The check: not found when the mask is empty, misses the click, or is implausibly
        small or large for a lesion.
    """
    lesion = np.asarray(mask) != 0
    area = int(lesion.sum())
    fraction = area / lesion.size if lesion.size else 0.0
    if area == 0:
        return LesionCheck(False, 0.0, "the segmentation is empty")
    x, y = round(float(seed[0])), round(float(seed[1]))
    r = CLICK_TOLERANCE_PX
    near = lesion[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1]
    if not near.any():
        return LesionCheck(False, fraction, "the segmented region does not contain the click")
    if fraction < MIN_AREA_FRACTION:
        return LesionCheck(
            False,
            fraction,
            f"the segmented region ({area} px, {100 * fraction:.2f} % of the image) is smaller "
            f"than any plausible lesion (at least {100 * MIN_AREA_FRACTION:.1f} %)",
        )
    if fraction > MAX_AREA_FRACTION:
        return LesionCheck(
            False,
            fraction,
            f"the segmented region covers {100 * fraction:.0f} % of the image, more than any "
            f"plausible lesion (at most {100 * MAX_AREA_FRACTION:.0f} %)",
        )
    return LesionCheck(True, fraction)


def worded(suggestion: str) -> str:
    """``benign``/``malignant`` as the report words them (``possibly …``)."""
    return SUGGESTIONS[suggestion]


def governing_note(
    suggestion: str, birads: str, probability: float, mode: str, threshold: float
) -> str | None:
    """One sentence saying which governs when the mode's suggestion and the BI-RADS band seem
    to disagree (a benign call next to category 4 or 5, a malignant call next to category 3).

    The ACR's categories carry the management recommendation (category 4: suspicious, biopsy
    recommended), so the category governs; the suggestion only compares the probability with
    the mode's threshold.

    Args:
        suggestion: ``benign`` or ``malignant``.
        birads: the suggested category (``3``, ``4A``, …).
        probability: the calibrated probability of malignancy.
        mode: the operating mode's name.
        threshold: the mode's threshold.

    Returns:
        The sentence, or None when they agree.
    """
    suspicious = birads.startswith("4") or birads == "5"
    if suggestion == "benign" and suspicious:
        side = "below"
    elif suggestion == "malignant" and birads == "3":
        side = "at or above"
    else:
        return None
    return (
        f"The BI-RADS category governs: {birads} means {BIRADS_MEANING[birads]}, and the "
        f'category is what decides clinical management, while "{worded(suggestion)}" only says '
        f"that the probability ({100 * probability:.1f} %) is {side} the {mode} mode's threshold "
        f"({100 * threshold:.1f} %)."
    )


def release_statement(release_version: str | None) -> tuple[str, str]:
    """The model's release status and the sentence the report shows.

    Args:
        release_version: the version of the signed release the model was installed from and
            verified against (None: a bundle analysed directly, e.g. a candidate).

    Returns:
        ``(status, statement)``: ``signed-release`` with ``signed release X``, or
        ``unreleased-candidate`` with ``unreleased candidate: not for clinical use``.
    """
    if release_version is None:
        return CANDIDATE, CANDIDATE_STATEMENT
    return SIGNED, f"signed release {release_version}"
