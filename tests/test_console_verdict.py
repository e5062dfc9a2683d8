"""No verdict without a lesion, one wording, one governing category, a visible release status
(issue 13, items 13-15), on the report writer and on the radiologists' real masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import ellipse

from data_registry.images import seed_point
from models import report as R
from models.descriptors import describe
from models.exceptions import ReportError
from models.verdict import (
    CANDIDATE_STATEMENT,
    MAX_AREA_FRACTION,
    MIN_AREA_FRACTION,
    NO_LESION,
    governing_note,
    lesion_at_click,
    release_statement,
)


def _image_and_mask(shape=(128, 160), centre=(60, 80), radii=(15, 25)):
    rng = np.random.default_rng(0)
    mask = np.zeros(shape, dtype=bool)
    rr, cc = ellipse(*centre, *radii, shape=shape)
    mask[rr, cc] = True
    image = np.clip(rng.normal(120, 10, shape) - 80 * mask, 0, 255).astype(np.uint8)
    return image, mask


def _no_lesion_result(check) -> dict:
    status, statement = release_statement(None)
    return {
        "case_id": "c1",
        "lesion_found": False,
        "finding": check.finding,
        "malignancy_probability": None,
        "suggestion": None,
        "birads": None,
        "descriptors": None,
        "mode": "high-accuracy",
        "model_version": "0.3.0",
        "release_status": status,
        "release_statement": statement,
        "latency_ms": 12.0,
    }


def _blob(shape, x, y, radius):
    mask = np.zeros(shape, dtype=bool)
    rr, cc = ellipse(y, x, radius, radius, shape=shape)
    mask[rr, cc] = True
    return mask


@pytest.mark.parametrize(
    ("mask_kind", "reason"),
    [
        ("empty", "empty"),
        ("tiny", "smaller than any plausible lesion"),
        ("everything", "more than any plausible lesion"),
        ("elsewhere", "does not contain the click"),
    ],
)
def test_a_click_on_no_plausible_lesion_gets_no_verdict(tmp_path, mask_kind, reason):
    image, _ = _image_and_mask()
    click = (80, 60)
    mask = {
        "empty": np.zeros(image.shape, bool),
        "tiny": _blob(image.shape, 80, 60, 2),  # 13 px of 20,480: 0.06 %
        "everything": np.ones(image.shape, bool),
        "elsewhere": _blob(image.shape, 20, 20, 10),
    }[mask_kind]
    check = lesion_at_click(mask, click)
    assert not check.found and reason in check.reason
    paths = R.write_lesion_report(tmp_path, image=image, mask=mask, seed=click,
                                  result=_no_lesion_result(check))  # fmt: skip
    data = json.loads(paths["json"].read_text())
    assert data["lesion_found"] is False
    assert data["finding"].startswith(NO_LESION)
    assert [data[k] for k in ("malignancy_probability", "suggestion", "birads")] == [None] * 3
    page = paths["html"].read_text()
    assert "No lesion found at the click" in page and "Probability of malignancy" not in page
    # a verdict on such a mask is refused outright
    verdict = {**_no_lesion_result(check), "lesion_found": True, "finding": "lesion found",
               "malignancy_probability": 0.51, "suggestion": "possibly malignant",
               "birads": "4C", "descriptors": {}}  # fmt: skip
    with pytest.raises(ReportError, match=r"claims a lesion|no verdict|empty"):
        R.write_lesion_report(tmp_path / "v", image=image, mask=mask, seed=click, result=verdict)


def _real_masks(real_data: Path) -> list[Path]:
    return sorted(
        [
            *real_data.glob("busi/benign/*_mask.png"),
            *real_data.glob("busi/malignant/*_mask.png"),
            *real_data.glob("bus_bra/Masks/*.png"),
            *real_data.glob("breast_lesions_usg/*/*_tumor.png"),
        ]
    )


@pytest.mark.realdata
def test_every_real_lesion_mask_is_a_lesion_and_its_background_is_not(real_data):
    masks = _real_masks(real_data)
    assert len(masks) > 2000
    refused, background_found, fractions = [], 0, []
    for path in masks[::2]:  # every second mask of the three sites keeps the test short
        mask = np.asarray(Image.open(path).convert("L")) > 127
        if not mask.any():
            continue
        fractions.append(mask.mean())
        click = seed_point(mask)
        if not lesion_at_click(mask, click).found:
            refused.append(path.name)
        corner = (0, 0) if not mask[0, 0] else (mask.shape[1] - 1, mask.shape[0] - 1)
        background_found += lesion_at_click(mask, corner).found
    assert refused == []  # no real lesion is dismissed by the bounds
    assert background_found == 0
    assert min(fractions) > MIN_AREA_FRACTION and max(fractions) < MAX_AREA_FRACTION


def test_suggestion_and_birads_say_which_governs_when_they_seem_to_disagree(tmp_path):
    for call, birads, p in (
        ("benign", "4A", 0.06),
        ("benign", "4B", 0.3),
        ("malignant", "3", 0.015),
    ):
        note = governing_note(call, birads, p, "high-accuracy", 0.4 if call == "benign" else 0.01)
        assert note is not None and note.startswith("The BI-RADS category governs")
        assert note.count(". ") == 0  # one sentence
        assert ("recommends tissue diagnosis (biopsy)" in note) == birads.startswith("4")
        assert f'"possibly {call}"' in note
    assert governing_note("benign", "3", 0.01, "high-accuracy", 0.4) is None
    assert governing_note("malignant", "4C", 0.7, "high-accuracy", 0.4) is None
    image, mask = _image_and_mask()
    note = governing_note("benign", "4A", 0.06, "high-specificity", 0.4)
    result = {**_no_lesion_result(lesion_at_click(mask, (80, 60))), "lesion_found": True,
              "finding": "lesion found at the click", "malignancy_probability": 0.06,
              "suggestion": "possibly benign", "birads": "4A", "birads_note": note,
              "descriptors": describe(image, mask)}  # fmt: skip
    paths = R.write_lesion_report(tmp_path, image=image, mask=mask, seed=(80, 60), result=result)
    page = paths["html"].read_text()
    assert "possibly benign" in page and "The BI-RADS category governs: 4A means suspicious" in page


def test_the_report_names_the_release_status_first(tmp_path):
    image, mask = _image_and_mask()
    check = lesion_at_click(mask, (80, 60))
    assert check.found
    base = {**_no_lesion_result(check), "lesion_found": True, "malignancy_probability": 0.2,
            "suggestion": "possibly benign", "birads": "4B", "descriptors": describe(image, mask),
            "birads_note": governing_note("benign", "4B", 0.2, "high-accuracy", 0.4)}  # fmt: skip
    for version, expected, css in ((None, CANDIDATE_STATEMENT, "candidate"),
                                   ("1.4.0", "signed release 1.4.0", "signed")):  # fmt: skip
        status, statement = release_statement(version)
        result = {**base, "release_status": status, "release_statement": statement}
        paths = R.write_lesion_report(tmp_path / css, image=image, mask=mask, seed=(80, 60),
                                      result=result)  # fmt: skip
        data = json.loads(paths["json"].read_text())
        assert data["release_statement"] == expected
        page = paths["html"].read_text()
        body = page.split("</h1>", 1)[1]
        assert body.startswith(f'<p class="release {css}" id="release-status">Model: {expected}')
