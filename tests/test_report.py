"""The console's lesion report and the HTML evaluation report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import ellipse

from data_registry.schema import SeedPoint
from models import report as R
from models.calibration import choose_operating_points
from models.descriptors import describe
from models.exceptions import ReportError

LESION_KEYS = {
    "case_id",
    "lesion_found",
    "finding",
    "malignancy_probability",
    "suggestion",
    "birads_note",
    "mode",
    "birads",
    "descriptors",
    "lesion_area_px",
    "mask_png",
    "model_version",
    "release_status",
    "release_statement",
    "latency_ms",
}


@pytest.fixture
def lesion() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.zeros((128, 160), dtype=bool)
    rr, cc = ellipse(60, 80, 15, 25, shape=mask.shape)
    mask[rr, cc] = True
    image = np.clip(rng.normal(120, 10, mask.shape) - 80 * mask, 0, 255).astype(np.uint8)
    return image, mask


def _result(image: np.ndarray, mask: np.ndarray, **changes: object) -> dict:
    return {
        "case_id": "console-0001",
        "lesion_found": True,
        "finding": "lesion found at the click",
        "malignancy_probability": 0.34,
        "suggestion": "possibly malignant",
        "mode": "high-sensitivity",
        "birads": "4B",
        "descriptors": describe(image, mask),
        "model_version": "1.2.0",
        "release_status": "signed-release",
        "release_statement": "signed release 1.2.0",
        "latency_ms": 41.5,
        **changes,
    }


def test_lesion_report_files_validate_and_open(tmp_path: Path, lesion) -> None:
    image, mask = lesion
    paths = R.write_lesion_report(
        tmp_path / "case", image=image, mask=mask, seed=(80, 60), result=_result(image, mask)
    )
    assert set(paths) == {"json", "html", "overlay", "mask"}
    data = json.loads(paths["json"].read_text())
    assert set(data) == LESION_KEYS
    assert set(data["descriptors"]) == {
        "shape",
        "orientation",
        "margin",
        "echo_pattern",
        "posterior_features",
    }
    report = R.LesionReport.model_validate_json(paths["json"].read_text())
    assert report.lesion_area_px == int(mask.sum()) and report.birads.value == "4B"
    assert (tmp_path / "case" / data["mask_png"]) == paths["mask"]

    stored_mask = np.asarray(Image.open(paths["mask"]))
    assert np.array_equal(stored_mask > 0, mask)
    overlay = np.asarray(Image.open(paths["overlay"]).convert("RGB"))
    assert overlay.shape == (*image.shape, 3)
    assert np.all(overlay[60, 80] == R.SEED_RGB)  # the seed
    assert (np.all(overlay == R.CONTOUR_RGB, axis=2) & mask).sum() > 50  # the contour

    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and "34.0 %" in page and "1.2.0" in page
    assert "not a medical device" in page and "never replaces" in page
    assert not list((tmp_path / "case").glob("*.tmp"))  # atomic writes leave nothing behind


def test_lesion_report_json_schema_forbids_extra_keys(tmp_path: Path, lesion) -> None:
    image, mask = lesion
    paths = R.write_lesion_report(
        tmp_path, image=image, mask=mask, seed=SeedPoint(x=80, y=60), result=_result(image, mask)
    )
    data = json.loads(paths["json"].read_text())
    with pytest.raises(ValueError):
        R.LesionReport.model_validate({**data, "extra": 1})


@pytest.mark.parametrize(
    ("changes", "seed"),
    [
        ({"surprise": 1}, (80, 60)),
        ({"suggestion": "probably"}, (80, 60)),
        ({"suggestion": "malignant"}, (80, 60)),
        ({"birads": None}, (80, 60)),
        ({"release_status": "released"}, (80, 60)),
        ({"lesion_found": False}, (80, 60)),
        ({}, (5, 5)),
        ({"mode": "balanced"}, (80, 60)),
        ({"lesion_area_px": 3}, (80, 60)),
        ({}, (500, 60)),
    ],
    ids=[
        "unknown-key",
        "suggestion",
        "bare-suggestion",
        "lesion-without-birads",
        "release-status",
        "verdict-without-lesion",
        "click-outside-the-lesion",
        "mode",
        "computed-key",
        "seed-outside",
    ],
)
def test_lesion_report_refuses_bad_results(
    tmp_path: Path, lesion, changes: dict, seed: tuple[int, int]
) -> None:
    image, mask = lesion
    with pytest.raises(ReportError):
        R.write_lesion_report(
            tmp_path, image=image, mask=mask, seed=seed, result=_result(image, mask, **changes)
        )
    assert not list(tmp_path.iterdir())  # nothing written


def test_evaluation_report_is_self_contained(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 240
    y = rng.integers(0, 2, n)
    prob = 1 / (1 + np.exp(-(2 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    site = np.array(["site-a", "site-b", "site-c"])[np.arange(n) % 3]
    y[site == "site-c"] = 0  # a site with one class: no AUC, no crash
    evaluation = {
        "model_version": "1.2.0",
        "y_true": y.tolist(),
        "prob": prob.tolist(),
        "groups": {
            "site": site.tolist(),
            "scanner": np.where(np.arange(n) % 2, "L15", "L9").tolist(),
        },
        "operating_points": choose_operating_points(y, prob).to_dict(),
        "descriptor_agreement": {"shape": {"n": 177, "accuracy": 0.77, "kappa": 0.59}},
        "dice": rng.uniform(0.8, 0.95, n).tolist(),
        "n_bootstrap": 200,
    }
    path = R.write_evaluation_report(tmp_path / "eval" / "report.html", evaluation)
    page = path.read_text()
    assert page.count("data:image/png;base64,") == 2  # ROC and reliability
    for text in ("site-a", "site-c", "L15", "high-specificity", "shape", "only one class", "Dice"):
        assert text in page
    assert "<script" not in page and "http" not in page  # nothing fetched from elsewhere


def test_evaluation_report_refuses_malformed_input(tmp_path: Path) -> None:
    with pytest.raises(ReportError):
        R.write_evaluation_report(tmp_path / "r.html", {"y_true": [0, 1], "prob": [0.2, 0.8]})
    with pytest.raises(ReportError):
        R.write_evaluation_report(
            tmp_path / "r.html", {"model_version": "1", "y_true": [0, 1], "prob": [0.2]}
        )
