"""Group-disjoint k-fold cross-validation: disjointness, balance, and a tiny real run."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

import numpy as np
import pytest

from models.data import LesionSample, synthetic_lesions
from models.exceptions import DataError
from models.fusion import feature_vector
from models.inference import OnnxLesionModel
from models.selection import cross_validate, group_kfold, summarise_folds
from tests._pipeline import tiny_config


def _samples() -> list[LesionSample]:
    """Three sites; patients with 1–3 images; some duplicate clusters spanning patients."""
    base = synthetic_lesions(1, seed=0, size=(40, 40))[0]
    rng = np.random.default_rng(7)
    out = []
    for site in ("a", "b", "c"):
        for patient in range(int(rng.integers(20, 40))):
            label = int(rng.random() < 0.35)
            group = f"{site}/g{patient // 2 if patient % 5 == 0 else patient}"  # some merged
            for image in range(int(rng.integers(1, 4))):
                out.append(
                    dataclasses.replace(
                        base,
                        case_id=f"{site}-{patient}-{image}",
                        site_id=site,
                        group_id=group,
                        label=label,
                    )
                )
    return out


@pytest.mark.parametrize("k", [2, 3, 5])
def test_folds_are_group_disjoint_and_cover_every_sample_once(k: int) -> None:
    samples = _samples()
    folds = group_kfold(samples, k, seed=1)
    assert len(folds) == k
    held_ids = [s.case_id for _, held in folds for s in held]
    assert sorted(held_ids) == sorted(s.case_id for s in samples)  # each once
    for rest, held in folds:
        assert len(rest) + len(held) == len(samples)
        assert not {s.group_id for s in rest} & {s.group_id for s in held}
        assert not {s.case_id for s in rest} & {s.case_id for s in held}


def test_folds_are_balanced_by_site_and_label() -> None:
    samples = _samples()
    biggest = max(Counter(s.group_id for s in samples).values())
    folds = group_kfold(samples, 3, seed=2)
    for stratum in {(s.site_id, s.label) for s in samples}:
        counts = [sum((s.site_id, s.label) == stratum for s in held) for _, held in folds]
        assert max(counts) - min(counts) <= biggest


def test_folds_are_seeded() -> None:
    samples = _samples()
    ids = lambda folds: [[s.case_id for s in held] for _, held in folds]  # noqa: E731
    assert ids(group_kfold(samples, 3, seed=4)) == ids(group_kfold(samples, 3, seed=4))
    assert ids(group_kfold(samples, 3, seed=4)) != ids(group_kfold(samples, 3, seed=5))


def test_bad_fold_counts_raise() -> None:
    samples = _samples()[:4]
    with pytest.raises(DataError):
        group_kfold(samples, 1, seed=0)
    with pytest.raises(DataError):
        group_kfold(samples, 50, seed=0)


def test_summary_is_mean_and_sample_sd() -> None:
    summary = summarise_folds([{"auc": 0.8, "x": None}, {"auc": 0.9, "x": None}])
    assert summary["folds"] == 2
    assert summary["auc"]["mean"] == pytest.approx(0.85)
    assert summary["auc"]["sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1), abs=1e-4)
    assert "x" not in summary


def test_tiny_cross_validation_scores_every_held_out_lesion_once(tmp_path) -> None:
    samples = synthetic_lesions(24, seed=3, size=(72, 80))
    result = cross_validate(samples, tiny_config(), k=2, seed=0, keep=tmp_path / "cv")
    oof = result["out_of_fold"]
    assert sorted(oof["case_id"]) == sorted(s.case_id for s in samples)
    kept = json.loads((tmp_path / "cv" / "folds.json").read_text())
    assert [sorted(ids) for ids in kept["held_out"]] == [
        sorted(oof["case_id"][: len(kept["held_out"][0])]),
        sorted(oof["case_id"][len(kept["held_out"][0]) :]),
    ]
    for fold, ids in enumerate(kept["held_out"]):  # each kept network scores its fold again
        network = OnnxLesionModel(tmp_path / "cv" / f"fold{fold}.onnx")
        case = next(s for s in samples if s.case_id == ids[0])
        logit = network.analyze(case.image, case.seed).malignancy_logit
        assert logit == pytest.approx(oof["logit"][oof["case_id"].index(ids[0])], abs=1e-5)
    assert len(result["per_fold"]) == 2
    assert 0.0 <= result["summary"]["auc"]["mean"] <= 1.0
    assert all(m.shape == (72, 80) for m in oof["mask"])
    by_id = {s.case_id: s for s in samples}
    assert oof["group_id"] == [by_id[c].group_id for c in oof["case_id"]]
    fold_of = {c: fold for fold, ids in enumerate(kept["held_out"]) for c in ids}
    networks = [OnnxLesionModel(tmp_path / "cv" / f"fold{f}.onnx") for f in range(2)]
    for case_id, mask, features in zip(oof["case_id"], oof["mask"], oof["features"], strict=True):
        case = by_id[case_id]
        again = networks[fold_of[case_id]].analyze(case.image, case.seed)
        np.testing.assert_array_equal(mask, again.mask)  # the shown mask
        expected = feature_vector(case.image, again.outline_mask)  # what stacking fits on
        np.testing.assert_array_equal(features, expected)
