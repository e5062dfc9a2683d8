"""The release bundle: a gated model bundle with its version, lineage, model card and self-test.

:func:`build_release` turns a candidate that passed the gates into a release folder (layout in
:mod:`release.layout`); :func:`write_archive` packs it into the one file the TUF repository
signs; :func:`verify_release` (in :mod:`release.manifest`) checks a release folder against
its manifest; the console does that after unpacking, before its self-test.
"""

from __future__ import annotations

import gzip
import html
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from data_registry.files import fsync_dir, remove_tree, write_atomic
from models.bundle import BundleMetadata, load_metadata, write_metadata
from models.exceptions import ModelError
from release import semver
from release.exceptions import GateError, GateReportError, PackagingError, VersionError
from release.gate_report import GateReport, load_report, summary_text
from release.layout import (
    DEFAULT_CONSOLE_MODEL,
    EVALUATION_FILE,
    GATE_REPORT,
    GATE_SUMMARY,
    LINEAGE_FILE,
    MODEL_CARD,
    MODEL_DIR,
    PRODUCT,
)
from release.manifest import (
    ReleaseManifest,
    behaviour_fingerprint,
    seal_release,
    verify_release,
)
from release.selftest import make_reference_cases

ARCHIVE_MTIME = 0
"""Every archive member gets this mtime, so the same release packs to the same bytes."""


# --- lineage ---------------------------------------------------------------------------------


