"""Probability calibration, BI-RADS suggestion and the three operating modes.

- Temperature scaling: one scalar ``T`` fitted on validation logits by minimising the negative
  log-likelihood over ``log T`` (so ``T`` stays positive); ``p = sigmoid(logit / T)``.
- :data:`BIRADS_BANDS`: the ACR likelihood-of-malignancy bands, and :func:`birads_for`.
- :func:`choose_operating_points`: the thresholds of the console's three modes, chosen on
  validation cases and shipped in a model bundle's ``metadata.json``
  (:meth:`OperatingPoints.to_dict` / :meth:`OperatingPoints.from_dict`).
- Histogram equivalents for federated calibration, where the vendor sees only per-class counts
  of the validation logits in fixed bins shared by every hospital (:class:`LogitBins`):
  :func:`fit_temperature_binned` and :func:`choose_operating_points_binned`. Thresholds lie on
  bin edges and are moved outward (never inward) to the edge of the bin holding the order
  statistic, so the tolerance bounds stay conservative.

A case is called malignant when its calibrated probability is at or above the mode's threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.schema import BiRads
from models.exceptions import CalibrationError

TEMPERATURE_RANGE = (0.05, 20.0)
"""Temperatures searched by :func:`fit_temperature` (a wider range means a broken model)."""
TARGET_SENSITIVITY = 0.95
"""Validation sensitivity the high-sensitivity mode must reach."""
TARGET_SPECIFICITY = 0.90
"""Validation specificity the high-specificity mode must reach."""


class Mode(StrEnum):
    """The console's operating modes."""

    HIGH_SENSITIVITY = "high-sensitivity"
    HIGH_ACCURACY = "high-accuracy"
    HIGH_SPECIFICITY = "high-specificity"


@dataclass(frozen=True)
class BiRadsBand:
    """One assessment category and its likelihood-of-malignancy band.

    Attributes:
        category: the BI-RADS category.
        low: lower bound of the band (excluded, except 0 for category 3).
        high: upper bound (included, except for 4C, whose bound 0.95 belongs to 5).
    """

    category: BiRads
    low: float
    high: float


BIRADS_BANDS: tuple[BiRadsBand, ...] = (
    BiRadsBand(BiRads.B3, 0.0, 0.02),
    BiRadsBand(BiRads.B4A, 0.02, 0.10),
    BiRadsBand(BiRads.B4B, 0.10, 0.50),
    BiRadsBand(BiRads.B4C, 0.50, 0.95),
    BiRadsBand(BiRads.B5, 0.95, 1.0),
)
"""ACR BI-RADS likelihood of malignancy: 3 ≤ 2 %, 4A > 2–10 %, 4B > 10–50 %, 4C > 50 to < 95 %,
5 ≥ 95 %. Categories 1 and 2 (no finding, certainly benign) are not suggested by a model that
was given a lesion to assess; its lowest suggestion is 3."""


def birads_for(probability: float) -> BiRads:
    """BI-RADS category suggested by a calibrated probability of malignancy.

    Args:
        probability: probability of malignancy in [0, 1].

    Returns:
        3 for p ≤ 0.02, 4A for p ≤ 0.10, 4B for p ≤ 0.50, 4C for p < 0.95, else 5.

    Raises:
        CalibrationError: the probability is not a number in [0, 1].
    """
    p = float(probability)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise CalibrationError(f"a probability must lie in [0, 1]; got {probability!r}")
    for band in BIRADS_BANDS[:-2]:
        if p <= band.high:
            return band.category
    return BiRads.B4C if p < BIRADS_BANDS[-1].low else BiRads.B5


