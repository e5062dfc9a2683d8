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
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import ThreadpoolController

from data_registry.schema import Descriptors, Margin
from models.bundle import MODEL_FILE, BundleMetadata, load_metadata
from models.calibration import Mode, OperatingPoints, birads_for
from models.descriptors import TERM_GROUPS, describe_terms, descriptors_from_features
from models.exceptions import InferenceInputError, MaskError
from models.fusion import FusionModel
from models.heap import keep_freed_memory
from models.inference import LesionOutput, OnnxLesionModel
from models.verdict import governing_note, lesion_at_click, release_statement, worded

MARGIN_TERMS = tuple(m.value for m in Margin if m is not Margin.CIRCUMSCRIBED)
DESCRIPTOR_TERMS: tuple[str, ...] = tuple(TERM_GROUPS)
"""The five lexicon descriptors of a report, in report order."""


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


def descriptors_from_rules(
    image: np.ndarray,
    mask: np.ndarray,
    features: Mapping[str, float] | None = None,
    terms: Collection[str] = DESCRIPTOR_TERMS,
) -> dict[str, Any]:
    """The lexicon rules' ``terms`` on a predicted mask (from its already computed ``features``
    when given, else computing only what those terms read); empty when the mask is too small to
    describe."""
    try:
        if features is not None:
            described = descriptors_from_features(dict(features)).model_dump(mode="json")
            return {term: described[term] for term in terms}
        return describe_terms(image, mask, terms)
    except MaskError:
        return {}


def combine_descriptors(
    image: np.ndarray,
    output: LesionOutput,
    sources: Mapping[str, str],
) -> Descriptors:
    """Each descriptor from its chosen source (``heads`` or ``rules``)."""
    learned = descriptors_from_heads(output.descriptor_probs)
    wanted = [name for name in DESCRIPTOR_TERMS if sources.get(name, "rules") == "rules"]
    rules = (
        descriptors_from_rules(image, output.outline_mask, output.features, wanted)
        if wanted
        else {}
    )
    chosen = {name: rules[name] if name in rules else learned[name] for name in DESCRIPTOR_TERMS}
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
    timings: dict[str, float] = field(default_factory=dict)
    """Milliseconds per stage: the network's (``preprocess``, ``network``, ``postprocess``),
    then ``descriptors`` and ``report``."""


class LesionAnalyser:
    """A loaded bundle, ready to analyse clicks.

    Loading one also sets this process's malloc to keep freed memory for the next lesion
    (:func:`models.heap.keep_freed_memory`).

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
        fusion = self.metadata.fusion
        self.fusion = None if fusion is None else FusionModel.from_dict(fusion)
        self._blas = ThreadpoolController()
        keep_freed_memory()

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
        # numpy's BLAS (the descriptors' Gaussian filters) on this thread only: its own worker
        # threads spin after each product and took a core from the network's onnxruntime threads
        # (network p50 6.3 ms with one BLAS thread, 10.1 ms without, back to back on 2 cores)
        with self._blas.limit(limits=1, user_api="blas"):
            return self._analyze(image, seed, Mode(mode), case_id)

    def _analyze(self, image: np.ndarray, seed: Sequence[float], mode: Mode, case_id: str):
        start = time.perf_counter()
        try:
            finite = len(seed) == 2 and all(math.isfinite(float(v)) for v in seed)
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise InferenceInputError(f"seed must be two finite numbers (x, y), got {seed!r}")
        output = self.model.analyze(image, seed)
        if self.fusion is not None:  # the network's logit fused with its outline's features
            fused = time.perf_counter()
            output = self.fusion.apply(image, output)
            output.timings["fusion"] = (time.perf_counter() - fused) * 1000.0
        probability = self.probability(output.malignancy_logit)
        timings = {k: v for k, v in output.timings.items() if k != "total"}
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
            described = time.perf_counter()
            descriptors = combine_descriptors(image, output, self.metadata.descriptor_sources)
            timings["descriptors"] = (time.perf_counter() - described) * 1000.0
            verdict = {
                "malignancy_probability": round(probability, 6),
                "suggestion": worded(call),
                "birads": birads,
                "birads_note": governing_note(call, birads, probability, mode.value, threshold),
                "descriptors": descriptors.model_dump(mode="json"),
            }
        reported = time.perf_counter()
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
        timings["report"] = (time.perf_counter() - reported) * 1000.0
        return LesionAnalysis(
            report=report, mask=output.mask, output=output, probability=probability, timings=timings
        )
