"""Outline-feature fusion: features of known shapes, the logistic fit, cross-fitting, parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.draw import disk, ellipse, polygon
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from models import fusion as F
from models.data import synthetic_lesions
from models.exceptions import ModelError
from models.export import export_onnx
from models.geometry import RoiSpec
from models.inference import OnnxLesionModel, analyze_image
from models.train import TrainConfig, build_model, torch_runner

SIZE = 200


def _image(mask: np.ndarray) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = np.full(mask.shape, 120.0) + rng.normal(0, 6, mask.shape)
    image[mask] = 50.0
    return np.clip(image, 0, 255).astype(np.uint8)


def _shape(kind: str) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    c = SIZE // 2
    if kind == "circle":
        mask[disk((c, c), 30, shape=mask.shape)] = True
    elif kind == "ellipse":
        mask[ellipse(c, c, 18, 36, shape=mask.shape)] = True
    else:  # a ten-pointed star
        angles = np.linspace(0, 2 * np.pi, 20, endpoint=False)
        radii = np.where(np.arange(20) % 2 == 0, 42.0, 16.0)
        mask[polygon(c + radii * np.sin(angles), c + radii * np.cos(angles), mask.shape)] = True
    return mask


def _features(kind: str) -> dict[str, float]:
    mask = _shape(kind)
    values = F.feature_vector(_image(mask), mask)
    return dict(zip(F.FUSION_FEATURES, values, strict=True))


def test_features_of_known_shapes() -> None:
    circle, oval, star = _features("circle"), _features("ellipse"), _features("star")
    assert len(F.FUSION_FEATURES) >= 25
    assert circle["solidity"] > 0.97 and circle["convexity"] > 0.97
    assert circle["axis_ratio"] > 0.95 and circle["circularity"] > 0.9
    assert oval["axis_ratio"] == pytest.approx(18 / 36, abs=0.05)
    assert oval["aspect"] == pytest.approx(18 / 36, abs=0.05)  # wider than tall
    assert star["solidity"] < 0.75 and star["convexity"] < 0.9
    assert star["angularity_deg"] > circle["angularity_deg"] + 30
    assert star["spike_count"] >= 5 > circle["spike_count"]
    assert circle["ring_contrast"] > 0.3  # the lesion is darker than its surroundings
    empty = F.feature_vector(_image(_shape("circle")), np.zeros((SIZE, SIZE), bool))
    assert np.isnan(empty).all()


def _data(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, len(F.FUSION_FEATURES)))
    logit = rng.normal(size=n)
    truth = 1.2 * logit + 1.5 * features[:, 2] - 1.0 * features[:, 9]
    y = (rng.random(n) < 1 / (1 + np.exp(-truth))).astype(float)
    groups = [f"g{i // 2}" for i in range(n)]  # pairs of images per patient
    return features, logit, y, groups


def test_logistic_fit_matches_scikit_learn() -> None:
    features, logit, y, _ = _data()
    x = np.column_stack([features, logit])
    for penalty in (1.0, 10.0):
        coef, intercept = F.fit_logistic(x, y, penalty)
        ref = LogisticRegression(C=1.0 / penalty, tol=1e-10, max_iter=10_000).fit(x, y)
        np.testing.assert_allclose(coef, ref.coef_[0], atol=1e-4)
        assert intercept == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_a_case_is_never_scored_by_a_fit_that_saw_it() -> None:
    features, logit, y, groups = _data(n=120)
    x = np.column_stack([features, logit])
    folds = F.group_folds(groups, y, 5, seed=0)
    for g in set(groups):  # a patient's images share a fold
        assert len({f for f, h in zip(folds, groups, strict=True) if h == g}) == 1
    assert all((y[folds == f] == 1).any() and (y[folds == f] == 0).any() for f in range(5))
    base = F.cross_fitted_logits(x, y, groups, 3.0, folds=folds)
    assert np.allclose(base, F.cross_fitted_logits(x, y, groups, 3.0, k=5, seed=0))
    for i in (0, 17, 64):  # flipping a case's label cannot change its own cross-fitted score
        flipped = y.copy()
        flipped[i] = 1 - flipped[i]
        again = F.cross_fitted_logits(x, flipped, groups, 3.0, folds=folds)
        assert again[i] == pytest.approx(base[i], abs=1e-9)
        assert np.abs(again - base).max() > 1e-6  # ... though it changes others' scores
    in_sample = F.FusionModel.fit(x, y, 3.0).logits(x)
    assert not np.allclose(in_sample, base)


def test_fusion_is_kept_only_when_it_beats_the_network_out_of_fold() -> None:
    features, logit, y, groups = _data()
    model, logits, report = F.choose_fusion(features, logit, y, groups)
    assert report["used"] and model is not None
    assert report["auc_fused_cross_fitted"] > report["auc_network"]
    x = np.column_stack([features, logit])
    expected = F.cross_fitted_logits(x, y, groups, report["penalty"], k=5, seed=0)
    np.testing.assert_allclose(logits, expected)  # what calibrates is the cross-fitted score
    noise = np.random.default_rng(5).normal(size=features.shape)
    strong = 4.0 * (y - 0.5) + np.random.default_rng(6).normal(size=len(y)) * 0.3
    model, logits, report = F.choose_fusion(noise, strong, y, groups)
    if not report["used"]:
        assert model is None and np.array_equal(logits, strong)


def test_round_trip_through_json_and_bad_metadata() -> None:
    features, logit, y, _ = _data(n=80)
    model = F.FusionModel.fit(np.column_stack([features, logit]), y, 1.0)
    again = F.FusionModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again == model
    bad = model.to_dict()
    bad["inputs"] = list(bad["inputs"])[:-1]
    with pytest.raises(ModelError):
        F.FusionModel.from_dict(bad)
    with pytest.raises(ModelError):
        F.FusionModel.from_dict({"inputs": []})


def test_fused_logits_agree_between_onnx_and_pytorch(tmp_path) -> None:
    config = TrainConfig(
        encoder="residual",
        features=(8, 16, 32, 64),
        subunits=(1, 1, 1, 1),
        spec=RoiSpec(crop_size=48, pass1_fractions=(0.15, 0.3, 0.5)),
    )
    torch.manual_seed(0)
    network = build_model(config).eval()
    onnx = OnnxLesionModel(export_onnx(network, tmp_path / "m.onnx"), num_threads=1)
    samples = synthetic_lesions(4, seed=2, size=(96, 112))
    features, logit, y, _ = _data(n=80)
    model = F.FusionModel.fit(np.column_stack([features, logit]), y, 1.0)
    runner = torch_runner(network)
    for s in samples:
        a = model.apply(s.image, onnx.analyze(s.image, s.seed))
        b = model.apply(s.image, analyze_image(s.image, s.seed, config.spec, runner, onnx.heads))
        assert np.array_equal(a.mask, b.mask)
        assert a.malignancy_logit == pytest.approx(b.malignancy_logit, abs=1e-3)


def test_a_stacked_fusion_is_fitted_on_held_out_lesions_and_reports_them_per_site() -> None:
    features, logit, y, groups = _data(n=400)
    sites = ["a" if i % 3 else "b" for i in range(len(y))]
    model, report = F.fit_stacked(features, logit, y, groups, sites)
    x = np.column_stack([features, logit])
    assert model == F.FusionModel.fit(x, y, report["penalty"])  # every row, the chosen penalty
    assert report["fitted_on"] == "out-of-fold" and report["cases"] == 400
    expected = F.cross_fitted_logits(x, y, groups, report["penalty"], k=5, seed=0)
    assert report["cv_auc_fused_cross_fitted"] == pytest.approx(
        roc_auc_score(y, expected), abs=1e-4
    )
    # the features carry signal the logit lacks, so the fusion beats the network out of fold
    assert report["cv_auc_fused_cross_fitted"] > report["cv_auc_network"] + 0.05
    assert set(report["per_site"]) == {"a", "b"}
    assert sum(row["cases"] for row in report["per_site"].values()) == 400
    none, why = F.fit_stacked(features[:6], logit[:6], y[:6], groups[:6], sites[:6])
    assert none is None and "too few" in why["reason"]


def test_a_stacked_fusion_ships_only_when_it_beats_the_network_on_unseen_validation() -> None:
    features, logit, y, groups = _data(n=400)
    model, _ = F.fit_stacked(features, logit, y, groups, ["a"] * len(y))
    val_features, val_logit, val_y, _ = _data(n=200, seed=1)  # new patients, same world
    used, logits, report = F.judge_fusion(model, val_features, val_logit, val_y)
    assert used and report["auc_fused"] > report["auc_network"]
    np.testing.assert_allclose(logits, model.logits(np.column_stack([val_features, val_logit])))
    # a fusion fitted on the opposite labels loses to the network: the network's logits remain
    wrong = F.FusionModel.fit(np.column_stack([features, logit]), 1.0 - y, 1.0)
    used, logits, report = F.judge_fusion(wrong, val_features, val_logit, val_y)
    assert not used and report["auc_fused"] < report["auc_network"]
    np.testing.assert_array_equal(logits, val_logit)
    used, _, report = F.judge_fusion(model, val_features, val_logit, np.zeros_like(val_y))
    assert not used and "one class" in report["reason"]


def test_the_stacked_fit_leaves_the_judging_cases_out() -> None:
    from models.central import stacked_fusion

    features, logit, y, groups = _data(n=300)
    oof = {
        "site_id": ["a"] * 150 + ["b"] * 150,
        "case_id": [f"c{i % 150}" for i in range(300)],  # case ids repeat across sites
        "group_id": groups,
        "label": y.tolist(),
        "logit": logit.tolist(),
        "features": list(features),
    }
    left_out = {("a", f"c{i}") for i in range(40)} | {("b", "c7")}
    model, report = stacked_fusion(oof, exclude=left_out)
    keep = np.array(
        [(s, c) not in left_out for s, c in zip(oof["site_id"], oof["case_id"], strict=True)]
    )
    assert report["cases"] == 259 == keep.sum()
    again, _ = F.fit_stacked(
        features[keep], logit[keep], y[keep], [g for g, k in zip(groups, keep, strict=True) if k],
        ["a"] * 110 + ["b"] * 149,
    )  # fmt: skip
    assert model == again


def test_the_fusion_reads_the_outline_mask_when_the_output_has_one() -> None:
    from models.inference import LesionOutput

    oval, circle = _shape("ellipse"), _shape("circle")  # each one component without holes
    image = _image(oval)
    features, logit, y, _ = _data(n=80)
    model = F.FusionModel.fit(np.column_stack([features, logit]), y, 1.0)
    shown = LesionOutput(0.0, circle, {})
    read = LesionOutput(0.0, circle, {}, outline=oval)
    assert shown.outline_mask is circle and read.outline_mask is oval
    from_oval = model.apply(image, read)
    assert np.array_equal(from_oval.mask, circle)  # the shown mask is kept
    assert from_oval.features == F.lesion_features(image, oval)
    assert from_oval.malignancy_logit == model.fused_logit(F.lesion_features(image, oval), 0.0)
    assert model.apply(image, shown).features == F.lesion_features(image, circle)


def test_the_lexicon_rules_read_the_outline_mask_too() -> None:
    from models.analysis import DESCRIPTOR_TERMS, combine_descriptors
    from models.descriptors import describe
    from models.inference import LesionOutput

    oval, circle = _shape("ellipse"), _shape("circle")
    image = _image(oval)
    rules = {term: "rules" for term in DESCRIPTOR_TERMS}
    read = combine_descriptors(image, LesionOutput(0.0, circle, {}, outline=oval), rules)
    shown = combine_descriptors(image, LesionOutput(0.0, circle, {}), rules)
    expected = describe(image, oval).model_dump(mode="json")
    assert {t: read.model_dump(mode="json")[t] for t in DESCRIPTOR_TERMS} == {
        t: expected[t] for t in DESCRIPTOR_TERMS
    }
    assert read.shape != shown.shape  # oval against round


def test_what_is_fitted_and_chosen_on_validation_reads_the_outline_mask() -> None:
    """Outputs that show a wrong mask but carry the right outline are fused, described and
    summarised as if their mask were that outline; only Dice sees the shown mask."""
    from models import calibration as C
    from models import validation_stats as V
    from models.evaluation import choose_descriptor_sources
    from models.inference import LesionOutput
    from models.packaging import fit_fusion

    samples = synthetic_lesions(24, seed=5)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=len(samples)) + np.array([s.label for s in samples])
    square = np.zeros(samples[0].mask.shape, bool)
    square[20:60, 30:80] = True
    carried = [
        LesionOutput(float(z), square, {}, outline=s.mask)
        for s, z in zip(samples, logits, strict=True)
    ]
    shown = [LesionOutput(float(z), s.mask, {}) for s, z in zip(samples, logits, strict=True)]
    assert fit_fusion(samples, carried)[2] == fit_fusion(samples, shown)[2]
    assert choose_descriptor_sources(samples, carried) == choose_descriptor_sources(samples, shown)
    bins = C.LogitBins(low=-4.0, high=4.0, count=64)
    from_outline = V.validation_statistics(samples, carried, bins)
    from_mask = V.validation_statistics(samples, shown, bins)
    assert from_outline.confusion["rules"] == from_mask.confusion["rules"]
    assert from_outline.dice_sum < from_mask.dice_sum  # Dice is the shown mask's


def test_two_pass_prediction_carries_the_outline(tmp_path) -> None:
    from models.train import predict

    spec = RoiSpec(crop_size=48, pass1_fractions=(0.15, 0.3, 0.5))
    assert spec.outline_view == "tightest" and len(spec.final_scales) == 3
    config = TrainConfig(
        encoder="residual", features=(8, 16, 32, 64), subunits=(1, 1, 1, 1), spec=spec
    )
    torch.manual_seed(0)
    network = build_model(config).eval()
    samples = synthetic_lesions(3, seed=2, size=(96, 112))
    runner = torch_runner(network)
    heads = {h: tuple(c) for h, c in network.head_vocabularies.items()}
    for s, p in zip(samples, predict(network, samples), strict=True):
        direct = analyze_image(s.image, s.seed, spec, runner, heads)
        assert np.array_equal(p.outline_mask, direct.outline_mask)
        assert (p.outline is None) == (direct.outline is None)
