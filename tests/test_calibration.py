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


# -- histogram equivalents (federated calibration: the vendor sees per-class counts only) ------


def _logit_validation(seed: int = 4, n_mal: int = 90, n_ben: int = 210):
    rng = np.random.default_rng(seed)
    z = np.concatenate([rng.normal(1.2, 1.6, n_mal), rng.normal(-1.4, 1.3, n_ben)]) * 1.8
    return np.repeat([1, 0], [n_mal, n_ben]), z


def _histograms(y: np.ndarray, z: np.ndarray, bins: C.LogitBins):
    return bins.histogram(z[y == 0]), bins.histogram(z[y == 1])


def test_logit_bins_count_every_logit_once_with_open_ends() -> None:
    bins = C.LogitBins(low=-2.0, high=2.0, count=4)
    counts = bins.histogram([-5.0, -2.0, -1.5, -1.0, 0.0, 1.999, 2.0, 9.0])
    assert counts.tolist() == [1, 2, 1, 1, 1, 2]  # below, [-2,-1), [-1,0), [0,1), [1,2), >= 2
    assert bins.size == 6 and bins.lower_edges()[0] == -np.inf
    with pytest.raises(CalibrationError):
        bins.histogram([0.0, np.nan])
    with pytest.raises(ValueError, match="low < high"):  # pydantic's ValidationError
        C.LogitBins(low=1.0, high=1.0)


def test_binned_temperature_matches_the_exact_fit() -> None:
    logits, labels = _calibrated_logits()
    bins = C.LogitBins()
    for temperature in (0.5, 2.5):
        z = logits * temperature
        benign, malignant = _histograms(labels, z, bins)
        exact = C.fit_temperature(z, labels)
        assert C.fit_temperature_binned(benign, malignant, bins) == pytest.approx(exact, rel=1e-3)
    with pytest.raises(CalibrationError):
        C.fit_temperature_binned(np.zeros(bins.size), malignant, bins)


@pytest.mark.parametrize("confidence", [None, 0.95])
def test_binned_operating_points_match_the_exact_ones_within_a_bin(confidence) -> None:
    y, z = _logit_validation()
    bins = C.LogitBins()
    temperature = C.fit_temperature(z, y)
    p = C.apply_temperature(z, temperature)
    exact = C.choose_operating_points(y, p, confidence=confidence)
    binned = C.choose_operating_points_binned(
        *_histograms(y, z, bins), bins, temperature=temperature, confidence=confidence
    )
    width = (bins.high - bins.low) / bins.count
    n_mal, n_ben = int(y.sum()), int((1 - y).sum())

    def logit(prob: float) -> float:
        return float(np.log(prob / (1 - prob)) * temperature)

    for mode in C.Mode:
        point, reference = binned.point(mode), exact.point(mode)
        check = threshold_metrics(y, p, point.threshold)  # the rates reported are the real ones
        assert (point.sensitivity, point.specificity) == pytest.approx(
            (check.sensitivity, check.specificity)
        )
        # cases sharing a bin cannot be told apart: at most a couple of cases' difference
        assert abs(point.sensitivity - reference.sensitivity) <= 2 / n_mal + 1e-12
        assert abs(point.specificity - reference.specificity) <= 2 / n_ben + 1e-12
    assert binned.high_sensitivity.sensitivity >= C.TARGET_SENSITIVITY
    assert binned.high_specificity.specificity >= C.TARGET_SPECIFICITY
    if confidence is not None:  # the bound's bin edge, moved outward: never a lower rate
        for mode in (C.Mode.HIGH_SENSITIVITY, C.Mode.HIGH_SPECIFICITY):
            gap = logit(binned.point(mode).threshold) - logit(exact.point(mode).threshold)
            assert abs(gap) <= width + 1e-9
        assert binned.high_sensitivity.sensitivity >= exact.high_sensitivity.sensitivity
        assert binned.high_specificity.specificity >= exact.high_specificity.specificity


def test_binned_tolerance_thresholds_keep_the_declared_rates_on_new_patients() -> None:
    rng = np.random.default_rng(5)
    bins = C.LogitBins(count=400)  # coarse bins: the bound must still hold
    kept, draws = np.zeros(2), 300
    for _ in range(draws):
        y, p = _draw_validation(rng)
        z = np.log(p / (1 - p))
        points = C.choose_operating_points_binned(
            *_histograms(y, z, bins), bins, temperature=1.0, confidence=0.9
        )
        sens, _ = _new_patient_rates(points.point("high-sensitivity").threshold)
        _, spec = _new_patient_rates(points.point("high-specificity").threshold)
        kept += (sens >= C.TARGET_SENSITIVITY, spec >= C.TARGET_SPECIFICITY)
    assert np.all(kept / draws >= 0.87)


