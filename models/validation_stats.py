"""Aggregate validation statistics, and the calibration a vendor fits from them alone.

Federated calibration: each hospital analyses its own validation split and keeps the per-case
results to itself. What it hands on is a :class:`ValidationStatistics`:

- per-class histograms of the malignancy logit in fixed bins every hospital shares
  (:class:`models.calibration.LogitBins`);
- per descriptor and per source (learned ``heads`` or mask ``rules``) a confusion matrix of
  reference term × predicted term (plus a column for "no answer");
- the sum of the Dice overlaps and the case counts.

Statistics of several hospitals add up (:meth:`ValidationStatistics.merge`), and
:func:`fit_calibration` chooses from the sum the temperature, the three operating points and
the descriptor sources, and the validation metrics a bundle ships (AUC with a bootstrap
interval drawn from the histograms, calibration error, rates per mode, Dice, kappa).
:func:`add_laplace_noise` makes the histograms ε-differentially private.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from data_registry.schema import Margin
from models import metrics
from models.analysis import descriptors_from_heads, descriptors_from_rules
from models.calibration import (
    LogitBins,
    Mode,
    OperatingPoints,
    apply_temperature,
    choose_operating_points_binned,
    fit_temperature_binned,
)
from models.data import HEAD_VOCABULARIES, LesionSample
from models.exceptions import CalibrationError
from models.inference import LesionOutput

__all__ = [
    "DESCRIPTORS",
    "NO_ANSWER",
    "SOURCES",
    "FittedCalibration",
    "ValidationStatistics",
    "add_laplace_noise",
    "agreement_from_confusion",
    "denoised_histograms",
    "fit_calibration",
    "validation_statistics",
]

DESCRIPTORS = ("shape", "orientation", "echo_pattern", "posterior_features", "margin")
"""Descriptors whose source is chosen (margin: circumscribed or not)."""
SOURCES = ("heads", "rules")
NO_ANSWER = "(no answer)"
"""Confusion column of a case the source gave no term for (e.g. a mask too small for rules)."""


def _vocabulary(name: str) -> tuple[str, ...]:
    return HEAD_VOCABULARIES[name]


def confusion_shape(name: str) -> tuple[int, int]:
    """(reference terms, predicted terms + no answer) of a descriptor's confusion matrix."""
    k = len(_vocabulary(name))
    return k, k + 1


def _reference(sample: LesionSample, name: str) -> str | None:
    index = sample.descriptors.get(name, -1)
    return None if index < 0 else _vocabulary(name)[index]


def _predicted(terms: Mapping[str, Any], name: str) -> str | None:
    value = terms.get(name)
    if name == "margin":
        if not value:
            return None
        return "circumscribed" if Margin.CIRCUMSCRIBED.value in value else "not circumscribed"
    return None if value is None else str(value)


