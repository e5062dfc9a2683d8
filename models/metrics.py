"""Evaluation metrics: AUC with bootstrap intervals, operating-point rates, Dice, calibration
error and descriptor agreement, pooled and per group (site, scanner).

Conventions: ``y_true`` holds 1 for malignant and 0 for benign; a case is called malignant when
its probability is at or above the threshold. Metrics that a subset cannot define (AUC with one
class, sensitivity without positives) are ``None`` with a ``reason``, never an exception, so a
per-site table can always be built. Results are frozen dataclasses with ``to_dict()`` giving
plain JSON-ready values; :func:`summarize` returns such a dict directly.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from types import MappingProxyType

import numpy as np
from numpy.typing import ArrayLike, NDArray

from data_registry.schema import Margin
from models.exceptions import MetricInputError

N_BOOTSTRAP = 1000
"""Default number of bootstrap resamples."""
CONFIDENCE = 0.95
"""Default coverage of confidence intervals."""
N_BINS = 10
"""Default number of equal-width probability bins of the calibration error."""
DEFAULT_THRESHOLDS: Mapping[str, float] = MappingProxyType({"0.5": 0.5})
"""Operating points :func:`summarize` reports when none are given."""
_CELLS_PER_CHUNK = 4_000_000
"""Bootstrap resamples are counted in chunks of at most this many (resample x score) cells."""

ONE_CLASS = "only one class present"
NO_POSITIVES = "no malignant cases"
NO_NEGATIVES = "no benign cases"
NO_CASES = "no cases with a reference label"
ONE_CATEGORY = "a single category in reference and prediction"


@dataclass(frozen=True)
class AucResult:
    """Area under the ROC curve with a stratified bootstrap confidence interval.

    Attributes:
        auc: the point estimate (``sklearn.metrics.roc_auc_score``), None when undefined.
        ci_low: lower bound of the interval, None when undefined.
        ci_high: upper bound of the interval, None when undefined.
        n_positive: malignant cases.
        n_negative: benign cases.
        reason: why ``auc`` is None, else None.
    """

    auc: float | None
    ci_low: float | None
    ci_high: float | None
    n_positive: int
    n_negative: int
    reason: str | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The result as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class AucDifference:
    """Paired bootstrap comparison of two models' AUCs on the same cases (``b - a``).

    Attributes:
        auc_a: AUC of the reference model.
        auc_b: AUC of the candidate model.
        delta: ``auc_b - auc_a``.
        ci_low: lower bound of the interval of ``delta``.
        ci_high: upper bound of the interval of ``delta``.
        n_positive: malignant cases.
        n_negative: benign cases.
    """

    auc_a: float
    auc_b: float
    delta: float
    ci_low: float
    ci_high: float
    n_positive: int
    n_negative: int

    def is_non_inferior(self, margin: float) -> bool:
        """Whether the candidate is non-inferior: the interval's lower bound is above ``-margin``.

        Args:
            margin: largest AUC loss that is tolerated (e.g. 0.02).

        Returns:
            True when ``ci_low > -margin``.
        """
        return self.ci_low > -margin

    def to_dict(self) -> dict[str, float | int]:
        """The result as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class ThresholdMetrics:
    """Rates of one operating point (malignant when probability >= threshold).

    Attributes:
        threshold: the probability threshold.
        sensitivity: true-positive rate, None without malignant cases.
        specificity: true-negative rate, None without benign cases.
        balanced_accuracy: mean of the two, None when either is.
        tp: true positives.
        fp: false positives.
        tn: true negatives.
        fn: false negatives.
    """

    threshold: float
    sensitivity: float | None
    specificity: float | None
    balanced_accuracy: float | None
    tp: int
    fp: int
    tn: int
    fn: int

    def to_dict(self) -> dict[str, float | int | None]:
        """The result as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class Agreement:
    """Agreement of predicted descriptor terms with reference terms.

    Attributes:
        n: cases with a reference term (cases without one are skipped).
        accuracy: share of exact matches, None without cases.
        kappa: Cohen's kappa, None when undefined (no cases, or one category in all).
        reason: why a value is None, else None.
    """

    n: int
    accuracy: float | None
    kappa: float | None
    reason: str | None = None

    def to_dict(self) -> dict[str, float | int | str | None]:
        """The result as plain JSON-ready values."""
        return asdict(self)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width probability bins for a reliability diagram.

    Attributes:
        edges: ``n_bins + 1`` bin edges from 0 to 1.
        counts: cases per bin.
        mean_probability: mean predicted probability per bin (NaN where empty).
        fraction_positive: observed share of malignant cases per bin (NaN where empty).
    """

    edges: NDArray[np.float64]
    counts: NDArray[np.int64]
    mean_probability: NDArray[np.float64]
    fraction_positive: NDArray[np.float64]


