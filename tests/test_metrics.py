"""Evaluation metrics against sklearn and known values; bootstrap behaviour; edge cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from data_registry.schema import Margin
from models import metrics as M
from models.exceptions import MetricInputError


def _cases(n: int, separation: float = 1.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    logits = separation * (2 * y - 1) + rng.normal(0.0, 1.0, n)
    return y, 1 / (1 + np.exp(-logits))


def test_auc_matches_sklearn_and_its_interval_contains_it() -> None:
    y, p = _cases(300)
    result = M.auc_with_ci(y, p, seed=1)
    assert result.auc == pytest.approx(roc_auc_score(y, p))
    assert result.ci_low < result.auc < result.ci_high
    assert (result.n_positive, result.n_negative) == (int(y.sum()), int(len(y) - y.sum()))
    assert result == M.auc_with_ci(y, p, seed=1)  # seeded


def test_bootstrap_auc_counts_ties_like_sklearn() -> None:
    y, p = _cases(200)
    p = np.round(p, 1)  # many ties
    identity = (np.flatnonzero(y == 1)[None, :], np.flatnonzero(y == 0)[None, :])
    assert M._bootstrap_aucs(p, *identity)[0] == pytest.approx(roc_auc_score(y, p))


def test_interval_narrows_with_more_cases() -> None:
    small = M.auc_with_ci(*_cases(100), seed=0)
    large = M.auc_with_ci(*_cases(2000), seed=0)
    assert large.ci_high - large.ci_low < 0.5 * (small.ci_high - small.ci_low)


def test_one_class_gives_no_auc_with_a_reason() -> None:
    result = M.auc_with_ci([1, 1, 1], [0.2, 0.5, 0.9])
    assert result.auc is None and result.ci_low is None and result.reason == M.ONE_CLASS


def test_point_auc_counts_pairs_and_is_nan_for_one_class() -> None:
    y, s = np.array([0, 0, 1, 1, 0]), np.array([0.1, 0.7, 0.7, 0.9, 0.3])
    # malignant-benign pairs: 0.7 vs (0.1, 0.7, 0.3) = 2.5, 0.9 vs all three = 3, of 6 pairs
    assert M.auc(y, s) == pytest.approx(5.5 / 6)
    assert M.auc(y.astype(float), s) == M.auc(y, s)  # labels as 0.0 / 1.0 floats
    assert np.isnan(M.auc([1, 1], [0.2, 0.4]))
    with pytest.raises(MetricInputError, match="finite"):
        M.auc([0, 1], [0.2, float("nan")])


def test_paired_difference_of_a_model_with_itself_is_zero() -> None:
    y, p = _cases(200)
    result = M.paired_auc_difference(y, p, p)
    assert result.delta == 0.0 and result.ci_low == 0.0 and result.ci_high == 0.0
    assert result.is_non_inferior(margin=0.01)


def test_paired_difference_detects_a_better_model() -> None:
    y, weak = _cases(600, separation=0.5)
    rng = np.random.default_rng(5)
    strong = np.clip(0.7 * y + 0.3 * weak + rng.normal(0, 0.05, len(y)), 0, 1)
    better = M.paired_auc_difference(y, weak, strong)
    assert better.delta == pytest.approx(roc_auc_score(y, strong) - roc_auc_score(y, weak))
    assert better.ci_low > 0
    worse = M.paired_auc_difference(y, strong, weak)
    assert not worse.is_non_inferior(margin=0.02)
    with pytest.raises(MetricInputError):
        M.paired_auc_difference([0, 0], [0.1, 0.2], [0.2, 0.1])


def test_threshold_metrics_known_values() -> None:
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0]
    p = [0.9, 0.8, 0.5, 0.2, 0.6, 0.4, 0.3, 0.1, 0.5]
    result = M.threshold_metrics(y, p, 0.5)  # at or above the threshold is malignant
    assert (result.tp, result.fn, result.fp, result.tn) == (3, 1, 2, 3)
    assert result.sensitivity == pytest.approx(0.75)
    assert result.specificity == pytest.approx(0.6)
    assert result.balanced_accuracy == pytest.approx(0.675)
    no_positives = M.threshold_metrics([0, 0], [0.1, 0.9], 0.5)
    assert no_positives.sensitivity is None and no_positives.balanced_accuracy is None


def test_dice_per_case_and_mean() -> None:
    a = np.zeros((4, 4), dtype=bool)
    a[:2] = True  # 8 pixels
    b = np.zeros((4, 4), dtype=bool)
    b[1:3] = True  # 8 pixels, 4 shared
    assert M.dice(a, b) == pytest.approx(0.5)
    assert M.dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0
    scores = M.dice_scores([a, a], [b, a])
    assert scores.tolist() == pytest.approx([0.5, 1.0]) and scores.mean() == pytest.approx(0.75)
    with pytest.raises(MetricInputError):
        M.dice(a, np.zeros((3, 3)))


def test_expected_calibration_error_known_value() -> None:
    # bin [0.2, 0.3): p 0.25 x4 with 1 positive -> gap 0; bin [0.8, 0.9): p 0.8 x4, 2 positive
    y = [1, 0, 0, 0, 1, 1, 0, 0]
    p = [0.25] * 4 + [0.8] * 4
    assert M.expected_calibration_error(y, p) == pytest.approx(0.5 * 0.3)
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == 0.0  # p = 1 falls in the last bin
    bins = M.reliability_bins(y, p, n_bins=5)
    assert bins.counts.tolist() == [0, 4, 0, 0, 4]


def test_descriptor_agreement_matches_sklearn_and_skips_unknown() -> None:
    truth = ["oval", "round", "irregular", "oval", None, "irregular"]
    pred = ["oval", "oval", "irregular", "oval", "round", "round"]
    result = M.descriptor_agreement(truth, pred)
    known = [(t, p) for t, p in zip(truth, pred, strict=True) if t is not None]
    assert result.n == 5 and result.accuracy == pytest.approx(0.6)
    assert result.kappa == pytest.approx(cohen_kappa_score(*zip(*known, strict=True)))
    single = M.descriptor_agreement(["oval", "oval"], ["oval", "oval"])
    assert single.kappa is None and single.accuracy == 1.0 and single.reason == M.ONE_CATEGORY
    assert M.descriptor_agreement([None], ["oval"]).reason == M.NO_CASES


def test_margin_agreement_per_term() -> None:
    truth = [(Margin.CIRCUMSCRIBED,), (Margin.INDISTINCT, Margin.ANGULAR), (Margin.SPICULATED,)]
    pred = [(Margin.CIRCUMSCRIBED,), (Margin.INDISTINCT,), (Margin.INDISTINCT,)]
    result = M.margin_agreement(truth, pred)
    assert set(result) == {m.value for m in Margin}
    assert result["circumscribed"].accuracy == 1.0
    assert result["indistinct"].accuracy == pytest.approx(2 / 3)
    assert result["angular"].accuracy == pytest.approx(2 / 3)


def test_summarize_pooled_and_per_group_without_crashing_on_one_class() -> None:
    y, p = _cases(120)
    site = np.where(np.arange(120) < 60, "site-a", "site-b")
    y[site == "site-b"] = 1  # one class only at site-b
    scanner = np.where(np.arange(120) % 2 == 0, "L15", "L9")
    summary = M.summarize(
        y,
        p,
        groups={"site": site, "scanner": scanner},
        thresholds={"high-sensitivity": 0.2, "high-specificity": 0.8},
        dice_per_case=np.full(120, 0.9),
        n_bootstrap=200,
    )
    assert summary["pooled"]["n"] == 120
    assert summary["pooled"]["auc"]["auc"] == pytest.approx(roc_auc_score(y, p))
    assert set(summary["groups"]["site"]) == {"site-a", "site-b"}
    assert summary["groups"]["site"]["site-b"]["auc"]["auc"] is None
    assert summary["groups"]["site"]["site-b"]["auc"]["reason"] == M.ONE_CLASS
    assert (
        summary["groups"]["site"]["site-b"]["thresholds"]["high-sensitivity"]["specificity"] is None
    )
    assert set(summary["groups"]["scanner"]["L9"]["thresholds"]) == {
        "high-sensitivity",
        "high-specificity",
    }
    assert summary["groups"]["scanner"]["L15"]["dice_mean"] == pytest.approx(0.9)
    json.dumps(summary)  # JSON-ready


@pytest.mark.parametrize(
    ("y", "p"),
    [([0, 1, 2], [0.1, 0.2, 0.3]), ([0, 1], [0.1]), ([0, 1], [0.1, np.nan]), ([0, 1], [0.1, 1.5])],
    ids=["label-2", "length", "nan", "above-1"],
)
def test_bad_inputs_raise(y: list[int], p: list[float]) -> None:
    with pytest.raises(MetricInputError):
        M.threshold_metrics(y, p, 0.5)
    with pytest.raises(ValueError):  # the analysis errors are ValueErrors too
        M.expected_calibration_error(y, p)