class ValidationStatistics(BaseModel):
    """What a hospital's validation split says about a model, in aggregate only.

    Attributes:
        bins: the shared logit bins.
        benign: benign cases per bin (``bins.size`` entries; real numbers once noised).
        malignant: malignant cases per bin.
        benign_cases: benign validation cases.
        malignant_cases: malignant validation cases.
        dice_sum: sum of the per-case Dice overlaps.
        confusion: source → descriptor → reference × predicted counts.
        sites: how many hospitals' statistics were added up.
        epsilon: the Laplace noise's ε on the histograms (None: exact counts).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    bins: LogitBins
    benign: list[float]
    malignant: list[float]
    benign_cases: int = Field(ge=0)
    malignant_cases: int = Field(ge=0)
    dice_sum: float = Field(ge=0.0)
    confusion: dict[str, dict[str, list[list[int]]]]
    sites: int = Field(default=1, ge=1)
    epsilon: float | None = None

    def model_post_init(self, context: Any, /) -> None:
        if len(self.benign) != self.bins.size or len(self.malignant) != self.bins.size:
            raise CalibrationError(f"histograms must have {self.bins.size} entries")
        if set(self.confusion) != set(SOURCES):
            raise CalibrationError(f"confusion sources must be {SOURCES}")
        for source, tables in self.confusion.items():
            if set(tables) != set(DESCRIPTORS):
                raise CalibrationError(f"{source}: confusion descriptors must be {DESCRIPTORS}")
            for name, table in tables.items():
                if np.asarray(table).shape != confusion_shape(name):
                    raise CalibrationError(
                        f"{source}/{name}: confusion shape {np.asarray(table).shape}, "
                        f"expected {confusion_shape(name)}"
                    )

    @property
    def cases(self) -> int:
        """Validation cases (both classes)."""
        return self.benign_cases + self.malignant_cases

    def merge(self, other: ValidationStatistics) -> ValidationStatistics:
        """The sum of two hospitals' statistics (same bins).

        Raises:
            CalibrationError: the bins differ.
        """
        if other.bins != self.bins:
            raise CalibrationError(f"logit bins differ: {self.bins} and {other.bins}")
        confusion = {
            s: {
                d: (np.asarray(self.confusion[s][d]) + np.asarray(other.confusion[s][d])).tolist()
                for d in DESCRIPTORS
            }
            for s in SOURCES
        }
        eps = [e for e in (self.epsilon, other.epsilon) if e is not None]
        return ValidationStatistics(
            bins=self.bins,
            benign=(np.asarray(self.benign) + np.asarray(other.benign)).tolist(),
            malignant=(np.asarray(self.malignant) + np.asarray(other.malignant)).tolist(),
            benign_cases=self.benign_cases + other.benign_cases,
            malignant_cases=self.malignant_cases + other.malignant_cases,
            dice_sum=self.dice_sum + other.dice_sum,
            confusion=confusion,
            sites=self.sites + other.sites,
            epsilon=max(eps) if eps else None,
        )


def validation_statistics(
    samples: Sequence[LesionSample], outputs: Sequence[LesionOutput], bins: LogitBins
) -> ValidationStatistics:
    """Aggregate the analyses of validation lesions (computed where the lesions are).

    Args:
        samples: validation lesions (label, reference mask and descriptors, image).
        outputs: the model's analysis of each (logit, mask, descriptor probabilities).
        bins: the shared logit bins.

    Returns:
        Histograms, confusion counts, the Dice sum and case counts; no per-case value.

    Raises:
        CalibrationError: the counts differ or a logit is not finite.
    """
    if len(samples) != len(outputs):
        raise CalibrationError(f"{len(samples)} samples for {len(outputs)} analyses")
    y = np.array([s.label for s in samples], dtype=np.int64)
    logits = np.array([o.malignancy_logit for o in outputs], dtype=np.float64)
    dice = metrics.dice_scores([o.mask for o in outputs], [s.mask for s in samples])
    confusion: dict[str, dict[str, NDArray[np.int64]]] = {
        s: {d: np.zeros(confusion_shape(d), dtype=np.int64) for d in DESCRIPTORS} for s in SOURCES
    }
    for sample, output in zip(samples, outputs, strict=True):
        terms = {
            "heads": descriptors_from_heads(output.descriptor_probs),
            "rules": descriptors_from_rules(sample.image, output.outline_mask),
        }
        for name in DESCRIPTORS:
            reference = _reference(sample, name)
            if reference is None:
                continue
            vocabulary = _vocabulary(name)
            row = vocabulary.index(reference)
            for source in SOURCES:
                guess = _predicted(terms[source], name)
                column = vocabulary.index(guess) if guess in vocabulary else len(vocabulary)
                confusion[source][name][row, column] += 1
    return ValidationStatistics(
        bins=bins,
        benign=bins.histogram(logits[y == 0]).astype(float).tolist(),
        malignant=bins.histogram(logits[y == 1]).astype(float).tolist(),
        benign_cases=int((y == 0).sum()),
        malignant_cases=int((y == 1).sum()),
        dice_sum=float(dice.sum()),
        confusion={
            s: {d: t.tolist() for d, t in tables.items()} for s, tables in confusion.items()
        },
    )


def add_laplace_noise(
    stats: ValidationStatistics, epsilon: float, rng: np.random.Generator
) -> ValidationStatistics:
    """The statistics with ε-differentially private histograms (Laplace mechanism).

    Adding or removing one case changes one entry of one histogram by 1 (L1 sensitivity 1),
    so Laplace noise of scale ``1 / epsilon`` on every entry makes the pair of histograms
    ε-differentially private. The case counts, Dice sum and confusion counts are not noised.

    Raises:
        CalibrationError: ``epsilon`` is not positive.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise CalibrationError(f"epsilon must be positive; got {epsilon!r}")
    scale = 1.0 / epsilon
    size = stats.bins.size
    return stats.model_copy(
        update={
            "benign": (np.asarray(stats.benign) + rng.laplace(0.0, scale, size)).tolist(),
            "malignant": (np.asarray(stats.malignant) + rng.laplace(0.0, scale, size)).tolist(),
            "epsilon": epsilon,
        }
    )