def test_summed_site_statistics_equal_the_pooled_ones_and_kappa_matches(tiny_world) -> None:
    """Statistics of two halves add up to those of the whole, and the vendor's fit from them
    gives the pooled temperature, modes and kappa the exact path computes."""
    from models import evaluation
    from models import validation_stats as V
    from models.packaging import load_weights
    from models.samples import samples_from_registries
    from models.train import predict

    model, _ = load_weights(tiny_world.bundle)
    samples = samples_from_registries(tiny_world.registries)
    outputs = predict(model, samples)
    y = np.array([s.label for s in samples])
    z = np.array([o.malignancy_logit for o in outputs])
    # the barely trained model's logits are small: bins over their range, as fine as 4000 allow
    reach = 1.01 * float(np.abs(z).max())
    bins = C.LogitBins(low=-reach, high=reach, count=4000)
    whole = V.validation_statistics(samples, outputs, bins)
    half = len(samples) // 2
    parts = V.validation_statistics(samples[:half], outputs[:half], bins).merge(
        V.validation_statistics(samples[half:], outputs[half:], bins)
    )
    assert parts.model_dump(exclude={"sites"}) == whole.model_dump(exclude={"sites"})
    assert parts.sites == 2
    _, candidates = evaluation.choose_descriptor_sources(samples, outputs)
    for source in V.SOURCES:
        for name in V.DESCRIPTORS:
            ours = V.agreement_from_confusion(whole.confusion[source][name])
            theirs = candidates[source].get(name)
            if theirs is None:
                assert ours["n"] == 0
                continue
            assert ours["n"] == theirs["n"]
            assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
            if theirs["kappa"] is None:
                assert ours["kappa"] is None
            else:
                assert ours["kappa"] == pytest.approx(theirs["kappa"])
    fitted = V.fit_calibration(whole, confidence=0.95, n_bootstrap=200)
    assert fitted.temperature == pytest.approx(C.fit_temperature(z, y), rel=0.01)
    assert fitted.validation["n"] == len(samples)
    pairs = z[y == 1][:, None] - z[y == 0][None, :]
    exact_auc = float(np.mean(pairs > 0) + 0.5 * np.mean(pairs == 0))
    assert fitted.validation["auc"]["auc"] == pytest.approx(exact_auc, abs=0.02)
    assert set(fitted.descriptor_sources.values()) <= {"heads", "rules"}


def test_laplace_noise_has_the_stated_scale_and_leaves_counts_alone() -> None:
    from models import validation_stats as V

    bins = C.LogitBins(low=-4, high=4, count=16)
    confusion = {
        s: {d: np.zeros(V.confusion_shape(d), dtype=int).tolist() for d in V.DESCRIPTORS}
        for s in V.SOURCES
    }
    stats = V.ValidationStatistics(
        bins=bins, benign=[5.0] * bins.size, malignant=[3.0] * bins.size,
        benign_cases=5 * bins.size, malignant_cases=3 * bins.size, dice_sum=1.0,
        confusion=confusion,
    )  # fmt: skip
    rng = np.random.default_rng(0)
    noise = np.concatenate(
        [np.asarray(V.add_laplace_noise(stats, 0.5, rng).benign) - 5.0 for _ in range(2000)]
    )
    assert np.mean(np.abs(noise)) == pytest.approx(1 / 0.5, rel=0.05)  # E|Laplace(b)| = b
    noisy = V.add_laplace_noise(stats, 2.0, rng)
    assert noisy.epsilon == 2.0 and noisy.benign_cases == stats.benign_cases
    with pytest.raises(CalibrationError):
        V.add_laplace_noise(stats, 0.0, rng)


def test_noised_histograms_are_cleaned_before_the_fit() -> None:
    """Laplace noise in the many empty bins would read as phantom cases at the extremes; the fit
    first zeroes bins under two standard deviations of the summed noise."""
    from models import validation_stats as V

    rng = np.random.default_rng(1)
    bins = C.LogitBins(low=-10, high=10, count=40)
    confusion = {
        s: {d: np.zeros(V.confusion_shape(d), dtype=int).tolist() for d in V.DESCRIPTORS}
        for s in V.SOURCES
    }
    sites = []
    for _ in range(3):
        z_ben, z_mal = rng.normal(-1.5, 1.0, 80), rng.normal(1.5, 1.0, 40)
        sites.append(
            V.ValidationStatistics(
                bins=bins,
                benign=bins.histogram(z_ben).astype(float).tolist(),
                malignant=bins.histogram(z_mal).astype(float).tolist(),
                benign_cases=80,
                malignant_cases=40,
                dice_sum=0.0,
                confusion=confusion,
            )
        )
    exact = sites[0].merge(sites[1]).merge(sites[2])
    empty = (np.asarray(exact.benign) == 0) & (np.asarray(exact.malignant) == 0)
    phantom = {2.0: 0.0, 0.0: 0.0}
    for _ in range(20):
        total = None
        for stats in sites:
            noisy = V.add_laplace_noise(stats, 1.0, rng)
            total = noisy if total is None else total.merge(noisy)
        for floor in phantom:
            benign, malignant = V.denoised_histograms(total, floor)
            phantom[floor] += float((benign + malignant)[empty].sum())
        V.fit_calibration(total, confidence=0.95, n_bootstrap=20)  # usable
    assert phantom[2.0] < 0.2 * phantom[0.0]
    assert V.denoised_histograms(exact)[0].tolist() == exact.benign  # exact counts: untouched
