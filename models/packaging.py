"""Turn trained weights into a model bundle: export, calibrate, choose modes, score, write.

Calibration, operating points and descriptor sources are chosen either on validation cases
through the exported ONNX model itself (central training: what is measured is what ships), or
given already fitted from the hospitals' aggregate validation statistics
(:class:`models.validation_stats.FittedCalibration`: federated training, where the vendor never
sees a validation case). The locked test set, when given, is verified first and only scored,
never used to choose anything.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_registry import LockedTestSet
from models import evaluation
from models.bundle import (
    METADATA_FILE,
    MODEL_FILE,
    WEIGHTS_FILE,
    BundleError,
    BundleMetadata,
    load_metadata,
    sha256_of,
    write_metadata,
)
from models.calibration import BIRADS_BANDS, choose_operating_points, fit_temperature
from models.data import LesionSample
from models.exceptions import CalibrationError
from models.export import export_onnx
from models.fusion import FusionModel, choose_fusion, feature_vector, judge_fusion
from models.geometry import RoiSpec
from models.inference import OnnxLesionModel
from models.network import LesionNet
from models.report import write_evaluation_report
from models.roi import RoiAugmentation
from models.samples import samples_from_testset
from models.train import TrainConfig, build_model, load_state_numpy, state_to_numpy
from models.validation_stats import FittedCalibration


def config_from_dict(values: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` saved with ``dataclasses.asdict``."""
    values = dict(values)
    values.pop("operating_margin", None)  # older bundles: thresholds by a fixed margin
    values.setdefault("encoder", "residual")  # bundles made before the encoder choice existed
    values.setdefault("boundary_weight", 0.0)  # ... and before the outline-weighted mask BCE
    values["spec"] = RoiSpec.from_json(json.dumps(values["spec"]))
    values["augmentation"] = RoiAugmentation(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in values["augmentation"].items()}
    )
    for key in ("features", "subunits"):
        values[key] = tuple(values[key])
    return TrainConfig(**values)


NUMPY_GLOBALS = (
    np._core.multiarray._reconstruct,
    np.ndarray,
    np.dtype,
    *(getattr(np.dtypes, name) for name in np.dtypes.__all__),
)
"""The only globals ``weights.pt`` may name: numpy arrays and their dtypes
(``torch.load(weights_only=True)`` refuses anything else)."""