def agreement_from_confusion(table: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Accuracy and Cohen's kappa from a reference × predicted (+ no answer) count table.

    Equals :func:`models.metrics.descriptor_agreement` on the cases the table counts.
    """
    counts = np.asarray(table, dtype=np.float64)
    k = counts.shape[0]
    n = int(counts.sum())
    if n == 0:
        return metrics.Agreement(0, None, None, metrics.NO_CASES).to_dict()
    square = np.vstack([counts, np.zeros((1, k + 1))])
    accuracy = float(np.trace(square) / n)
    rows, cols = square.sum(axis=1), square.sum(axis=0)
    if int(np.count_nonzero((rows + cols) > 0)) < 2:
        return metrics.Agreement(n, accuracy, None, metrics.ONE_CATEGORY).to_dict()
    expected = float(rows @ cols) / n**2
    kappa = (accuracy - expected) / (1.0 - expected)
    return metrics.Agreement(n, accuracy, float(kappa)).to_dict()


def _binned_aucs(benign: NDArray, malignant: NDArray) -> NDArray:
    """AUC (ties within a bin count one half) of each row of paired count arrays."""
    below = np.cumsum(benign, axis=-1) - benign
    wins = np.sum(malignant * (below + 0.5 * benign), axis=-1)
    return wins / (benign.sum(axis=-1) * malignant.sum(axis=-1))


def _auc_block(benign: NDArray, malignant: NDArray, n_bootstrap: int, seed: int) -> dict[str, Any]:
    n_b, n_m = int(benign.sum()), int(malignant.sum())
    auc = float(_binned_aucs(benign, malignant))
    rng = np.random.default_rng(seed)
    rb = rng.multinomial(n_b, benign / n_b, size=n_bootstrap).astype(np.float64)
    rm = rng.multinomial(n_m, malignant / n_m, size=n_bootstrap).astype(np.float64)
    alpha = (1.0 - metrics.CONFIDENCE) / 2
    low, high = np.quantile(_binned_aucs(rb, rm), [alpha, 1.0 - alpha])
    return metrics.AucResult(auc, float(low), float(high), n_m, n_b).to_dict()


def _ece_and_brier(
    benign: NDArray, malignant: NDArray, bins: LogitBins, temperature: float
) -> tuple[float, float]:
    p = apply_temperature(bins.centers(), temperature)
    total = benign.sum() + malignant.sum()
    index = np.minimum((p * metrics.N_BINS).astype(int), metrics.N_BINS - 1)
    weight = benign + malignant
    counts = np.bincount(index, weights=weight, minlength=metrics.N_BINS)
    mean_p = np.bincount(index, weights=weight * p, minlength=metrics.N_BINS)
    positive = np.bincount(index, weights=malignant, minlength=metrics.N_BINS)
    filled = counts > 0
    ece = float(np.sum(np.abs(positive[filled] - mean_p[filled])) / total)
    brier = float((malignant @ (1 - p) ** 2 + benign @ p**2) / total)
    return ece, brier


class FittedCalibration(BaseModel):
    """What the vendor fitted from the hospitals' summed validation statistics.

    Attributes:
        temperature: the fitted temperature (1.0 when it could not be fitted).
        note: how the temperature came about.
        operating_points: the three modes (``OperatingPoints.to_dict`` form).
        descriptor_sources: descriptor → ``heads`` or ``rules``.
        descriptor_candidates: source → descriptor → agreement on validation.
        validation: the pooled validation metrics (AUC, ECE, Brier, rates per mode, Dice).
        validation_descriptors: agreement of the chosen source per descriptor.
        cases: validation cases per class.
        sites: hospitals whose statistics were summed.
        bins: the logit bins used.
        epsilon: ε of the histograms' Laplace noise (None: exact).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float
    note: str
    operating_points: dict[str, dict[str, float]]
    descriptor_sources: dict[str, str]
    descriptor_candidates: dict[str, dict[str, dict[str, Any]]]
    validation: dict[str, Any]
    validation_descriptors: dict[str, dict[str, Any]]
    cases: dict[str, int]
    sites: int
    bins: LogitBins
    epsilon: float | None = None

    def points(self) -> OperatingPoints:
        """The operating points as :class:`OperatingPoints`."""
        return OperatingPoints.from_dict(self.operating_points)


def denoised_histograms(
    stats: ValidationStatistics, floor_sds: float = 2.0
) -> tuple[NDArray, NDArray]:
    """The class histograms as counts: rounded and clipped at 0, and, when noised, with every
    bin under ``floor_sds`` standard deviations of the summed noise set to 0.

    Each hospital's Laplace(1/ε) noise adds up to a standard deviation of ``sqrt(2 * sites) / ε``
    per bin; without the floor, the noise in the many empty bins reads as phantom cases at the
    extremes. This is post-processing: the privacy guarantee is kept.
    """
    benign, malignant = np.asarray(stats.benign), np.asarray(stats.malignant)
    if stats.epsilon:
        floor = floor_sds * math.sqrt(2.0 * stats.sites) / stats.epsilon
        benign = np.where(benign < floor, 0.0, benign)
        malignant = np.where(malignant < floor, 0.0, malignant)
    return np.clip(np.rint(benign), 0, None), np.clip(np.rint(malignant), 0, None)


def fit_calibration(
    stats: ValidationStatistics,
    *,
    confidence: float | None,
    n_bootstrap: int = metrics.N_BOOTSTRAP,
    seed: int = 0,
    floor_sds: float = 2.0,
) -> FittedCalibration:
    """Temperature, operating points, descriptor sources and validation metrics from sums.

    Noised histograms are first cleaned: bins under ``floor_sds`` standard deviations of the
    summed noise are set to 0, the rest rounded (post-processing keeps the privacy guarantee). Without signal the temperature stays 1 and the note says why, as in
    :func:`models.packaging.package_bundle`.

    Raises:
        CalibrationError: the histograms hold one class only.
    """
    benign, malignant = denoised_histograms(stats, floor_sds)
    try:
        temperature = fit_temperature_binned(benign, malignant, stats.bins)
        note = "temperature fit on the hospitals' validation histograms"
    except CalibrationError as e:
        if benign.sum() <= 0 or malignant.sum() <= 0:
            raise
        temperature, note = 1.0, f"uncalibrated (T=1): {e}"
    points = choose_operating_points_binned(
        benign, malignant, stats.bins, temperature=temperature, confidence=confidence
    )
    candidates = {
        s: {d: agreement_from_confusion(stats.confusion[s][d]) for d in DESCRIPTORS}
        for s in SOURCES
    }
    sources = {}
    for name in DESCRIPTORS:
        k_heads, k_rules = candidates["heads"][name]["kappa"], candidates["rules"][name]["kappa"]
        better = k_heads is not None and (k_rules is None or k_heads > k_rules)
        sources[name] = "heads" if better else "rules"
    n_b, n_m = int(benign.sum()), int(malignant.sum())
    ece, brier = _ece_and_brier(benign, malignant, stats.bins, temperature)
    thresholds = {}
    for mode in Mode:
        point = points.point(mode)
        tp, tn = round(point.sensitivity * n_m), round(point.specificity * n_b)
        thresholds[mode.value] = {
            "threshold": point.threshold,
            "sensitivity": point.sensitivity,
            "specificity": point.specificity,
            "balanced_accuracy": (point.sensitivity + point.specificity) / 2,
            "tp": tp, "fp": n_b - tn, "tn": tn, "fn": n_m - tp,
        }  # fmt: skip
    validation = {
        "n": stats.cases,
        "n_positive": stats.malignant_cases,
        "n_negative": stats.benign_cases,
        "auc": _auc_block(benign, malignant, n_bootstrap, seed),
        "ece": ece,
        "brier": brier,
        "thresholds": thresholds,
        "dice_mean": stats.dice_sum / stats.cases if stats.cases else None,
        "from": f"histograms of {stats.bins.count} logit bins over [{stats.bins.low:g}, "
        f"{stats.bins.high:g})"
        + (f", Laplace noise epsilon={stats.epsilon:g}" if stats.epsilon else ""),
    }
    return FittedCalibration(
        temperature=temperature,
        note=note,
        operating_points=points.to_dict(),
        descriptor_sources=sources,
        descriptor_candidates=candidates,
        validation=validation,
        validation_descriptors={d: candidates[sources[d]][d] for d in DESCRIPTORS},
        cases={"benign": stats.benign_cases, "malignant": stats.malignant_cases},
        sites=stats.sites,
        bins=stats.bins,
        epsilon=stats.epsilon,
    )