def _git_commit(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    return {"commit": commit, "dirty": dirty}


def _dvc_outs(dvc_lock: Path | None) -> dict[str, str]:
    if dvc_lock is None or not Path(dvc_lock).is_file():
        return {}
    try:
        data = yaml.safe_load(Path(dvc_lock).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    outs = {}
    for stage in (data.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "path" in out and "md5" in out:
                outs[str(out["path"]).rstrip("/")] = out["md5"]
    return outs


def registry_lineage(registries: Sequence[Path], dvc_lock: Path | None) -> list[dict[str, Any]]:
    """Each site registry's id, current version, and its DVC hash when ``dvc.lock`` has one.

    Args:
        registries: site registry folders.
        dvc_lock: the pipeline's ``dvc.lock`` (or None).

    Returns:
        One dict per registry.

    Raises:
        PackagingError: a folder is not a registry.
    """
    from data_registry import Registry, RegistryError

    outs = _dvc_outs(dvc_lock)
    rows = []
    for path in registries:
        try:
            registry = Registry(Path(path))
            row = {
                "path": str(path),
                "site_id": registry.state.site_id,
                "version": registry.version,
            }
        except RegistryError as e:
            raise PackagingError(f"{path}: not a readable registry: {e}") from e
        if str(Path(path)).rstrip("/") in outs:
            row["dvc_md5"] = outs[str(Path(path)).rstrip("/")]
        rows.append(row)
    return rows


def build_lineage(
    metadata: BundleMetadata,
    report: GateReport,
    *,
    registries: Sequence[Path] = (),
    dvc_lock: Path | None = None,
    code_root: Path | None = None,
) -> dict[str, Any]:
    """The release's lineage.

    Args:
        metadata: the candidate's metadata (its ``lineage`` holds the federation's record:
            cycle, rounds, participating sites).
        report: the passing gate report.
        registries: the site registries the candidate was trained from.
        dvc_lock: the pipeline's ``dvc.lock``, for the registries' DVC hashes.
        code_root: the source checkout (for the commit); this package's checkout when None.

    Returns:
        A JSON-ready dict.
    """
    root = code_root or Path(__file__).resolve().parents[1]
    return {
        "candidate_version": metadata.version,
        "candidate_created": metadata.created.isoformat(),
        "federation": metadata.lineage,
        "training_data": metadata.training_data,
        "registries": registry_lineage(registries, dvc_lock),
        "locked_test_manifest_hash": report.locked_manifest_hash,
        "gate_protocol_version": report.protocol_version,
        "compared_with": report.current.version if report.current else None,
        "code": _git_commit(root),
    }


# --- the model card --------------------------------------------------------------------------


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    head = ""
    if header:
        head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{head}{body}</table>"


def _evaluation_body(evaluation: dict[str, Any], version: str) -> str:
    """The ROC and reliability figures and the pooled/site/scanner tables, as HTML.

    They come from :func:`models.report.write_evaluation_report`, so the model card shows
    exactly what the vendor's evaluation report shows.
    """
    from models.report import write_evaluation_report

    fields = ("y_true", "prob", "groups", "dice", "summary", "operating_points")
    payload = {k: evaluation[k] for k in fields if k in evaluation}
    payload |= {"model_version": version, "title": "Locked test set"}
    payload["descriptor_agreement"] = evaluation.get("descriptor_agreement", {})
    with tempfile.TemporaryDirectory() as scratch:
        page = write_evaluation_report(Path(scratch) / "evaluation.html", payload).read_text()
    match = re.search(r"</h1>(.*)<p class=\"use\">", page, flags=re.S)
    if match is None:
        raise PackagingError("the evaluation report has an unexpected layout")
    return match.group(1)


def write_model_card(
    path: Path,
    manifest: ReleaseManifest,
    metadata: BundleMetadata,
    lineage: dict[str, Any],
    report: GateReport,
    evaluation: dict[str, Any],
) -> Path:
    """Write the self-contained HTML model card.

    Args:
        path: the file to write.
        manifest: the release manifest (version, compatibility).
        metadata: the released model's metadata (input, modes, temperature).
        lineage: :func:`build_lineage` output.
        report: the gate report.
        evaluation: the candidate's per-case locked-set results (``evaluation.json``).

    Returns:
        The path written.

    Raises:
        PackagingError: the evaluation cannot be drawn.
    """
    from models.exceptions import ModelError as _ModelError

    code = lineage.get("code", {})
    overview = _table(
        [
            ("Version", manifest.version),
            ("Parent version", manifest.parent_version or "— (first release)"),
            ("Created", manifest.created.isoformat()),
            ("Minimum console software", manifest.min_console_version),
            ("Console models", ", ".join(manifest.console_models)),
            ("Input", metadata.input.get("image", "")),
            ("Click", metadata.input.get("seed", "")),
            ("Temperature", f"{metadata.temperature:.4f}"),
            ("Code commit", f"{code.get('commit')}{' (dirty)' if code.get('dirty') else ''}"),
        ]
    )
    gates = _table(
        [(g.name, "pass" if g.passed else "FAIL", g.requirement, g.detail) for g in report.gates],
        ["gate", "result", "requirement", "measured"],
    )
    sites = lineage.get("training_data", {}).get("sites", {})
    data_rows = [
        (site, ", ".join(f"{k} {v}" for k, v in info.items() if not isinstance(v, dict | list)))
        for site, info in sites.items()
        if isinstance(info, dict)
    ]
    registry_rows = [
        (r["site_id"], r["version"], r.get("dvc_md5", "—")) for r in lineage["registries"]
    ] or [
        (site, info.get("version"), info.get("content_hash", "—"))
        for site, info in (lineage.get("training_data", {}).get("registries") or {}).items()
        if isinstance(info, dict)
    ]
    registries = _table(registry_rows, ["site", "registry version", "hash"])
    federation = json.dumps(lineage.get("federation") or {}, indent=1, default=str)
    try:
        figures = _evaluation_body(evaluation, manifest.version)
    except (_ModelError, ValueError, KeyError) as e:
        raise PackagingError(f"cannot draw the model card's evaluation: {e}") from e
    body = "".join(
        [
            f'<p class="use"><b>Intended use.</b> {html.escape(manifest.intended_use)}</p>',
            "<h2>Release</h2>",
            overview,
            f"<h2>Release gates (protocol v{report.protocol_version}, "
            f"{'first release' if report.first_release else 'vs ' + str(report.current.version if report.current else '')})</h2>",
            gates,
            f"<p>Locked test set {html.escape(str(report.locked_manifest_hash))}, "
            f"{report.n_cases} lesions.</p>",
            "<h2>Training data</h2>",
            _table(data_rows, ["site", "contribution"]) if data_rows else "",
            registries,
            "<h2>Federation</h2>",
            f"<pre>{html.escape(federation)}</pre>",
            figures,
        ]
    )
    title = f"Model card — {PRODUCT} {manifest.version}"
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:64em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}th{background:#eee}"
        ".use{border-left:4px solid #c80;padding:.5em;background:#fff8e8}"
    )
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}"
        "</body></html>\n"
    )
    return write_atomic(path, page.encode())


# --- building, verifying, packing ------------------------------------------------------------


def _check_report(report: GateReport, candidate: BundleMetadata) -> None:
    if not report.passed:
        failed = ", ".join(g.name for g in report.failed)
        raise GateReportError(f"the candidate failed the release gates ({failed}): no release")
    if report.candidate.fingerprint != behaviour_fingerprint(candidate):
        raise GateReportError(
            "the gate report was made for another candidate (model, thresholds or calibration "
            "differ); run `sonofed vendor validate` on this candidate"
        )
    if report.locked_manifest_hash is None:
        raise GateReportError("the gate report names no locked test set")


