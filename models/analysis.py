"""The console's analysis of one clicked lesion, from a model bundle (no torch).

Segmentation and the learned heads come from the ONNX network; the malignancy logit is
calibrated with the bundle's temperature, turned into a BI-RADS suggestion and a benign/malignant
call at the chosen mode's threshold; each descriptor comes from the learned head or from the
mask-and-image rules, whichever agreed better with radiologists on validation.

No verdict without a lesion: when the predicted mask is not a plausible lesion under the click
(:func:`models.verdict.lesion_at_click`), the report has ``lesion_found`` false and no
probability, suggestion, category or descriptors. Every report names the model's release
status (:func:`models.verdict.release_statement`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_registry.schema import Descriptors, Margin
from models.bundle import MODEL_FILE, BundleMetadata, load_metadata
from models.calibration import Mode, OperatingPoints, birads_for
from models.descriptors import describe
from models.exceptions import InferenceInputError, MaskError
from models.inference import LesionOutput, OnnxLesionModel
from models.verdict import governing_note, lesion_at_click, release_statement, worded

MARGIN_TERMS = tuple(m.value for m in Margin if m is not Margin.CIRCUMSCRIBED)


def descriptors_from_heads(probs: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
    """The most probable term of each learned head; margin terms present when p ≥ 0.5."""

    def top(head: str) -> str | None:
        return max(probs[head], key=probs[head].get) if head in probs else None

    margin: tuple[str, ...] = ()
    if "margin" in probs:
        if top("margin") == "circumscribed":
            margin = (Margin.CIRCUMSCRIBED.value,)
        else:
            present = {t: probs.get(f"margin_{t}", {}).get("present", 0.0) for t in MARGIN_TERMS}
            margin = tuple(t for t, p in present.items() if p >= 0.5) or (
                max(present, key=present.get),
            )
    return {
        "shape": top("shape"),
        "orientation": top("orientation"),
        "margin": margin,
        "echo_pattern": top("echo_pattern"),
        "posterior_features": top("posterior_features"),
    }


def descriptors_from_rules(image: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """The lexicon rules on a predicted mask; empty when the mask is too small to describe."""
    try:
        return describe(image, mask).model_dump(mode="json")
    except MaskError:
        return {}


def combine_descriptors(
    image: np.ndarray,
    output: LesionOutput,
    sources: Mapping[str, str],
) -> Descriptors:
    """Each descriptor from its chosen source (``heads`` or ``rules``)."""
    learned = descriptors_from_heads(output.descriptor_probs)
    rules = descriptors_from_rules(image, output.mask) if "rules" in sources.values() else {}
    chosen = {}
    for name in ("shape", "orientation", "margin", "echo_pattern", "posterior_features"):
        source = sources.get(name, "rules")
        chosen[name] = rules.get(name) if source == "rules" and rules else learned[name]
    return Descriptors(**chosen)


@dataclass(frozen=True)
class LesionAnalysis:
    """The console's answer for one click; ``report`` has the ``report.json`` fields.

    ``probability`` is the model's calibrated probability even when no lesion was found (the
    report then shows none); release self-tests compare it.
    """

    report: dict[str, Any]
    mask: np.ndarray
    output: LesionOutput
    probability: float


class LesionAnalyser:
    """A loaded bundle, ready to analyse clicks.

    Args:
        bundle: the model bundle folder.
        num_threads: onnxruntime threads.
        release_version: the signed release this bundle was installed from and verified
            against (None: an unreleased candidate, not for clinical use).

    Raises:
        BundleError: the bundle is incomplete or altered.
        InferenceError: the ONNX model cannot be loaded.
    """

    def __init__(
        self, bundle: Path, num_threads: int = 2, *, release_version: str | None = None
    ) -> None:
        self.bundle = Path(bundle)
        self.release_status, self.release_statement = release_statement(release_version)
        self.metadata: BundleMetadata = load_metadata(self.bundle)
        self.model = OnnxLesionModel(self.bundle / MODEL_FILE, num_threads=num_threads)
        self.points = OperatingPoints.from_dict(self.metadata.operating_points)

    def probability(self, logit: float) -> float:
        """Calibrated probability of malignancy."""
        return 1.0 / (1.0 + math.exp(-logit / self.metadata.temperature))

    def analyze(
        self,
        image: np.ndarray,
        seed: Sequence[float],
        *,
        mode: Mode | str = Mode.HIGH_ACCURACY,
        case_id: str = "case1",
    ) -> LesionAnalysis:
        """Segment, describe and classify the lesion under ``seed`` (x, y).

        Raises:
            InferenceInputError: unusable image or click.
        """
        start = time.perf_counter()
        mode = Mode(mode)
        try:
            finite = len(seed) == 2 and all(math.isfinite(float(v)) for v in seed)
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise InferenceInputError(f"seed must be two finite numbers (x, y), got {seed!r}")
        output = self.model.analyze(image, seed)
        probability = self.probability(output.malignancy_logit)
        check = lesion_at_click(output.mask, seed)
        verdict: dict[str, Any] = {
            "malignancy_probability": None,
            "suggestion": None,
            "birads": None,
            "birads_note": None,
            "descriptors": None,
        }
        if check.found:
            call = self.points.suggest(probability, mode)
            birads = birads_for(probability).value
            threshold = self.points.point(mode).threshold
            descriptors = combine_descriptors(image, output, self.metadata.descriptor_sources)
            verdict = {
                "malignancy_probability": round(probability, 6),
                "suggestion": worded(call),
                "birads": birads,
                "birads_note": governing_note(call, birads, probability, mode.value, threshold),
                "descriptors": descriptors.model_dump(mode="json"),
            }
        report = {
            "case_id": case_id,
            "lesion_found": check.found,
            "finding": check.finding,
            **verdict,
            "mode": mode.value,
            "model_version": self.metadata.version,
            "release_status": self.release_status,
            "release_statement": self.release_statement,
            "latency_ms": round((time.perf_counter() - start) * 1000.0, 2),
        }
        return LesionAnalysis(
            report=report, mask=output.mask, output=output, probability=probability
        )