def fit_temperature(logits: ArrayLike, y_true: ArrayLike) -> float:
    """Temperature that minimises the validation negative log-likelihood.

    Args:
        logits: validation logits: shape (n,) for one malignancy logit per case, or (n, C)
            for C-class logits (softmax).
        y_true: labels: 0/1 for (n,) logits, class indices 0..C-1 for (n, C) logits.

    Returns:
        The temperature ``T`` (> 0); divide logits by it before the sigmoid or softmax.

    Raises:
        CalibrationError: shapes disagree, values are not finite, labels are out of range,
            only one class is present, or the optimum lies at the edge of
            :data:`TEMPERATURE_RANGE`.
    """
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true)
    if z.ndim not in (1, 2) or y.shape != z.shape[:1] or len(y) == 0:
        raise CalibrationError(
            f"expected logits (n,) or (n, C) and n labels; got {z.shape}, {y.shape}"
        )
    if not np.all(np.isfinite(z)):
        raise CalibrationError("logits must be finite numbers")
    n_classes = 2 if z.ndim == 1 else z.shape[1]
    if not np.issubdtype(y.dtype, np.integer) and y.dtype != bool:
        raise CalibrationError(f"labels must be integers; got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise CalibrationError(f"labels must lie in 0..{n_classes - 1}; got {np.unique(y)}")
    if len(np.unique(y)) < 2:
        raise CalibrationError("temperature scaling needs both classes in the validation labels")
    from scipy.optimize import minimize_scalar  # the console never fits: keep scipy off its path
    from scipy.special import log_expit, log_softmax

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        if z.ndim == 1:
            return float(-np.mean(np.where(y == 1, log_expit(scaled), log_expit(-scaled))))
        return float(-np.mean(log_softmax(scaled, axis=1)[np.arange(len(y)), y]))

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    if not result.success or min(result.x - low, high - result.x) < 1e-3:
        raise CalibrationError(
            f"no temperature in {TEMPERATURE_RANGE} minimises the validation loss "
            "(logits carry no signal, or are separated perfectly)"
        )
    return float(math.exp(result.x))


def apply_temperature(logits: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """Calibrated probabilities from logits.

    Args:
        logits: shape (n,) malignancy logits, or (n, C) class logits.
        temperature: the fitted temperature (> 0).

    Returns:
        Shape (n,) probabilities of malignancy, or (n, C) class probabilities.

    Raises:
        CalibrationError: the temperature is not positive and finite.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"temperature must be positive and finite; got {temperature!r}")
    from scipy.special import log_expit, log_softmax

    z = np.asarray(logits, dtype=np.float64) / temperature
    if z.ndim == 1:
        return np.exp(log_expit(z))
    return np.exp(log_softmax(z, axis=1))


class OperatingPoint(BaseModel):
    """One mode's threshold and the validation rates it achieved."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: float = Field(ge=0.0, le=1.0)
    sensitivity: float = Field(ge=0.0, le=1.0)
    specificity: float = Field(ge=0.0, le=1.0)


class OperatingPoints(BaseModel):
    """The three modes' operating points, as shipped in a bundle's metadata.

    Serialised with the mode names as keys: ``{"high-sensitivity": {"threshold": ...,
    "sensitivity": ..., "specificity": ...}, "high-accuracy": {...}, "high-specificity": {...}}``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    high_sensitivity: OperatingPoint = Field(alias=Mode.HIGH_SENSITIVITY.value)
    high_accuracy: OperatingPoint = Field(alias=Mode.HIGH_ACCURACY.value)
    high_specificity: OperatingPoint = Field(alias=Mode.HIGH_SPECIFICITY.value)

    def point(self, mode: Mode | str) -> OperatingPoint:
        """The operating point of a mode.

        Args:
            mode: a :class:`Mode` or its name (``"high-sensitivity"``, ...).

        Returns:
            Its threshold and validation rates.

        Raises:
            CalibrationError: the mode is unknown.
        """
        try:
            mode = Mode(mode)
        except ValueError as e:
            raise CalibrationError(
                f"unknown mode {mode!r}; expected one of {[m.value for m in Mode]}"
            ) from e
        return getattr(self, mode.name.lower())

    def thresholds(self) -> dict[str, float]:
        """Mode name to threshold (e.g. for :func:`models.metrics.summarize`)."""
        return {mode.value: self.point(mode).threshold for mode in Mode}

    def suggest(self, probability: float, mode: Mode | str) -> Literal["benign", "malignant"]:
        """The benign/malignant suggestion of a probability in a mode.

        Args:
            probability: calibrated probability of malignancy in [0, 1].
            mode: the operating mode.

        Returns:
            ``"malignant"`` when the probability is at or above the mode's threshold.

        Raises:
            CalibrationError: unknown mode, or the probability is not in [0, 1].
        """
        threshold = self.point(mode).threshold
        if not 0.0 <= float(probability) <= 1.0:
            raise CalibrationError(f"a probability must lie in [0, 1]; got {probability!r}")
        return "malignant" if probability >= threshold else "benign"

    def to_dict(self) -> dict[str, dict[str, float]]:
        """JSON-ready dict keyed by mode name."""
        return self.model_dump(by_alias=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OperatingPoints:
        """Read operating points written by :meth:`to_dict`.

        Args:
            data: a dict keyed by the three mode names.

        Returns:
            The operating points.

        Raises:
            CalibrationError: a mode is missing, a key is unknown or a value is out of range.
        """
        try:
            return cls.model_validate(data, by_alias=True, by_name=False)
        except ValidationError as e:
            raise CalibrationError(f"malformed operating points: {e}") from e


def tolerance_rank(n: int, rate: float, confidence: float) -> int:
    """Rank of the validation score at which a threshold keeps a rate with a given confidence.

    Distribution-free tolerance bound (order statistics, Wilks 1941): a threshold at the
    ``r``-th lowest malignant score leaves below it a share of *all* malignant lesions that is
    Beta(r, n - r + 1) distributed, so it keeps a sensitivity of at least ``rate`` with
    probability ``P(Binomial(n, 1 - rate) >= r)``. This returns the largest ``r`` whose
    probability reaches ``confidence``, or 1 (the most cautious threshold the cases support)
    when none does. The same holds for specificity with the benign scores from the top.

    Args:
        n: validation cases of the class the rate is about.
        rate: the declared rate (e.g. sensitivity 0.95).
        confidence: the wanted probability that new patients see at least that rate.

    Returns:
        ``r`` in ``1..n``.
    """
    from scipy.stats import binom

    ranks = np.arange(1, n + 1)
    holds = binom.sf(ranks - 1, n, 1.0 - rate) >= confidence  # P(Bin >= r), falls with r
    return int(ranks[holds][-1]) if holds.any() else 1


def choose_operating_points(
    y_true: ArrayLike, prob: ArrayLike, *, confidence: float | None = None
) -> OperatingPoints:
    """Thresholds of the three modes, chosen on validation cases.

    - high-sensitivity: without ``confidence``, the highest validation probability whose
      validation sensitivity is ≥ :data:`TARGET_SENSITIVITY`; with it, the malignant score of
      rank :func:`tolerance_rank` from the bottom, so that new patients keep that sensitivity
      with probability ``confidence``;
    - high-specificity: likewise for :data:`TARGET_SPECIFICITY`, from the benign scores at the
      top (the threshold lies just above the benign score of that rank);
    - high-accuracy: the threshold of maximum balanced accuracy (among ties, the lowest, i.e.
      the most sensitive).

    A threshold set exactly at the target on validation keeps it on new patients only about half
    the time (with 50 malignant validation lesions, sensitivity is measured to about ±0.03);
    ``confidence`` buys that back by the amount the validation set's size calls for.

    Args:
        y_true: validation labels, 0 or 1.
        prob: calibrated validation probabilities of malignancy.
        confidence: probability in (0, 1) that the high-sensitivity and high-specificity
            thresholds keep their declared rates on new patients (None: point estimates).

    Returns:
        The three operating points with the sensitivity and specificity each reached.

    Raises:
        CalibrationError: labels not 0/1, one class only, lengths differ, probabilities
            outside [0, 1], or a confidence outside (0, 1). When benign cases tie at the highest
            probability, high-specificity falls back to a threshold above every probability
            (specificity 1, sensitivity 0).
    """
    y, p = _validation_set(y_true, prob)
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise CalibrationError(f"confidence must lie in (0, 1), got {confidence}")
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    finite = np.isfinite(thresholds)  # roc_curve puts +inf first (nothing called malignant)
    thresholds, sens, spec = thresholds[finite], tpr[finite], 1.0 - fpr[finite]
    malignant, benign = np.sort(p[y == 1]), np.sort(p[y == 0])[::-1]

    def at(threshold: float) -> OperatingPoint:
        return OperatingPoint(
            threshold=threshold,
            sensitivity=float(np.mean(malignant >= threshold)),
            specificity=float(np.mean(benign < threshold)),
        )

    # thresholds decrease along the curve: the first index meeting a target is the highest.
    if confidence is None:
        high_sensitivity = at(float(thresholds[np.flatnonzero(sens >= TARGET_SENSITIVITY)[0]]))
        meets_spec = np.flatnonzero(spec >= TARGET_SPECIFICITY)
        spec_threshold = float(thresholds[meets_spec[-1]]) if meets_spec.size else None
    else:
        rank = tolerance_rank(malignant.size, TARGET_SENSITIVITY, confidence)
        high_sensitivity = at(float(malignant[rank - 1]))
        rank = tolerance_rank(benign.size, TARGET_SPECIFICITY, confidence)
        above = benign[rank - 1]
        spec_threshold = None if above >= 1.0 else float(np.nextafter(above, np.inf))
    if spec_threshold is None:  # benign cases tie at the top: call nothing malignant
        spec_threshold = float(min(1.0, np.nextafter(p.max(), np.inf)))
    high_specificity = at(spec_threshold)
    balanced = (sens + spec) / 2
    best = np.flatnonzero(balanced == balanced.max())[-1]
    return OperatingPoints(
        high_sensitivity=high_sensitivity,
        high_accuracy=at(float(thresholds[best])),
        high_specificity=high_specificity,
    )


def _validation_set(y_true: ArrayLike, prob: ArrayLike) -> tuple[NDArray, NDArray]:
    y, p = np.asarray(y_true), np.asarray(prob, dtype=np.float64)
    if y.ndim != 1 or p.shape != y.shape or y.size == 0:
        raise CalibrationError(
            f"expected matching 1-D labels and probabilities; got {y.shape}, {p.shape}"
        )
    if not np.all(np.isin(y, (0, 1))):
        raise CalibrationError(f"labels must be 0 (benign) or 1 (malignant); got {np.unique(y)}")
    if not (np.all(np.isfinite(p)) and p.min() >= 0.0 and p.max() <= 1.0):
        raise CalibrationError("probabilities must be finite and lie in [0, 1]")
    if len(np.unique(y)) < 2:
        raise CalibrationError("choosing operating points needs both classes in validation")
    return y.astype(np.int64), p


class LogitBins(BaseModel):
    """Fixed bins of the malignancy logit, shared by every hospital of a federation.

    ``count`` equal bins over ``[low, high)`` plus one open bin below ``low`` and one at or
    above ``high``: a histogram has ``count + 2`` entries. Bin ``k`` (1..count) holds logits
    in ``[edges[k - 1], edges[k])``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: float = -20.0
    high: float = 20.0
    count: int = Field(default=4000, ge=1, le=100_000)

    def model_post_init(self, context: Any, /) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise CalibrationError(
                f"logit bins need finite low < high; got {self.low}, {self.high}"
            )

    @property
    def size(self) -> int:
        """Entries of a histogram (``count + 2``)."""
        return self.count + 2

    def edges(self) -> NDArray[np.float64]:
        """The ``count + 1`` finite edges."""
        return np.linspace(self.low, self.high, self.count + 1)

    def lower_edges(self) -> NDArray[np.float64]:
        """Lower edge of every histogram entry (``-inf`` for the open bin below)."""
        return np.concatenate([[-np.inf], self.edges()])

    def centers(self) -> NDArray[np.float64]:
        """A representative logit per entry (the open bins use their finite edge)."""
        e = self.edges()
        return np.concatenate([[e[0]], (e[:-1] + e[1:]) / 2, [e[-1]]])

    def histogram(self, logits: ArrayLike) -> NDArray[np.int64]:
        """Counts of ``logits`` per entry.

        Raises:
            CalibrationError: a logit is not finite.
        """
        z = np.asarray(logits, dtype=np.float64).ravel()
        if not np.all(np.isfinite(z)):
            raise CalibrationError("logits must be finite numbers")
        index = np.searchsorted(self.edges(), z, side="right")
        return np.bincount(index, minlength=self.size).astype(np.int64)


def _class_counts(
    benign: ArrayLike, malignant: ArrayLike, bins: LogitBins
) -> tuple[NDArray, NDArray]:
    b = np.asarray(benign, dtype=np.float64)
    m = np.asarray(malignant, dtype=np.float64)
    if b.shape != (bins.size,) or m.shape != (bins.size,):
        raise CalibrationError(
            f"histograms must have {bins.size} entries; got {b.shape} and {m.shape}"
        )
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(m))) or b.min() < 0 or m.min() < 0:
        raise CalibrationError("histogram counts must be finite and non-negative")
    if b.sum() <= 0 or m.sum() <= 0:
        raise CalibrationError("calibration needs both classes in the validation histograms")
    return b, m


