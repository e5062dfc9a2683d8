"""Reference cases and the console's self-test.

The vendor renders a few synthetic phantom lesions (no patient data ever leaves the vendor),
runs the release's own model on them with :class:`models.analysis.LesionAnalyser`, and ships
images, clicks and expected outputs in ``selftest/``. After installing a release into its
inactive slot, a console runs the same cases through the same code and compares:

- the calibrated probability within ``probability_atol``;
- the mask's Dice with the expected mask at least ``mask_dice_min``;
- the BI-RADS suggestion and every mode's benign/malignant suggestion equal, unless the
  expected probability lies within ``probability_atol`` of a band edge or threshold;
- the descriptors equal, when the masks agree to ``descriptor_dice_min`` (rules read the mask).

A release whose outputs do not reproduce on this console's runtime is never switched to.
The console side imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.exceptions import ImageError
from data_registry.files import write_atomic
from data_registry.images import encode_png, read_grey, seed_point
from models.analysis import LesionAnalyser
from models.calibration import BIRADS_BANDS, Mode, OperatingPoints, birads_for
from models.exceptions import ModelError
from models.metrics import dice
from release.exceptions import PackagingError, SelfTestError
from release.layout import MODEL_DIR, SELFTEST_CASES, SELFTEST_DIR


class Tolerances(BaseModel):
    """How closely a console must reproduce the expected outputs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    probability_atol: float = Field(default=1e-3, gt=0, lt=0.1)
    mask_dice_min: float = Field(default=0.98, gt=0.5, le=1.0)
    descriptor_dice_min: float = Field(default=0.999, gt=0.5, le=1.0)


class Expected(BaseModel):
    """Expected outputs of one reference case."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    malignancy_probability: float = Field(ge=0.0, le=1.0)
    birads: str
    suggestions: dict[str, str]
    descriptors: dict[str, Any] | None
    mask: str
    lesion_area_px: int = Field(ge=0)
    lesion_found: bool | None = None


class ReferenceCase(BaseModel):
    """One reference case: a synthetic image, the click, and what the model must answer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    case_id: str
    image: str
    seed: tuple[int, int]
    scanner: str
    expected: Expected


