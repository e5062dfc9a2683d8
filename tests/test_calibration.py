"""Temperature scaling, BI-RADS bands and the three operating modes."""

from __future__ import annotations

import json

import numpy as np
import pytest

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


def test_a_margin_raises_both_validation_targets() -> None:
    y, p = _validation()
    plain = C.choose_operating_points(y, p)
    safe = C.choose_operating_points(y, p, margin=0.03)
    assert safe.point("high-sensitivity").sensitivity >= C.TARGET_SENSITIVITY + 0.03
    assert safe.point("high-specificity").specificity >= C.TARGET_SPECIFICITY + 0.03
    assert safe.point("high-sensitivity").threshold <= plain.point("high-sensitivity").threshold
    assert safe.point("high-specificity").threshold >= plain.point("high-specificity").threshold
    assert safe.point("high-accuracy") == plain.point("high-accuracy")
    with pytest.raises(CalibrationError, match="margin"):
        C.choose_operating_points(y, p, margin=0.2)


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