def fit_temperature_binned(benign: ArrayLike, malignant: ArrayLike, bins: LogitBins) -> float:
    """:func:`fit_temperature` from per-class logit histograms (each bin at its centre).

    Args:
        benign: counts of benign validation logits per entry of ``bins``.
        malignant: the same for malignant lesions.
        bins: the shared bins.

    Returns:
        The temperature ``T`` (> 0).

    Raises:
        CalibrationError: malformed histograms, one class only, or the optimum lies at the edge
            of :data:`TEMPERATURE_RANGE`.
    """
    from scipy.optimize import minimize_scalar  # the console never fits: keep scipy off its path
    from scipy.special import log_expit

    b, m = _class_counts(benign, malignant, bins)
    z, total = bins.centers(), b.sum() + m.sum()

    def nll(log_t: float) -> float:
        scaled = z / math.exp(log_t)
        return float(-(m @ log_expit(scaled) + b @ log_expit(-scaled)) / total)

    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    if not result.success or min(result.x - low, high - result.x) < 1e-3:
        raise CalibrationError(
            f"no temperature in {TEMPERATURE_RANGE} minimises the validation loss "
            "(logits carry no signal, or are separated perfectly)"
        )
    return float(math.exp(result.x))


def _edge_probability(lower_edge: float, temperature: float) -> float:
    """The calibrated probability of a logit threshold (0 below every bin, 1 above)."""
    if lower_edge == -np.inf:
        return 0.0
    if lower_edge == np.inf:
        return 1.0
    return float(apply_temperature(np.array([lower_edge]), temperature)[0])


