"""The declared change protocol: release gates on the locked test set.

A candidate model bundle becomes a release only when every gate passes. Both the candidate and
the current release (when there is one) are run through their own exported ONNX model on the
verified locked test set, at their own shipped temperature and thresholds, so what is measured
is what a console would compute.

Gates (names as they appear in the report):

- ``locked-set-integrity``: every byte, label and member of the locked set is as sealed.
- ``auc-non-inferiority`` (with a current release): the lower bound of the paired bootstrap
  interval of ``AUC(candidate) - AUC(current)`` is at least ``-auc_non_inferiority_margin``.
- ``auc-floor`` (first release only): the pooled AUC is at least ``first_release.auc_floor``.
- ``sensitivity-high-sensitivity-mode``: sensitivity at the shipped high-sensitivity threshold.
- ``specificity-high-specificity-mode``: specificity at the shipped high-specificity threshold.
- ``subgroup-auc``: per site and per scanner with enough cases of both classes, the candidate
  loses at most ``subgroup_auc_margin`` of AUC against the current release (first release:
  every such subgroup reaches ``first_release.subgroup_auc_floor``).
- ``dice-floor``: mean Dice of the predicted masks.
- ``ece-ceiling``: expected calibration error of the calibrated probability.

The first release is judged on the absolute floors alone. The protocol's numbers live in the
``gates`` block of ``params.yaml`` with a ``protocol_version``; the report records both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from data_registry import LockedTestSet, TestSetIntegrityError
from data_registry.files import write_atomic
from models import evaluation, metrics
from models.analysis import LesionAnalyser
from models.calibration import Mode, OperatingPoints
from models.exceptions import ModelError
from models.samples import samples_from_testset
from release.exceptions import GateError
from release.gate_report import GateReport, GateResult, ModelRef, summary_text
from release.layout import model_dir_of
from release.manifest import behaviour_fingerprint
from release.protocol import GateProtocol


@dataclass(frozen=True)
class ScoredModel:
    """One bundle's per-case results on the locked set.

    Attributes:
        version: the bundle's version.
        fingerprint: :func:`behaviour_fingerprint`.
        evaluation: :func:`models.evaluation.score` output plus ``operating_points``.
    """

    version: str
    fingerprint: str
    evaluation: dict[str, Any]

    @property
    def pooled(self) -> dict[str, Any]:
        """Pooled metrics block (:func:`models.metrics.summarize`)."""
        return self.evaluation["summary"]["pooled"]


def score_bundle(
    bundle: Path, locked: LockedTestSet, protocol: GateProtocol, *, num_threads: int = 2
) -> ScoredModel:
    """Run a bundle's ONNX model on the locked set (verify the set first) and score it.

    Args:
        bundle: a model bundle folder, or a release folder holding one.
        locked: the locked test set, already verified.
        protocol: supplies the bootstrap settings.
        num_threads: onnxruntime threads.

    Returns:
        The per-case results and their summary pooled, per site and per scanner.

    Raises:
        GateError: the bundle cannot be loaded or run.
    """
    folder = model_dir_of(bundle)
    try:
        analyser = LesionAnalyser(folder, num_threads=num_threads)
        samples = samples_from_testset(locked)
        outputs = evaluation.analyse_all(samples, analyser.model.analyze)
        points = OperatingPoints.from_dict(analyser.metadata.operating_points)
        result = evaluation.score(
            samples,
            outputs,
            temperature=analyser.metadata.temperature,
            points=points,
            sources=analyser.metadata.descriptor_sources,
            n_bootstrap=protocol.n_bootstrap,
        )
    except ModelError as e:
        raise GateError(f"{bundle}: cannot score the bundle on the locked set: {e}") from e
    result["operating_points"] = points.to_dict()
    result["model_version"] = analyser.metadata.version
    return ScoredModel(analyser.metadata.version, behaviour_fingerprint(analyser.metadata), result)


# --- the gates (pure functions of the scored models) -------------------------------------------


def _rate_gate(name: str, scored: ScoredModel, mode: Mode, rate: str, floor: float) -> GateResult:
    values = scored.pooled["thresholds"][mode.value]
    value = values[rate]
    measured = {rate: value, "threshold": values["threshold"]}
    measured |= {k: values[k] for k in ("tp", "fp", "tn", "fn")}
    requirement = f"{rate} in {mode.value} mode >= {floor}"
    if value is None:
        return GateResult(
            name=name,
            passed=False,
            requirement=requirement,
            measured=measured,
            detail=f"{rate} undefined on the locked set (a class is missing)",
        )
    return GateResult(
        name=name,
        passed=value >= floor,
        requirement=requirement,
        measured=measured,
        detail=f"{rate} {value:.3f} at the shipped threshold {values['threshold']:.4f}",
    )


def _auc_non_inferiority(
    candidate: ScoredModel, current: ScoredModel, protocol: GateProtocol
) -> GateResult:
    margin = protocol.auc_non_inferiority_margin
    requirement = f"lower bound of the {protocol.confidence:.0%} CI of AUC difference >= -{margin}"
    try:
        diff = metrics.paired_auc_difference(
            candidate.evaluation["y_true"],
            current.evaluation["prob"],
            candidate.evaluation["prob"],
            n_bootstrap=protocol.n_bootstrap,
            confidence=protocol.confidence,
            seed=protocol.seed,
        )
    except ValueError as e:
        return GateResult(
            name="auc-non-inferiority",
            passed=False,
            requirement=requirement,
            measured={},
            detail=f"cannot compare: {e}",
        )
    return GateResult(
        name="auc-non-inferiority",
        passed=diff.ci_low >= -margin,
        requirement=requirement,
        measured=diff.to_dict(),
        detail=f"AUC {diff.auc_b:.3f} vs {diff.auc_a:.3f}: difference {diff.delta:+.3f} "
        f"[{diff.ci_low:+.3f}, {diff.ci_high:+.3f}]",
    )


def _auc_floor(candidate: ScoredModel, floor: float) -> GateResult:
    auc = candidate.pooled["auc"]
    requirement = f"pooled AUC >= {floor}"
    if auc["auc"] is None:
        return GateResult(
            name="auc-floor",
            passed=False,
            requirement=requirement,
            measured=auc,
            detail=f"AUC undefined: {auc['reason']}",
        )
    return GateResult(
        name="auc-floor",
        passed=auc["auc"] >= floor,
        requirement=requirement,
        measured=auc,
        detail=f"AUC {auc['auc']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]",
    )


def _subgroup_rows(
    candidate: ScoredModel, current: ScoredModel | None, protocol: GateProtocol
) -> list[dict[str, Any]]:
    y = np.asarray(candidate.evaluation["y_true"])
    rows = []
    for grouping in protocol.subgroupings:
        labels = np.asarray(candidate.evaluation["groups"].get(grouping, []))
        if len(labels) != len(y):
            raise GateError(f"the locked-set scores have no {grouping!r} grouping")
        for group in sorted(set(labels.tolist())):
            chosen = labels == group
            n_pos, n_neg = int(y[chosen].sum()), int((1 - y[chosen]).sum())
            row: dict[str, Any] = {"grouping": grouping, "group": group}
            row |= {"n_positive": n_pos, "n_negative": n_neg}
            if min(n_pos, n_neg) < protocol.subgroup_min_per_class:
                row["evaluable"] = False
                rows.append(row)
                continue
            row["evaluable"] = True
            prob_b = np.asarray(candidate.evaluation["prob"])[chosen]
            row["auc_candidate"] = float(roc_auc_score(y[chosen], prob_b))
            if current is not None:
                prob_a = np.asarray(current.evaluation["prob"])[chosen]
                row["auc_current"] = float(roc_auc_score(y[chosen], prob_a))
                row["delta"] = row["auc_candidate"] - row["auc_current"]
            rows.append(row)
    return rows


def _subgroup_gate(
    candidate: ScoredModel, current: ScoredModel | None, protocol: GateProtocol
) -> GateResult:
    rows = _subgroup_rows(candidate, current, protocol)
    evaluable = [r for r in rows if r["evaluable"]]
    if current is not None:
        margin = protocol.subgroup_auc_margin
        requirement = f"every evaluable subgroup loses at most {margin} AUC"
        losers = [r for r in evaluable if r["delta"] < -margin]
        detail = ", ".join(f"{r['grouping']} {r['group']} {r['delta']:+.3f}" for r in losers)
    else:
        floor = protocol.first_release.subgroup_auc_floor
        requirement = f"every evaluable subgroup has AUC >= {floor}"
        losers = [r for r in evaluable if r["auc_candidate"] < floor]
        detail = ", ".join(f"{r['grouping']} {r['group']} {r['auc_candidate']:.3f}" for r in losers)
    skipped = [f"{r['grouping']} {r['group']}" for r in rows if not r["evaluable"]]
    notes = []
    if losers:
        notes.append(f"below requirement: {detail}")
    if skipped:
        notes.append(
            f"not evaluable (< {protocol.subgroup_min_per_class} cases of a class): "
            + ", ".join(skipped)
        )
    if not evaluable:
        notes.append("no subgroup has enough cases of both classes")
    return GateResult(
        name="subgroup-auc",
        passed=not losers and bool(evaluable),
        requirement=requirement,
        measured={"subgroups": rows},
        detail="; ".join(notes) or f"{len(evaluable)} subgroups within the requirement",
    )


def _dice_gate(candidate: ScoredModel, floor: float) -> GateResult:
    value = candidate.pooled.get("dice_mean")
    ok = value is not None and value >= floor
    return GateResult(
        name="dice-floor",
        passed=ok,
        requirement=f"mean Dice >= {floor}",
        measured={"dice_mean": value},
        detail=f"mean Dice {value:.3f}" if value is not None else "",
    )


def _ece_gate(candidate: ScoredModel, ceiling: float) -> GateResult:
    value = candidate.pooled["ece"]
    return GateResult(
        name="ece-ceiling",
        passed=value <= ceiling,
        requirement=f"ECE <= {ceiling}",
        measured={"ece": value, "brier": candidate.pooled.get("brier")},
        detail=f"ECE {value:.3f}",
    )


def evaluate_gates(
    candidate: ScoredModel, current: ScoredModel | None, protocol: GateProtocol
) -> list[GateResult]:
    """Apply the protocol's gates to scored models (no I/O).

    Args:
        candidate: the candidate's results on the locked set.
        current: the current release's results on the same cases, or None for a first release.
        protocol: the declared change protocol.

    Returns:
        One :class:`GateResult` per gate, in the order of the protocol.

    Raises:
        GateError: the two models were not scored on the same cases.
    """
    if current is not None and current.evaluation["y_true"] != candidate.evaluation["y_true"]:
        raise GateError("the candidate and the current release were scored on different cases")
    gates = []
    if current is not None:
        gates.append(_auc_non_inferiority(candidate, current, protocol))
    else:
        gates.append(_auc_floor(candidate, protocol.first_release.auc_floor))
    gates.append(
        _rate_gate(
            "sensitivity-high-sensitivity-mode",
            candidate,
            Mode.HIGH_SENSITIVITY,
            "sensitivity",
            protocol.min_sensitivity_high_sensitivity,
        )
    )
    gates.append(
        _rate_gate(
            "specificity-high-specificity-mode",
            candidate,
            Mode.HIGH_SPECIFICITY,
            "specificity",
            protocol.min_specificity_high_specificity,
        )
    )
    gates.append(_subgroup_gate(candidate, current, protocol))
    gates.append(_dice_gate(candidate, protocol.dice_floor))
    gates.append(_ece_gate(candidate, protocol.ece_ceiling))
    return gates


# --- the whole validation --------------------------------------------------------------------


@dataclass(frozen=True)
class Validation:
    """What :func:`validate` returns.

    Attributes:
        report: the gate report.
        evaluation: the candidate's per-case results (for the model card), or None when the
            locked set failed its integrity check and nothing was scored.
    """

    report: GateReport
    evaluation: dict[str, Any] | None


def validate(
    candidate: Path,
    locked: Path,
    protocol: GateProtocol,
    *,
    current: Path | None = None,
    num_threads: int = 2,
) -> Validation:
    """Verify the locked set, score the candidate (and the current release), apply the gates.

    Args:
        candidate: the candidate model bundle (or a release folder).
        locked: the locked test set folder.
        protocol: the declared change protocol.
        current: the current release (release or bundle folder); None for a first release.
        num_threads: onnxruntime threads.

    Returns:
        The report (``passed`` is the verdict) and the candidate's per-case results.

    Raises:
        GateError: a bundle cannot be read or scored.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    common: dict[str, Any] = {
        "created": now,
        "protocol_version": protocol.protocol_version,
        "protocol": protocol.model_dump(mode="json"),
        "first_release": current is None,
    }
    try:
        test_set = LockedTestSet(locked)
        manifest_hash = test_set.verify()
    except TestSetIntegrityError as e:
        from models.bundle import load_metadata

        try:
            metadata = load_metadata(model_dir_of(candidate))
        except ModelError as error:
            raise GateError(f"{candidate}: not a usable bundle: {error}") from error
        gate = GateResult(
            name="locked-set-integrity",
            passed=False,
            requirement="the locked set matches its seal",
            measured={},
            detail=str(e),
        )
        ref = ModelRef(
            version=metadata.version,
            fingerprint=behaviour_fingerprint(metadata),
            path=str(candidate),
        )
        report = GateReport(
            **common,
            candidate=ref,
            locked_manifest_hash=None,
            n_cases=0,
            gates=[gate],
            passed=False,
        )
        return Validation(report, None)
    integrity = GateResult(
        name="locked-set-integrity",
        passed=True,
        requirement="the locked set matches its seal",
        measured={"manifest_hash": manifest_hash},
        detail=f"intact ({manifest_hash[:12]}…)",
    )
    scored = score_bundle(candidate, test_set, protocol, num_threads=num_threads)
    reference = (
        None
        if current is None
        else score_bundle(current, test_set, protocol, num_threads=num_threads)
    )
    gates = [integrity, *evaluate_gates(scored, reference, protocol)]
    report = GateReport(
        **common,
        candidate=ModelRef(
            version=scored.version, fingerprint=scored.fingerprint, path=str(candidate)
        ),
        current=None
        if reference is None
        else ModelRef(
            version=reference.version, fingerprint=reference.fingerprint, path=str(current)
        ),
        locked_manifest_hash=manifest_hash,
        n_cases=len(scored.evaluation["y_true"]),
        gates=gates,
        passed=all(g.passed for g in gates),
    )
    return Validation(report, scored.evaluation)


def write_validation(validation: Validation, out: Path) -> dict[str, Path]:
    """Write ``gate-report.json``, ``gate-report.md`` and ``evaluation.json`` into ``out``.

    Args:
        validation: what :func:`validate` returned.
        out: the report folder (created if missing).

    Returns:
        Paths by kind: ``report``, ``summary`` and (when scored) ``evaluation``.
    """
    out = Path(out)
    paths = {
        "report": write_atomic(
            out / "gate-report.json", validation.report.model_dump_json(indent=2).encode()
        ),
        "summary": write_atomic(out / "gate-report.md", summary_text(validation.report).encode()),
    }
    if validation.evaluation is not None:
        paths["evaluation"] = write_atomic(
            out / "evaluation.json", json.dumps(_jsonable(validation.evaluation)).encode()
        )
    else:
        (out / "evaluation.json").unlink(missing_ok=True)
    return paths


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