def load_weights(bundle: Path) -> tuple[LesionNet, TrainConfig]:
    """The PyTorch network of a bundle (to continue training) and the config it was trained with.

    The bundle's hashes are checked first (``weights.pt`` must be listed in its metadata), and
    the weights are unpickled with ``weights_only=True`` (numpy arrays and plain values only),
    so a planted or altered ``weights.pt`` never runs code.

    Raises:
        BundleError: the bundle is altered, or ``weights.pt`` is missing, unlisted or unreadable.
    """
    metadata = load_metadata(bundle)
    if WEIGHTS_FILE not in metadata.files:
        raise BundleError(f"{bundle}: {METADATA_FILE} does not list {WEIGHTS_FILE} with its sha256")
    path = Path(bundle) / WEIGHTS_FILE
    try:
        with torch.serialization.safe_globals(list(NUMPY_GLOBALS)):
            saved = torch.load(path, weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise BundleError(f"{path}: cannot load the bundle's weights ({e})") from e
    config = config_from_dict(saved["config"])
    model = build_model(config)
    load_state_numpy(model, saved["state"])
    model.eval()
    return model, config


def data_summary(samples: Sequence[LesionSample]) -> dict[str, dict[str, int]]:
    """Case counts per site and label (no case-level data)."""
    summary: dict[str, dict[str, int]] = {}
    for s in samples:
        site = summary.setdefault(s.site_id, {"cases": 0, "benign": 0, "malignant": 0})
        site["cases"] += 1
        site["malignant" if s.label else "benign"] += 1
    return summary


def score_locked(
    model: OnnxLesionModel | Any,
    locked: LockedTestSet,
    *,
    temperature: float,
    points: Any,
    sources: Mapping[str, str] | None,
    progress: bool = False,
) -> dict[str, Any]:
    """Verify the locked set, then score a model on it (``model.analyze(image, seed)``)."""
    manifest_hash = locked.verify()
    samples = samples_from_testset(locked)
    outputs = evaluation.analyse_all(samples, model.analyze, progress=progress, desc="locked test")
    result = evaluation.score(
        samples, outputs, temperature=temperature, points=points, sources=sources
    )
    result["manifest_hash"] = manifest_hash
    return result


def fit_fusion(
    val: Sequence[LesionSample],
    outputs: Sequence[Any],
    *,
    enabled: bool = True,
    stacked: tuple[FusionModel | None, Mapping[str, Any]] | None = None,
) -> tuple[FusionModel | None, list[Any], dict[str, Any]]:
    """Outline-feature fusion for the network whose validation ``outputs`` these are.

    With ``stacked`` (a fusion fitted on cross-validation's held-out lesions and its report,
    :func:`models.fusion.fit_stacked`), that fusion is judged on validation, which it never saw
    (:func:`models.fusion.judge_fusion`); otherwise one is fitted cross-fitted on validation
    (:func:`models.fusion.choose_fusion`).

    Returns:
        the fusion (None when off or not better than the network), the validation outputs
        carrying the logits to calibrate with (fused ones when the fusion is used), and the
        report of the choice.
    """
    if not enabled:
        return None, list(outputs), {"used": False, "reason": "disabled by the recipe"}
    features = np.array(
        [feature_vector(s.image, o.outline_mask) for s, o in zip(val, outputs, strict=True)]
    )
    logits = np.array([o.malignancy_logit for o in outputs])
    y = np.array([s.label for s in val])
    if stacked is not None and stacked[0] is not None:
        model, stacked_report = stacked
        used, fused, judged = judge_fusion(model, features, logits, y)
        fusion = model if used else None
        report = {**stacked_report, **judged}
    else:
        fusion, fused, report = choose_fusion(features, logits, y, [s.group_id for s in val])
    if fusion is None:
        return None, list(outputs), report
    replaced = [
        dataclasses.replace(o, malignancy_logit=float(z))
        for o, z in zip(outputs, fused, strict=True)
    ]
    return fusion, replaced, report


class _Fused:
    """An analyser whose logit is fused with the outline's features (or left alone)."""

    def __init__(self, model: OnnxLesionModel, fusion: FusionModel | None) -> None:
        self.model, self.fusion = model, fusion

    def analyze(self, image: np.ndarray, seed: Sequence[float]) -> Any:
        output = self.model.analyze(image, seed)
        return output if self.fusion is None else self.fusion.apply(image, output)


def package_bundle(
    model: LesionNet,
    config: TrainConfig,
    val: Sequence[LesionSample],
    out: Path,
    *,
    version: str,
    training_data: Mapping[str, Any],
    parent_version: str | None = None,
    lineage: Mapping[str, Any] | None = None,
    locked: LockedTestSet | None = None,
    progress: bool = False,
    calibration: FittedCalibration | None = None,
    stacked_fusion: tuple[FusionModel | None, Mapping[str, Any]] | None = None,
) -> BundleMetadata:
    """Write ``out/`` as a complete bundle and return its metadata.

    Args:
        model: the trained network.
        config: its recipe.
        val: validation lesions to calibrate on (ignored when ``calibration`` is given).
        out: the bundle folder.
        version: the bundle's version.
        training_data: what it was trained on (counts, registries).
        parent_version: the release it continues.
        lineage: how it came about.
        locked: the locked test set to score it on.
        progress: show progress bars.
        calibration: temperature, modes and descriptor sources fitted elsewhere (federated).
        stacked_fusion: an outline fusion fitted on cross-validation's held-out lesions, with
            its report, to judge on ``val`` instead of fitting one there (:func:`fit_fusion`).

    Raises:
        ExportError: ONNX export failed.
        TestSetIntegrityError: the locked set is not intact.
        CalibrationError: validation holds one class only.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    export_onnx(model, out / MODEL_FILE, extra_metadata={"sonofed.version": version})
    torch.save({"state": state_to_numpy(model), "config": asdict(config)}, out / WEIGHTS_FILE)
    onnx_model = OnnxLesionModel(out / MODEL_FILE, num_threads=config.num_threads)
    if calibration is not None:
        temperature, points = calibration.temperature, calibration.points()
        sources = dict(calibration.descriptor_sources)
        metrics: dict[str, Any] = {
            "calibration": calibration.note,
            "validation": calibration.validation,
            "validation_descriptors": calibration.validation_descriptors,
            "descriptor_candidates": calibration.descriptor_candidates,
            "validation_privacy": {
                "epsilon": calibration.epsilon,
                "bins": calibration.bins.model_dump(),
            },
            "fusion": {
                "used": False,
                "reason": "federated calibration: the outline fusion needs pooled validation cases",
            },
        }
        fusion = None
    else:
        temperature, points, sources, metrics, fusion = _calibrate_on(
            val, onnx_model, config, progress, stacked_fusion
        )
    return _finish(
        out, onnx_model, version=version, parent_version=parent_version, temperature=temperature,
        points=points, sources=sources, metrics=metrics, training_data=training_data,
        lineage=lineage, locked=locked, progress=progress, fusion=fusion,
    )  # fmt: skip


def _calibrate_on(
    val: Sequence[LesionSample],
    onnx_model: OnnxLesionModel,
    config: TrainConfig,
    progress: bool,
    stacked_fusion: tuple[FusionModel | None, Mapping[str, Any]] | None = None,
) -> tuple[float, Any, dict[str, str], dict[str, Any], FusionModel | None]:
    """Temperature, modes, descriptor sources, validation metrics and fusion on validation cases."""
    outputs = evaluation.analyse_all(val, onnx_model.analyze, progress=progress, desc="validation")
    y = np.array([s.label for s in val])
    fusion, outputs, fusion_report = fit_fusion(
        val, outputs, enabled=config.fusion, stacked=stacked_fusion
    )
    logits = np.array([o.malignancy_logit for o in outputs])
    try:
        temperature, calibration_note = fit_temperature(logits, y), "temperature fit on validation"
    except CalibrationError as e:  # no signal yet (e.g. a first round): ship uncalibrated, say so
        temperature, calibration_note = 1.0, f"uncalibrated (T=1): {e}"
    points = choose_operating_points(
        y, 1.0 / (1.0 + np.exp(-logits / temperature)), confidence=config.operating_confidence
    )
    sources, candidates = evaluation.choose_descriptor_sources(val, outputs)
    validation = evaluation.score(
        val, outputs, temperature=temperature, points=points, sources=sources
    )
    metrics: dict[str, Any] = {
        "calibration": calibration_note,
        "validation": validation["summary"]["pooled"],
        "validation_descriptors": validation.get("descriptor_agreement", {}),
        "descriptor_candidates": candidates,
        "fusion": fusion_report,
    }
    return temperature, points, sources, metrics, fusion


def _finish(
    out: Path,
    onnx_model: OnnxLesionModel,
    *,
    version: str,
    parent_version: str | None,
    temperature: float,
    points: Any,
    sources: dict[str, str],
    metrics: dict[str, Any],
    training_data: Mapping[str, Any],
    lineage: Mapping[str, Any] | None,
    locked: LockedTestSet | None,
    progress: bool,
    fusion: FusionModel | None = None,
) -> BundleMetadata:
    """Score on the locked set, write the evaluation report and the metadata."""
    if locked is not None:
        test = score_locked(
            _Fused(onnx_model, fusion), locked, temperature=temperature, points=points, sources=sources,
            progress=progress,
        )  # fmt: skip
        metrics["locked_test"] = test["summary"]
        metrics["locked_test_descriptors"] = test.get("descriptor_agreement", {})
        metrics["locked_test_manifest"] = test["manifest_hash"]
        write_evaluation_report(
            out / "evaluation.html",
            {
                "title": "Locked test set",
                "model_version": version,
                "y_true": test["y_true"],
                "prob": test["prob"],
                "groups": test["groups"],
                "dice": test["dice"],
                "operating_points": points.to_dict(),
                "descriptor_agreement": test.get("descriptor_agreement", {}),
                "summary": test["summary"],
            },
        )
    spec = onnx_model.spec
    metadata = BundleMetadata(
        version=version,
        parent_version=parent_version,
        created=datetime.now(UTC).replace(microsecond=0),
        input={
            "image": "8-bit greyscale B-mode image (H, W), any size 16..4096 px per side",
            "seed": "the radiologist's click (x, y) in image pixels, inside the lesion",
            "preprocessing": "intensities / 255; crops around the click by affine resampling",
            "roi_spec": json.loads(spec.to_json()),
        },
        temperature=temperature,
        operating_points=points.to_dict(),
        birads_bands=[
            {"category": b.category.value, "low": b.low, "high": b.high} for b in BIRADS_BANDS
        ],
        descriptor_sources=sources,
        fusion=None if fusion is None else fusion.to_dict(),
        training_data=dict(training_data),
        metrics=metrics,
        lineage=dict(lineage or {}),
        files={name: sha256_of(out / name) for name in (MODEL_FILE, WEIGHTS_FILE)},
    )
    write_metadata(out, metadata)
    return metadata