def choose_operating_points_binned(
    benign: ArrayLike,
    malignant: ArrayLike,
    bins: LogitBins,
    *,
    temperature: float,
    confidence: float | None = None,
) -> OperatingPoints:
    """:func:`choose_operating_points` from per-class logit histograms.

    Every threshold lies on a bin edge (a case is called malignant when its logit is at or
    above it), and the rates reported are exact for those thresholds. With ``confidence``, the
    high-sensitivity threshold is the lower edge of the bin holding the malignant order
    statistic of rank :func:`tolerance_rank` (at or below the exact threshold: sensitivity
    can only rise), and the high-specificity threshold the upper edge of the bin holding the
    benign one (at or above the exact threshold: specificity can only rise).

    Args:
        benign: counts of benign validation logits per entry of ``bins`` (need not be integers:
            differentially private counts are rounded and clipped at 0 first).
        malignant: the same for malignant lesions.
        bins: the shared bins.
        temperature: the fitted temperature (thresholds are calibrated probabilities).
        confidence: as for :func:`choose_operating_points`.

    Returns:
        The three operating points.

    Raises:
        CalibrationError: malformed histograms, one class only, bad temperature or confidence.
    """
    b, m = _class_counts(benign, malignant, bins)
    b, m = np.rint(b), np.rint(m)
    if b.sum() <= 0 or m.sum() <= 0:
        raise CalibrationError("calibration needs both classes in the validation histograms")
    if confidence is not None and not 0.0 < confidence < 1.0:
        raise CalibrationError(f"confidence must lie in (0, 1), got {confidence}")
    if not (math.isfinite(temperature) and temperature > 0):
        raise CalibrationError(f"temperature must be positive and finite; got {temperature!r}")
    n_mal, n_ben = m.sum(), b.sum()
    # position j: entries j.. are called malignant (j = size: nothing is)
    lower = np.concatenate([bins.lower_edges(), [np.inf]])
    sens = np.concatenate([np.cumsum(m[::-1])[::-1], [0.0]]) / n_mal
    # as roc_curve does (1 - fpr), so that a rate on a target compares the same way
    spec = 1.0 - np.concatenate([np.cumsum(b[::-1])[::-1], [0.0]]) / n_ben

    def at(j: int) -> OperatingPoint:
        return OperatingPoint(
            threshold=_edge_probability(float(lower[j]), temperature),
            sensitivity=float(sens[j]),
            specificity=float(spec[j]),
        )

    def top_of_run(j: int) -> int:
        """The highest position with the same rates as ``j`` (the exact path's thresholds
        sit on a case's score, at the top of the gap below it)."""
        while j + 1 < len(sens) and sens[j + 1] == sens[j] and spec[j + 1] == spec[j]:
            j += 1
        return j

    if confidence is None:
        j_sens = int(np.flatnonzero(sens >= TARGET_SENSITIVITY)[-1])
        j_spec = top_of_run(int(np.flatnonzero(spec >= TARGET_SPECIFICITY)[0]))
    else:
        rank = tolerance_rank(int(n_mal), TARGET_SENSITIVITY, confidence)
        j_sens = int(np.flatnonzero(np.cumsum(m) >= rank)[0])
        rank = tolerance_rank(int(n_ben), TARGET_SPECIFICITY, confidence)
        from_top = np.cumsum(b[::-1])[::-1]  # benign at or above each entry
        j_spec = int(np.flatnonzero(from_top >= rank)[-1]) + 1
    balanced = (sens + spec) / 2
    j_acc = top_of_run(int(np.flatnonzero(balanced == balanced.max())[0]))
    return OperatingPoints(
        high_sensitivity=at(j_sens), high_accuracy=at(j_acc), high_specificity=at(j_spec)
    )
