"""The gate report (``gate-report.json`` and its plain-text ``gate-report.md``).

Written by ``sonofed vendor validate``; read by ``sonofed vendor release``, which builds a
release only from a passing report made for the same candidate and locked test set.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from release.exceptions import GateError


class GateResult(BaseModel):
    """One gate's verdict and the numbers it was decided on."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    passed: bool
    requirement: str
    measured: dict[str, Any]
    detail: str = ""


class ModelRef(BaseModel):
    """Which bundle a report speaks of."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    fingerprint: str
    path: str


class GateReport(BaseModel):
    """``gate-report.json``: the protocol, both models, every gate, and the verdict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    created: datetime
    protocol_version: int
    protocol: dict[str, Any]
    first_release: bool
    candidate: ModelRef
    current: ModelRef | None = None
    locked_manifest_hash: str | None
    n_cases: int
    gates: list[GateResult]
    passed: bool

    @property
    def failed(self) -> list[GateResult]:
        """The gates that did not pass."""
        return [g for g in self.gates if not g.passed]


def summary_text(report: GateReport) -> str:
    """The report as a short plain-text table (also written as ``gate-report.md``).

    Args:
        report: a gate report.

    Returns:
        Markdown text naming every gate, its requirement, the measured value and the verdict.
    """
    current = report.current.version if report.current else "none (first release)"
    lines = [
        f"# Release gates — candidate {report.candidate.version}",
        "",
        f"- protocol version {report.protocol_version}; current release: {current}",
        f"- locked test set {report.locked_manifest_hash or '—'} ({report.n_cases} cases)",
        f"- verdict: {'PASSED' if report.passed else 'FAILED'}",
        "",
        "| gate | result | requirement | measured |",
        "|---|---|---|---|",
    ]
    for gate in report.gates:
        verdict = "pass" if gate.passed else "**FAIL**"
        lines.append(f"| {gate.name} | {verdict} | {gate.requirement} | {gate.detail} |")
    if not report.passed:
        names = ", ".join(g.name for g in report.failed)
        lines += ["", f"No release: failed gate(s): {names}."]
    return "\n".join(lines) + "\n"


def load_report(path: Path) -> GateReport:
    """Read a ``gate-report.json``.

    Raises:
        GateError: the file is missing or does not validate.
    """
    try:
        return GateReport.model_validate_json(Path(path).read_bytes())
    except (OSError, ValidationError) as e:
        raise GateError(f"{path}: not a readable gate report ({e})") from e
