"""Temperature scaling, BI-RADS bands and the three operating modes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import beta, norm

from data_registry.schema import BiRads
from models import calibration as C
from models.exceptions import CalibrationError
from models.metrics import threshold_metrics


def _calibrated_logits(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose sigmoid is the true probability of the drawn label."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logits))).astype(int)
    return logits, labels


@pytest.mark.parametrize("temperature", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(temperature: float) -> None:
    logits, labels = _calibrated_logits()
    fitted = C.fit_temperature(logits * temperature, labels)
    assert fitted == pytest.approx(temperature, rel=0.08)
    probabilities = C.apply_temperature(logits * temperature, fitted)
    assert probabilities == pytest.approx(1 / (1 + np.exp(-logits)), abs=0.03)


def test_temperature_scaling_of_class_logits() -> None:
    logits, labels = _calibrated_logits()
    two_class = np.column_stack([np.zeros_like(logits), logits]) * 3.0
    assert C.fit_temperature(two_class, labels) == pytest.approx(3.0, rel=0.08)
    assert C.apply_temperature(two_class, 3.0).sum(axis=1) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("logits", "labels"),
    [([0.1, 0.2], [1, 1]), ([0.1, 0.2], [0, 2]), ([0.1, np.inf], [0, 1]), ([0.1], [0, 1])],
    ids=["one-class", "label-range", "inf", "length"],
)
def test_temperature_scaling_rejects_bad_input(logits: list[float], labels: list[int]) -> None:
    with pytest.raises(CalibrationError):
        C.fit_temperature(logits, labels)


@pytest.mark.parametrize(
    ("p", "category"),
    [
        (0.0, BiRads.B3),
        (0.02, BiRads.B3),
        (0.0201, BiRads.B4A),
        (0.10, BiRads.B4A),
        (0.1001, BiRads.B4B),
        (0.50, BiRads.B4B),
        (0.5001, BiRads.B4C),
        (0.9499, BiRads.B4C),
        (0.95, BiRads.B5),
        (1.0, BiRads.B5),
    ],
)
def test_birads_band_edges(p: float, category: BiRads) -> None:
    assert C.birads_for(p) is category


@pytest.mark.parametrize("p", [-0.01, 1.01, float("nan")])
def test_birads_rejects_non_probabilities(p: float) -> None:
    with pytest.raises(CalibrationError):
        C.birads_for(p)


def _validation(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.2, n))))
    return y, p


def test_operating_points_meet_their_constraints_on_validation() -> None:
    y, p = _validation()
    points = C.choose_operating_points(y, p)
    candidates = np.unique(p)
    rates = {t: threshold_metrics(y, p, t) for t in candidates}

    sens = points.point("high-sensitivity")
    assert sens.sensitivity >= C.TARGET_SENSITIVITY
    higher = candidates[candidates > sens.threshold]
    assert all(rates[t].sensitivity < C.TARGET_SENSITIVITY for t in higher)  # the highest such

    spec = points.point(C.Mode.HIGH_SPECIFICITY)
    assert spec.specificity >= C.TARGET_SPECIFICITY
    lower = candidates[candidates < spec.threshold]
    assert all(rates[t].specificity < C.TARGET_SPECIFICITY for t in lower)  # the lowest such

    accuracy = points.point("high-accuracy")
    best = max(r.balanced_accuracy for r in rates.values())
    assert (accuracy.sensitivity + accuracy.specificity) / 2 == pytest.approx(best)

    for mode in C.Mode:  # the reported rates are those the threshold achieves
        point = points.point(mode)
        check = rates[point.threshold]
        assert (point.sensitivity, point.specificity) == pytest.approx(
            (check.sensitivity, check.specificity)
        )


@pytest.mark.parametrize(("n", "rate"), [(30, 0.95), (59, 0.95), (85, 0.95), (400, 0.9)])
def test_tolerance_rank_is_the_largest_order_statistic_with_the_wanted_coverage(
    n: int, rate: float
) -> None:
    # the share of the class below the r-th lowest score is Beta(r, n - r + 1) distributed
    coverage = beta.cdf(1.0 - rate, np.arange(1, n + 1), n - np.arange(1, n + 1) + 1)
    rank = C.tolerance_rank(n, rate, 0.95)
    if coverage[0] < 0.95:  # too few cases for the guarantee: the most cautious threshold
        assert rank == 1
    else:
        assert coverage[rank - 1] >= 0.95 > coverage[rank]


def _draw_validation(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """60 malignant and 120 benign calibrated probabilities from known score distributions."""
    scores = np.concatenate([rng.normal(1.5, 1.0, 60), rng.normal(-1.5, 1.0, 120)])
    return np.repeat([1, 0], [60, 120]), 1 / (1 + np.exp(-scores))


def _new_patient_rates(threshold: float) -> tuple[float, float]:
    """True sensitivity and specificity of a threshold under the drawing distributions."""
    logit = np.log(threshold / (1 - threshold))
    return float(norm.sf(logit, 1.5, 1.0)), float(norm.cdf(logit, -1.5, 1.0))


def test_confident_thresholds_keep_the_declared_rates_on_new_patients() -> None:
    rng = np.random.default_rng(3)
    kept = {None: np.zeros(2), 0.9: np.zeros(2)}
    draws = 400
    for _ in range(draws):
        y, p = _draw_validation(rng)
        for confidence in kept:
            points = C.choose_operating_points(y, p, confidence=confidence)
            sens, _ = _new_patient_rates(points.point("high-sensitivity").threshold)
            _, spec = _new_patient_rates(points.point("high-specificity").threshold)
            kept[confidence] += (sens >= C.TARGET_SENSITIVITY, spec >= C.TARGET_SPECIFICITY)
    # point estimates keep the rates about half the time; the tolerance bounds as promised
    # (60 malignant cases cannot give 90 % confidence at sensitivity 0.95: the lowest
    # malignant score is used, which keeps it with probability 1 - 0.95**60 = 0.954)
    assert np.all(kept[None] / draws < 0.75)
    assert np.all(kept[0.9] / draws >= 0.87)


def test_confident_thresholds_sit_at_the_order_statistic_of_their_rank() -> None:
    y, p = _draw_validation(np.random.default_rng(0))
    points = C.choose_operating_points(y, p, confidence=0.95)
    malignant, benign = np.sort(p[y == 1]), np.sort(p[y == 0])[::-1]
    assert points.point("high-sensitivity").threshold == malignant[0]  # n = 60: rank 1
    assert points.point("high-sensitivity").sensitivity == 1.0
    rank = C.tolerance_rank(120, C.TARGET_SPECIFICITY, 0.95)
    spec = points.point("high-specificity")
    assert benign[rank - 1] < spec.threshold <= benign[rank - 2]
    assert spec.specificity == pytest.approx(1 - (rank - 1) / 120)
    plain = C.choose_operating_points(y, p)
    assert points.point("high-accuracy") == plain.point("high-accuracy")
    with pytest.raises(CalibrationError, match="confidence"):
        C.choose_operating_points(y, p, confidence=1.0)


def test_operating_points_round_trip_through_bundle_metadata() -> None:
    points = C.choose_operating_points(*_validation())
    data = json.loads(json.dumps(points.to_dict()))
    assert list(data) == ["high-sensitivity", "high-accuracy", "high-specificity"]
    assert set(data["high-accuracy"]) == {"threshold", "sensitivity", "specificity"}
    assert C.OperatingPoints.from_dict(data) == points
    assert points.thresholds()["high-specificity"] == points.high_specificity.threshold


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d.pop("high-accuracy"),
        lambda d: d.update({"balanced": d["high-accuracy"]}),
        lambda d: d["high-accuracy"].update({"threshold": 1.5}),
        lambda d: d.update({"high_accuracy": d.pop("high-accuracy")}),
    ],
    ids=["missing-mode", "unknown-mode", "out-of-range", "python-name"],
)
def test_malformed_operating_points_are_refused(change) -> None:
    data = C.choose_operating_points(*_validation()).to_dict()
    change(data)
    with pytest.raises(CalibrationError):
        C.OperatingPoints.from_dict(data)


def test_suggestion_at_and_around_the_threshold() -> None:
    points = C.choose_operating_points(*_validation())
    t = points.point("high-accuracy").threshold
    assert points.suggest(t, "high-accuracy") == "malignant"
    assert points.suggest(np.nextafter(t, 0), "high-accuracy") == "benign"
    with pytest.raises(CalibrationError):
        points.suggest(0.5, "balanced")


def test_operating_points_need_both_classes() -> None:
    with pytest.raises(CalibrationError):
        C.choose_operating_points([1, 1, 1], [0.2, 0.4, 0.9])
