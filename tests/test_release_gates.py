"""Release gates: the declared protocol, each gate's verdict and numbers, the CLI's exit code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from release.exceptions import GateError, ProtocolError
from release.gates import ScoredModel, evaluate_gates
from release.protocol import GateProtocol, load_protocol
from sonofed.cli import main
from tests._release_world import TEST_PROTOCOL

REPO = Path(__file__).resolve().parents[1]


def _scored(y, prob, sites, *, sens=0.96, spec=0.92, dice=0.9, ece=0.05, version="1.0.0"):
    """A ScoredModel with chosen per-case scores and chosen pooled rates."""
    from sklearn.metrics import roc_auc_score

    auc = float(roc_auc_score(y, prob))
    rates = {"tp": 1, "fp": 1, "tn": 1, "fn": 1, "threshold": 0.5}
    pooled = {
        "auc": {"auc": auc, "ci_low": auc - 0.05, "ci_high": min(1.0, auc + 0.05), "reason": None},
        "ece": ece,
        "brier": 0.1,
        "dice_mean": dice,
        "thresholds": {
            "high-sensitivity": {**rates, "sensitivity": sens, "specificity": 0.5},
            "high-accuracy": {**rates, "sensitivity": 0.8, "specificity": 0.8},
            "high-specificity": {**rates, "sensitivity": 0.5, "specificity": spec},
        },
    }
    evaluation = {
        "y_true": list(map(int, y)),
        "prob": list(map(float, prob)),
        "groups": {"site": list(sites), "scanner": list(sites)},
        "summary": {"pooled": pooled},
    }
    return ScoredModel(version, "f" * 64, evaluation)


@pytest.fixture(scope="module")
def cases():
    rng = np.random.default_rng(0)
    y = np.array([0, 1] * 60)
    sites = np.array(["site-a"] * 60 + ["site-b"] * 60)
    good = np.clip(y * 0.6 + rng.normal(0.2, 0.15, len(y)), 0, 1)
    return y, sites, good


def _by_name(gates):
    return {g.name: g for g in gates}


def test_production_protocol_is_declared_in_params_with_the_issue_numbers():
    protocol = load_protocol(REPO / "params.yaml")
    assert protocol.protocol_version >= 1
    assert protocol.auc_non_inferiority_margin == 0.02
    assert protocol.min_sensitivity_high_sensitivity == 0.95
    assert protocol.min_specificity_high_specificity == 0.90
    assert protocol.confidence == 0.95
    assert {"site", "scanner"} <= set(protocol.subgroupings)


def test_a_malformed_protocol_is_refused(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["gates"]["auc_non_inferiority_margin"] = -1
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(params))
    with pytest.raises(ProtocolError, match="auc_non_inferiority_margin"):
        load_protocol(bad)
    (tmp_path / "empty.yaml").write_text("phantom: {}\n")
    with pytest.raises(ProtocolError, match="no `gates` block"):
        load_protocol(tmp_path / "empty.yaml")


def test_candidate_equal_to_current_passes_non_inferiority_and_subgroups(cases):
    y, sites, good = cases
    model = _scored(y, good, sites)
    gates = _by_name(evaluate_gates(model, model, TEST_PROTOCOL))
    assert "auc-floor" not in gates  # comparisons replace the first release's floors
    assert gates["auc-non-inferiority"].passed
    assert gates["auc-non-inferiority"].measured["delta"] == 0.0
    assert gates["subgroup-auc"].passed


def test_a_worse_candidate_fails_non_inferiority_and_the_report_has_the_numbers(cases):
    y, sites, good = cases
    rng = np.random.default_rng(1)
    worse = np.clip(good + rng.normal(0, 0.35, len(y)), 0, 1)
    gates = _by_name(
        evaluate_gates(_scored(y, worse, sites), _scored(y, good, sites), TEST_PROTOCOL)
    )
    gate = gates["auc-non-inferiority"]
    assert not gate.passed
    assert gate.measured["ci_low"] < -TEST_PROTOCOL.auc_non_inferiority_margin
    assert gate.measured["auc_b"] < gate.measured["auc_a"]
    assert "difference" in gate.detail


def test_one_site_losing_auc_fails_the_subgroup_gate_naming_the_site(cases):
    y, sites, good = cases
    rng = np.random.default_rng(2)
    hurt = good.copy()
    in_b = sites == "site-b"
    hurt[in_b] = rng.uniform(0, 1, in_b.sum())  # site-b loses its signal, site-a is unchanged
    gates = _by_name(
        evaluate_gates(_scored(y, hurt, sites), _scored(y, good, sites), TEST_PROTOCOL)
    )
    gate = gates["subgroup-auc"]
    assert not gate.passed
    assert "site-b" in gate.detail and "site-a" not in gate.detail.split("below")[1].split(";")[0]
    rows = {(r["grouping"], r["group"]): r for r in gate.measured["subgroups"]}
    assert rows[("site", "site-b")]["delta"] < -0.05
    assert abs(rows[("site", "site-a")]["delta"]) < 1e-12


def test_first_release_is_judged_on_absolute_floors(cases):
    y, sites, good = cases
    gates = _by_name(evaluate_gates(_scored(y, good, sites), None, TEST_PROTOCOL))
    assert "auc-non-inferiority" not in gates
    assert gates["auc-floor"].passed
    low = _by_name(evaluate_gates(_scored(y, 1 - good, sites), None, TEST_PROTOCOL))
    assert not low["auc-floor"].passed
    assert not low["subgroup-auc"].passed


@pytest.mark.parametrize(
    ("field", "value", "gate"),
    [
        ("sens", 0.90, "sensitivity-high-sensitivity-mode"),
        ("spec", 0.85, "specificity-high-specificity-mode"),
        ("dice", 0.70, "dice-floor"),
        ("ece", 0.30, "ece-ceiling"),
    ],
)
def test_each_floor_and_ceiling_fails_on_its_own(cases, field, value, gate):
    y, sites, good = cases
    strict = GateProtocol.model_validate(
        {
            **TEST_PROTOCOL.model_dump(),
            "min_sensitivity_high_sensitivity": 0.95,
            "min_specificity_high_specificity": 0.90,
            "dice_floor": 0.8,
            "ece_ceiling": 0.15,
        }
    )
    gates = _by_name(evaluate_gates(_scored(y, good, sites, **{field: value}), None, strict))
    failed = {name for name, g in gates.items() if not g.passed}
    assert failed == {gate}
    assert gates[gate].measured  # every gate reports its numbers


def test_scores_on_different_cases_cannot_be_compared(cases):
    y, sites, good = cases
    other = _scored(y[:-2], good[:-2], sites[:-2])
    with pytest.raises(GateError, match="different cases"):
        evaluate_gates(_scored(y, good, sites), other, TEST_PROTOCOL)


def _run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_validate_with_production_gates_fails_the_tiny_model_with_exit_1(
    tiny_world, tmp_path, capsys
):
    out = tmp_path / "gates"
    argv = [
        "vendor",
        "validate",
        "--candidate",
        str(tiny_world.bundle),
        "--testset",
        str(tiny_world.locked),
        "--out",
        str(out),
        "--params",
        str(REPO / "params.yaml"),
    ]
    code, stdout, _ = _run(argv, capsys)
    assert code == 1
    report = json.loads((out / "gate-report.json").read_text())
    assert report["passed"] is False and report["first_release"] is True
    failed = [g["name"] for g in report["gates"] if not g["passed"]]
    assert failed and "FAIL" in stdout
    assert all(name in stdout for name in failed)
    assert "No release: failed gate(s)" in (out / "gate-report.md").read_text()
    for gate in report["gates"]:
        assert gate["requirement"] and gate["detail"]


def test_validate_passes_a_candidate_compared_with_itself(tiny_world, tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gates": TEST_PROTOCOL.model_dump(mode="json")}))
    out = tmp_path / "gates"
    argv = [
        "vendor",
        "validate",
        "--candidate",
        str(tiny_world.bundle),
        "--current",
        str(tiny_world.bundle),
        "--testset",
        str(tiny_world.locked),
        "--out",
        str(out),
        "--params",
        str(params),
        "--json",
    ]
    code, stdout, _ = _run(argv, capsys)
    assert code == 0
    verdict = json.loads(stdout)
    assert verdict["passed"] and verdict["failed"] == []
    names = [g["name"] for g in verdict["gates"]]
    assert names[0] == "locked-set-integrity" and "auc-non-inferiority" in names
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert len(evaluation["y_true"]) == len(evaluation["prob"]) > 0


def test_a_tampered_locked_set_fails_the_integrity_gate(tiny_world, tmp_path, capsys):
    locked = tmp_path / "locked"
    shutil.copytree(tiny_world.locked, locked)
    image = next((locked / "images").rglob("*.png"))
    image.write_bytes(image.read_bytes() + b"\0")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"gates": TEST_PROTOCOL.model_dump(mode="json")}))
    argv = [
        "vendor",
        "validate",
        "--candidate",
        str(tiny_world.bundle),
        "--testset",
        str(locked),
        "--out",
        str(tmp_path / "gates"),
        "--params",
        str(params),
    ]
    code, _, _ = _run(argv, capsys)
    assert code == 1
    report = json.loads((tmp_path / "gates" / "gate-report.json").read_text())
    assert [g["name"] for g in report["gates"]] == ["locked-set-integrity"]
    assert "bytes changed" in report["gates"][0]["detail"]
    assert not (tmp_path / "gates" / "evaluation.json").exists()