def _release_version(
    requested: str | None, candidate: BundleMetadata, report: GateReport
) -> tuple[str, str | None]:
    version = requested or candidate.version
    parsed = semver.parse(version)
    parent = report.current.version if report.current else None
    if parent is not None and not parsed > semver.parse(parent):
        raise VersionError(f"release {version} does not come after the current release {parent}")
    return version, parent


def build_release(
    candidate: Path,
    gate_report: Path,
    out: Path,
    *,
    version: str | None = None,
    min_console_version: str = "0.1.0",
    console_models: Sequence[str] = (DEFAULT_CONSOLE_MODEL,),
    registries: Sequence[Path] = (),
    dvc_lock: Path | None = None,
    reference_cases: int = 3,
) -> ReleaseManifest:
    """Build a release folder from a candidate that passed the gates.

    Args:
        candidate: the candidate model bundle folder.
        gate_report: its ``gate-report.json`` (``evaluation.json`` must sit beside it).
        out: the release folder to create (must not exist).
        version: the release's semantic version (default: the candidate's).
        min_console_version: oldest console software that may install it.
        console_models: console hardware models it is for.
        registries: the site registries it was trained from (for the lineage).
        dvc_lock: the pipeline's ``dvc.lock`` (for the registries' DVC hashes).
        reference_cases: number of self-test reference cases.

    Returns:
        The sealed release manifest.

    Raises:
        GateReportError: the gates failed, or the report is for another candidate.
        VersionError: a version is not semantic or does not move forward.
        PackagingError: the candidate cannot be read, ``out`` exists, or a file cannot be made.
    """
    out = Path(out)
    if out.exists():
        raise PackagingError(f"{out}: already exists; a release folder is never overwritten")
    semver.parse(min_console_version)
    try:
        metadata = load_metadata(candidate)
        report = load_report(gate_report)
    except (ModelError, GateError) as e:
        raise PackagingError(str(e)) from e
    _check_report(report, metadata)
    evaluation_path = Path(gate_report).parent / EVALUATION_FILE
    try:
        evaluation = json.loads(evaluation_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise GateReportError(f"{evaluation_path}: the gate report's evaluation is missing") from e
    release_version, parent = _release_version(version, metadata, report)
    lineage = build_lineage(metadata, report, registries=registries, dvc_lock=dvc_lock)
    staging = out.with_name(f".{out.name}.building")
    remove_tree(staging)
    try:
        shutil.copytree(candidate, staging / MODEL_DIR)
        released = metadata.model_copy(
            update={
                "version": release_version,
                "parent_version": parent,
                "min_console_version": min_console_version,
                "lineage": {**metadata.lineage, "release": {"candidate_version": metadata.version}},
            }
        )
        write_metadata(staging / MODEL_DIR, released)
        load_metadata(staging / MODEL_DIR)
        write_atomic(staging / LINEAGE_FILE, json.dumps(lineage, indent=2, default=str).encode())
        write_atomic(staging / GATE_REPORT, report.model_dump_json(indent=2).encode())
        write_atomic(staging / GATE_SUMMARY, summary_text(report).encode())
        make_reference_cases(staging, count=reference_cases)
        manifest = ReleaseManifest(
            version=release_version,
            parent_version=parent,
            created=datetime.now(UTC).replace(microsecond=0),
            min_console_version=min_console_version,
            console_models=list(console_models),
            model_fingerprint=behaviour_fingerprint(released),
            gate_protocol_version=report.protocol_version,
            locked_manifest_hash=str(report.locked_manifest_hash),
            files={},
        )
        write_model_card(staging / MODEL_CARD, manifest, released, lineage, report, evaluation)
        manifest = seal_release(staging, manifest)
        os.replace(staging, out)
        fsync_dir(out.parent)
    except (OSError, ModelError, ValidationError) as e:
        remove_tree(staging)
        raise PackagingError(f"cannot build the release in {out}: {e}") from e
    except BaseException:
        remove_tree(staging)
        raise
    return manifest


def write_archive(folder: Path, dest: Path) -> Path:
    """Pack a release folder into a deterministic ``.tar.gz`` (sorted, mtime 0, owner 0).

    Args:
        folder: a verified release folder.
        dest: the archive to write (atomically).

    Returns:
        ``dest``.

    Raises:
        ReleaseIntegrityError: the folder does not verify.
    """
    verify_release(folder)
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=6, mtime=ARCHIVE_MTIME) as zipped,
        tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        paths = sorted(Path(folder).rglob("*"))
        for path in paths:
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = ARCHIVE_MTIME, 0, 0, "", ""
            info.mode = 0o755 if info.isdir() else 0o644
            if info.isdir():
                tar.addfile(info)
            else:
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)
    return write_atomic(Path(dest), buffer.getvalue())