def auc(y_true: ArrayLike, score: ArrayLike) -> float:
    """ROC AUC point estimate (``sklearn.metrics.roc_auc_score``); NaN when a class is missing.

    Raises:
        MetricInputError: labels not 0/1, lengths differ, non-finite scores.
    """
    y = _labels(y_true)
    s = _scores(score, len(y))
    if y.min() == y.max():
        return float("nan")
    from sklearn.metrics import roc_auc_score  # lazily: the console's report imports this module

    return float(roc_auc_score(y, s))


def auc_with_ci(
    y_true: ArrayLike,
    score: ArrayLike,
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> AucResult:
    """AUC with a stratified percentile bootstrap interval.

    Malignant and benign cases are resampled separately (each keeps its count), so every
    resample has both classes. The resamples are evaluated together (vectorised).

    Args:
        y_true: reference labels, 0 or 1.
        score: model scores or probabilities, higher meaning more likely malignant.
        n_bootstrap: number of resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        The AUC and its interval; all None with a reason when one class is missing.

    Raises:
        MetricInputError: labels not 0/1, lengths differ, non-finite scores, bad settings.
    """
    y = _labels(y_true)
    s = _scores(score, len(y))
    _check_bootstrap(n_bootstrap, confidence)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return AucResult(None, None, None, n_pos, n_neg, ONE_CLASS)
    pos, neg = _stratified_indices(y, n_bootstrap, seed)
    low, high = _interval(_bootstrap_aucs(s, pos, neg), confidence)
    return AucResult(auc(y, s), low, high, n_pos, n_neg)


def paired_auc_difference(
    y_true: ArrayLike,
    score_a: ArrayLike,
    score_b: ArrayLike,
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> AucDifference:
    """Paired stratified bootstrap interval of ``AUC(b) - AUC(a)`` on the same cases.

    Both models are scored on the same resampled cases, so the interval accounts for the
    correlation between them (the basis of a non-inferiority gate).

    Args:
        y_true: reference labels, 0 or 1.
        score_a: scores of the reference model.
        score_b: scores of the candidate model.
        n_bootstrap: number of resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling.

    Returns:
        Both AUCs, their difference and its interval.

    Raises:
        MetricInputError: one class only, labels not 0/1, lengths differ, non-finite scores.
    """
    y = _labels(y_true)
    a, b = _scores(score_a, len(y)), _scores(score_b, len(y))
    _check_bootstrap(n_bootstrap, confidence)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise MetricInputError(f"cannot compare AUCs: {ONE_CLASS} ({n_pos} malignant)")
    pos, neg = _stratified_indices(y, n_bootstrap, seed)
    deltas = _bootstrap_aucs(b, pos, neg) - _bootstrap_aucs(a, pos, neg)
    low, high = _interval(deltas, confidence)
    auc_a, auc_b = auc(y, a), auc(y, b)
    return AucDifference(auc_a, auc_b, auc_b - auc_a, low, high, n_pos, n_neg)


def threshold_metrics(y_true: ArrayLike, prob: ArrayLike, threshold: float) -> ThresholdMetrics:
    """Sensitivity, specificity and balanced accuracy at one threshold.

    Args:
        y_true: reference labels, 0 or 1.
        prob: predicted probabilities of malignancy.
        threshold: a case is called malignant when its probability is >= this.

    Returns:
        The rates and the confusion counts; a rate is None when its class is absent.

    Raises:
        MetricInputError: labels not 0/1, lengths differ, probabilities outside [0, 1].
    """
    y = _labels(y_true).astype(bool)
    called = _probabilities(prob, len(y)) >= threshold
    tp, fn = int(np.sum(called & y)), int(np.sum(~called & y))
    tn, fp = int(np.sum(~called & ~y)), int(np.sum(called & ~y))
    sensitivity = tp / (tp + fn) if tp + fn else None
    specificity = tn / (tn + fp) if tn + fp else None
    balanced = (
        (sensitivity + specificity) / 2
        if sensitivity is not None and specificity is not None
        else None
    )
    return ThresholdMetrics(float(threshold), sensitivity, specificity, balanced, tp, fp, tn, fn)


def dice(predicted: ArrayLike, reference: ArrayLike) -> float:
    """Dice overlap of two masks (1.0 when both are empty).

    Args:
        predicted: predicted mask (non-zero = lesion).
        reference: reference mask of the same shape.

    Returns:
        ``2 |P & R| / (|P| + |R|)``.

    Raises:
        MetricInputError: the shapes differ.
    """
    p, r = np.asarray(predicted) != 0, np.asarray(reference) != 0
    if p.shape != r.shape:
        raise MetricInputError(f"mask shapes differ: {p.shape} and {r.shape}")
    total = int(p.sum() + r.sum())
    return 1.0 if total == 0 else 2.0 * int(np.sum(p & r)) / total


def dice_scores(predicted: Sequence[ArrayLike], reference: Sequence[ArrayLike]) -> NDArray:
    """Dice of each case (take ``.mean()`` for the mean Dice).

    Args:
        predicted: predicted masks, one per case.
        reference: reference masks, one per case, each the shape of its prediction.

    Returns:
        A float array with one Dice per case.

    Raises:
        MetricInputError: the counts or a pair's shapes differ.
    """
    if len(predicted) != len(reference):
        raise MetricInputError(f"{len(predicted)} predicted masks for {len(reference)} references")
    return np.array([dice(p, r) for p, r in zip(predicted, reference, strict=True)], dtype=float)


def reliability_bins(y_true: ArrayLike, prob: ArrayLike, n_bins: int = N_BINS) -> ReliabilityBins:
    """Equal-width bins of predicted probability with their observed malignancy rate.

    Args:
        y_true: reference labels, 0 or 1.
        prob: predicted probabilities of malignancy.
        n_bins: number of bins over [0, 1] (a probability of 1 falls in the last).

    Returns:
        Edges, counts, mean probability and observed fraction per bin.

    Raises:
        MetricInputError: labels not 0/1, lengths differ, probabilities outside [0, 1],
            ``n_bins`` < 1.
    """
    y = _labels(y_true).astype(float)
    p = _probabilities(prob, len(y))
    if n_bins < 1:
        raise MetricInputError(f"n_bins must be at least 1; got {n_bins}")
    index = np.minimum((p * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(index, weights=p, minlength=n_bins) / counts
        frac = np.bincount(index, weights=y, minlength=n_bins) / counts
    return ReliabilityBins(np.linspace(0.0, 1.0, n_bins + 1), counts, mean_p, frac)


def expected_calibration_error(y_true: ArrayLike, prob: ArrayLike, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the malignancy probability (equal-width bins).

    Args:
        y_true: reference labels, 0 or 1.
        prob: predicted probabilities of malignancy.
        n_bins: number of bins over [0, 1].

    Returns:
        ``sum_b (n_b / n) |observed rate_b - mean probability_b|``.

    Raises:
        MetricInputError: as for :func:`reliability_bins`, or no cases.
    """
    bins = reliability_bins(y_true, prob, n_bins)
    if bins.counts.sum() == 0:
        raise MetricInputError("no cases to compute a calibration error on")
    filled = bins.counts > 0
    gaps = np.abs(bins.fraction_positive[filled] - bins.mean_probability[filled])
    return float(np.sum(bins.counts[filled] * gaps) / bins.counts.sum())


def descriptor_agreement(
    reference: Sequence[Hashable | None], predicted: Sequence[Hashable | None]
) -> Agreement:
    """Accuracy and Cohen's kappa of one descriptor (e.g. shape) against reference terms.

    Args:
        reference: reference term per case; None where unknown (the case is skipped).
        predicted: predicted term per case.

    Returns:
        The agreement; kappa None when no cases remain or all are one category.

    Raises:
        MetricInputError: the lengths differ.
    """
    if len(reference) != len(predicted):
        raise MetricInputError(f"{len(reference)} reference terms for {len(predicted)} predictions")
    pairs = [(str(r), str(p)) for r, p in zip(reference, predicted, strict=True) if r is not None]
    if not pairs:
        return Agreement(0, None, None, NO_CASES)
    truth, pred = (list(column) for column in zip(*pairs, strict=True))
    accuracy = float(np.mean([t == p for t, p in pairs]))
    if len(set(truth) | set(pred)) < 2:
        return Agreement(len(pairs), accuracy, None, ONE_CATEGORY)
    from sklearn.metrics import cohen_kappa_score

    return Agreement(len(pairs), accuracy, float(cohen_kappa_score(truth, pred)))


def margin_agreement(
    reference: Sequence[Sequence[Margin] | None], predicted: Sequence[Sequence[Margin]]
) -> dict[str, Agreement]:
    """Agreement of margin terms: circumscribed or not, and each term present or not.

    Args:
        reference: reference margin terms per case; None or empty where unknown (skipped).
        predicted: predicted margin terms per case.

    Returns:
        One agreement per key: ``circumscribed`` (the margin is exactly circumscribed) and
        each other term of :class:`~data_registry.schema.Margin` (the term is present).

    Raises:
        MetricInputError: the lengths differ.
    """
    if len(reference) != len(predicted):
        raise MetricInputError(
            f"{len(reference)} reference margins for {len(predicted)} predictions"
        )
    known = [(set(r), set(p)) for r, p in zip(reference, predicted, strict=True) if r]
    result = {}
    for term in Margin:
        if term is Margin.CIRCUMSCRIBED:
            presence = [(r == {term}, p == {term}) for r, p in known]
        else:
            presence = [(term in r, term in p) for r, p in known]
        result[term.value] = descriptor_agreement(
            [t for t, _ in presence], [p for _, p in presence]
        )
    return result


def summarize(
    y_true: ArrayLike,
    prob: ArrayLike,
    *,
    groups: Mapping[str, Sequence[str]] | None = None,
    thresholds: Mapping[str, float] = DEFAULT_THRESHOLDS,
    dice_per_case: ArrayLike | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    confidence: float = CONFIDENCE,
    n_bins: int = N_BINS,
    seed: int = 0,
) -> dict:
    """The same metrics pooled and per group (e.g. per site and per scanner).

    Args:
        y_true: reference labels, 0 or 1.
        prob: predicted probabilities of malignancy.
        groups: grouping name (``"site"``, ``"scanner"``) to the group of each case.
        thresholds: operating points to report, name to threshold (e.g. the three modes).
        dice_per_case: optional Dice of each case, averaged per group.
        n_bootstrap: bootstrap resamples of the AUC intervals.
        confidence: coverage of the intervals.
        n_bins: bins of the calibration error.
        seed: seed of the resampling.

    Returns:
        ``{"pooled": block, "groups": {grouping: {group: block}}}``; a block holds ``n``,
        ``n_positive``, ``n_negative``, ``auc`` (:meth:`AucResult.to_dict`), ``ece``,
        ``brier``, ``thresholds`` (name to :meth:`ThresholdMetrics.to_dict`) and, when Dice
        is given, ``dice_mean``. Groups are sorted by name.

    Raises:
        MetricInputError: as for the metrics, or a grouping's length differs from the cases.
    """
    y = _labels(y_true)
    p = _probabilities(prob, len(y))
    d = None if dice_per_case is None else _scores(dice_per_case, len(y))
    settings = {"thresholds": thresholds, "n_bootstrap": n_bootstrap, "confidence": confidence}
    settings |= {"n_bins": n_bins, "seed": seed}
    summary: dict = {"pooled": _block(y, p, d, **settings), "groups": {}}
    for name, labels in (groups or {}).items():
        labels = np.asarray([str(label) for label in labels])
        if len(labels) != len(y):
            raise MetricInputError(
                f"grouping {name!r} has {len(labels)} entries for {len(y)} cases"
            )
        summary["groups"][name] = {
            group: _block(
                y[labels == group],
                p[labels == group],
                None if d is None else d[labels == group],
                **settings,
            )
            for group in sorted(set(labels))
        }
    return summary


def _block(
    y: NDArray,
    p: NDArray,
    d: NDArray | None,
    *,
    thresholds: Mapping[str, float],
    n_bootstrap: int,
    confidence: float,
    n_bins: int,
    seed: int,
) -> dict:
    auc = auc_with_ci(y, p, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    block = {
        "n": len(y),
        "n_positive": auc.n_positive,
        "n_negative": auc.n_negative,
        "auc": auc.to_dict(),
        "ece": expected_calibration_error(y, p, n_bins),
        "brier": float(np.mean((p - y) ** 2)),
        "thresholds": {
            name: threshold_metrics(y, p, t).to_dict() for name, t in thresholds.items()
        },
    }
    if d is not None:
        block["dice_mean"] = float(d.mean())
    return block


def _labels(y_true: ArrayLike) -> NDArray[np.int64]:
    y = np.asarray(y_true)
    if y.ndim != 1 or y.size == 0:
        raise MetricInputError(f"expected a non-empty 1-D array of labels; got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.number) or not np.all(np.isin(y, (0, 1))):
        raise MetricInputError(f"labels must be 0 (benign) or 1 (malignant); got {np.unique(y)}")
    return y.astype(np.int64)


def _scores(score: ArrayLike, n: int) -> NDArray[np.float64]:
    s = np.asarray(score, dtype=np.float64)
    if s.shape != (n,):
        raise MetricInputError(f"expected {n} scores (one per label); got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise MetricInputError("scores must be finite numbers (no NaN or inf)")
    return s


def _probabilities(prob: ArrayLike, n: int) -> NDArray[np.float64]:
    p = _scores(prob, n)
    if p.min() < 0.0 or p.max() > 1.0:
        raise MetricInputError(f"probabilities must lie in [0, 1]; got {p.min()}..{p.max()}")
    return p


def _check_bootstrap(n_bootstrap: int, confidence: float) -> None:
    if n_bootstrap < 1:
        raise MetricInputError(f"n_bootstrap must be at least 1; got {n_bootstrap}")
    if not 0.0 < confidence < 1.0:
        raise MetricInputError(f"confidence must lie in (0, 1); got {confidence}")


def _stratified_indices(y: NDArray, n_bootstrap: int, seed: int) -> tuple[NDArray, NDArray]:
    """Resampled case indices, positives and negatives drawn separately: (B, n_pos), (B, n_neg)."""
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    pos = positives[rng.integers(0, len(positives), (n_bootstrap, len(positives)))]
    neg = negatives[rng.integers(0, len(negatives), (n_bootstrap, len(negatives)))]
    return pos, neg


def _bootstrap_aucs(score: NDArray, pos: NDArray, neg: NDArray) -> NDArray[np.float64]:
    """AUC of each resample (row of ``pos``/``neg``), as the Mann-Whitney statistic.

    Scores are replaced by the index of their distinct value; per resample the negatives are
    counted per value, and each positive scores the negatives below it plus half the ties.
    """
    _, rank = np.unique(score, return_inverse=True)
    n_values = int(rank.max()) + 1
    n_boot, n_pos = pos.shape
    n_neg = neg.shape[1]
    chunk = max(1, _CELLS_PER_CHUNK // n_values)
    aucs = np.empty(n_boot)
    for start in range(0, n_boot, chunk):
        stop = min(start + chunk, n_boot)
        offsets = (np.arange(stop - start) * n_values)[:, None]
        neg_counts = np.bincount(
            (rank[neg[start:stop]] + offsets).ravel(), minlength=(stop - start) * n_values
        ).reshape(stop - start, n_values)
        below = np.cumsum(neg_counts, axis=1) - neg_counts
        credit = below + 0.5 * neg_counts
        wins = np.take_along_axis(credit, rank[pos[start:stop]], axis=1).sum(axis=1)
        aucs[start:stop] = wins / (n_pos * n_neg)
    return aucs


def _interval(values: NDArray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)