class ReferenceSet(BaseModel):
    """``selftest/cases.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    model_version: str
    generator: str
    tolerances: Tolerances
    cases: list[ReferenceCase] = Field(min_length=1)


def _render_cases(count: int, seed: int) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """``count`` synthetic lesions, one scanner profile after another: (id, scanner, image, mask)."""
    from data_registry.phantom import SCANNER_PROFILES, render_case, sample_lesion

    profiles = list(SCANNER_PROFILES.items())
    cases = []
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        scanner, profile = profiles[index % len(profiles)]
        image, mask = render_case(rng, profile, lesion=sample_lesion(rng))
        cases.append((f"ref-{index + 1}", scanner, image, mask))
    return cases


def _analyse(analyser: LesionAnalyser, image: np.ndarray, click: tuple[int, int]) -> dict:
    """One analysis, and every mode's suggestion at the shipped thresholds (from the model's
    probability, also where the report withholds it because no lesion was found)."""
    result = analyser.analyze(image, click, mode=Mode.HIGH_ACCURACY)
    probability = round(result.probability, 6)
    return {
        "malignancy_probability": probability,
        "birads": birads_for(probability).value,
        "suggestions": {m.value: analyser.points.suggest(probability, m) for m in Mode},
        "descriptors": result.report["descriptors"],
        "lesion_found": result.report["lesion_found"],
        "mask": result.mask,
    }


def make_reference_cases(
    release_dir: Path,
    *,
    count: int = 3,
    seed: int = 20261,
    tolerances: Tolerances | None = None,
) -> ReferenceSet:
    """Render reference cases, run the release's model on them, write ``selftest/``.

    Args:
        release_dir: the release folder (its model bundle is in ``model/``).
        count: number of cases (one scanner profile after another).
        seed: seed of the phantom renderer.
        tolerances: the comparison tolerances (defaults when None).

    Returns:
        The reference set written to ``selftest/cases.json``.

    Raises:
        PackagingError: the model cannot be run on the cases.
    """
    release_dir = Path(release_dir)
    folder = release_dir / SELFTEST_DIR
    try:
        analyser = LesionAnalyser(release_dir / MODEL_DIR, num_threads=1)
        cases = []
        for case_id, scanner, image, mask in _render_cases(count, seed):
            click = seed_point(mask)
            output = _analyse(analyser, image, click)
            write_atomic(folder / f"{case_id}.png", encode_png(image))
            write_atomic(folder / f"{case_id}-mask.png", encode_png(output["mask"]))
            expected = Expected(
                malignancy_probability=output["malignancy_probability"],
                birads=output["birads"],
                suggestions=output["suggestions"],
                descriptors=output["descriptors"],
                mask=f"{SELFTEST_DIR}/{case_id}-mask.png",
                lesion_area_px=int(np.count_nonzero(output["mask"])),
                lesion_found=output["lesion_found"],
            )
            cases.append(
                ReferenceCase(
                    case_id=case_id,
                    image=f"{SELFTEST_DIR}/{case_id}.png",
                    seed=click,
                    scanner=scanner,
                    expected=expected,
                )
            )
    except (ModelError, ValueError) as e:
        raise PackagingError(f"cannot make the self-test's reference cases: {e}") from e
    reference = ReferenceSet(
        model_version=analyser.metadata.version,
        generator=f"data_registry.phantom seed {seed}",
        tolerances=tolerances or Tolerances(),
        cases=cases,
    )
    write_atomic(release_dir / SELFTEST_CASES, reference.model_dump_json(indent=2).encode())
    return reference


@dataclass(frozen=True)
class CaseCheck:
    """One reference case on this console.

    Attributes:
        case_id: the case.
        passed: every comparison held.
        probability: the probability computed here.
        expected_probability: the vendor's.
        mask_dice: Dice of the mask computed here with the expected mask.
        problems: what differed.
    """

    case_id: str
    passed: bool
    probability: float
    expected_probability: float
    mask_dice: float
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class SelfTestResult:
    """The self-test's verdict.

    Attributes:
        passed: every case passed.
        cases: per-case results.
    """

    passed: bool
    cases: list[CaseCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {
            "passed": self.passed,
            "cases": [
                {
                    "case_id": c.case_id,
                    "passed": c.passed,
                    "probability": c.probability,
                    "expected_probability": c.expected_probability,
                    "mask_dice": round(c.mask_dice, 6),
                    "problems": list(c.problems),
                }
                for c in self.cases
            ],
        }


def _near_boundary(p: float, points: OperatingPoints, atol: float) -> bool:
    edges = [b.high for b in BIRADS_BANDS] + list(points.thresholds().values())
    return any(abs(p - edge) <= atol for edge in edges)


def _check_case(
    analyser: LesionAnalyser, root: Path, case: ReferenceCase, tol: Tolerances
) -> CaseCheck:
    image = read_grey(root / case.image)
    expected_mask = read_grey(root / case.expected.mask) > 127
    got = _analyse(analyser, image, case.seed)
    exp = case.expected
    problems = []
    p, p_exp = float(got["malignancy_probability"]), exp.malignancy_probability
    if abs(p - p_exp) > tol.probability_atol:
        problems.append(f"probability {p:.6f} vs expected {p_exp:.6f}")
    overlap = dice(got["mask"], expected_mask) if got["mask"].shape == expected_mask.shape else 0.0
    if overlap < tol.mask_dice_min:
        problems.append(f"mask Dice {overlap:.4f} with the expected mask")
    if not _near_boundary(p_exp, analyser.points, tol.probability_atol):
        if got["birads"] != exp.birads:
            problems.append(f"BI-RADS {got['birads']} vs expected {exp.birads}")
        for mode, suggestion in exp.suggestions.items():
            if got["suggestions"].get(mode) != suggestion:
                problems.append(f"{mode} suggestion {got['suggestions'].get(mode)} vs {suggestion}")
    if exp.lesion_found is not None and got["lesion_found"] != exp.lesion_found:
        problems.append(f"lesion found {got['lesion_found']} vs expected {exp.lesion_found}")
    if overlap >= tol.descriptor_dice_min and got["descriptors"] != exp.descriptors:
        problems.append("descriptors differ from the expected ones")
    return CaseCheck(case.case_id, not problems, p, p_exp, float(overlap), tuple(problems))


def run_self_test(release_dir: Path, *, num_threads: int = 1) -> SelfTestResult:
    """Run the reference cases of an installed release through its own model.

    Args:
        release_dir: the release folder (a console slot).
        num_threads: onnxruntime threads.

    Returns:
        The verdict with per-case numbers; it never raises for a mere mismatch.

    Raises:
        SelfTestError: the reference set or the model cannot be loaded or run at all.
    """
    root = Path(release_dir)
    try:
        reference = ReferenceSet.model_validate_json((root / SELFTEST_CASES).read_bytes())
        analyser = LesionAnalyser(root / MODEL_DIR, num_threads=num_threads)
        checks = [_check_case(analyser, root, c, reference.tolerances) for c in reference.cases]
    except (OSError, ValidationError, ImageError, ModelError, json.JSONDecodeError) as e:
        raise SelfTestError(f"self-test could not run: {e}") from e
    return SelfTestResult(all(c.passed for c in checks), checks)
