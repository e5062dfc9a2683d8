"""The demo's closing summary: both releases' gate tables side by side, what changed between
them, and where the reports are. Usage: ``python scripts/demo_summary.py RUNS``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from release.gate_report import load_report

runs = Path(sys.argv[1])
cycles = [
    ("1.0.0", runs / "gates", runs / "release", runs / "federate-history.json"),
    (
        "1.1.0",
        runs / "cycle1" / "gates",
        runs / "cycle1" / "release",
        runs / "cycle1" / "federate-history.json",
    ),
]
reports = [load_report(gates / "gate-report.json") for _, gates, _, _ in cycles]


def _cell(report, name: str) -> str:
    gate = next((g for g in report.gates if g.name == name), None)
    if gate is None:
        return "—"
    return f"{'pass' if gate.passed else 'FAIL'}: {gate.detail}"


names = list(dict.fromkeys(g.name for r in reports for g in r.gates))
headers = [
    f"{r.candidate.version} ({'first release' if r.first_release else 'vs ' + r.current.version})"
    for r in reports
]
width = max(len(n) for n in names)
print(
    f"Release gates (protocol version {reports[0].protocol_version}, locked set "
    f"{reports[0].n_cases} cases), side by side:"
)
for name in names:
    print(f"  {name:<{width}}")
    for header, report in zip(headers, reports, strict=True):
        print(f"    {header:<24} {_cell(report, name)}")


def _training(release: Path) -> dict:
    metadata = json.loads((release / "model" / "metadata.json").read_text())
    return metadata.get("training_data") or {}


def _last(history: Path) -> dict:
    return json.loads(history.read_text())[-1]


print()
print("What changed from 1.0.0 to 1.1.0:")
before, after = (_training(release) for _, _, release, _ in cycles)
for site, info in (after.get("sites") or {}).items():
    old = (before.get("sites") or {}).get(site, {})
    print(
        f"  {site}: registry version {old.get('registry_version', '?')} -> "
        f"{info.get('registry_version', '?')}; trained on {old.get('num_examples', '?')} cases "
        f"in cycle 0, then {info.get('new_cases', '?')} new + "
        f"{info.get('rehearsal_cases', '?')} rehearsal cases in cycle 1"
    )
print(
    f"  local validation (thresholds, calibration): {before.get('validation_cases', '?')} -> "
    f"{after.get('validation_cases', '?')} cases"
)
first, second = (_last(history) for *_, history in cycles)
print(
    f"  locked-test AUC {first['auc']:.3f} -> {second['auc']:.3f}, "
    f"Dice {first['dice']:.3f} -> {second['dice']:.3f} "
    f"(after {first['round']} rounds of cycle 0, {second['round']} of cycle 1)"
)
print()
print("Reports:")
print(f"  release gates:   {runs}/gates/gate-report.md, {runs}/cycle1/gates/gate-report.md")
print(f"  model cards:     {runs}/release/model-card.html, {runs}/cycle1/release/model-card.html")
print(
    f"  console reports: {runs}/console-results-1.0.0/, {runs}/console-results-1.1.0/"
    " (<case>/report.html)"
)
print(f"  update log:      {runs}/update-access.log;  rounds: dvc plots show")
