"""Intake, quarantine, duplicates, eligibility and versions of a site registry."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from data_registry import Registry, ingest
from data_registry.exceptions import RegistryStateError
from data_registry.importers import get_importer
from data_registry.schema import Case
from tests._exports import Export, disk_mask, textured_image

FOLDER = get_importer("folder")


def _ingest(export: Export, registry: Path, **kwargs):
    return ingest(
        FOLDER(export.write()), registry, site_id="site-t", source="folder:test", **kwargs
    )


def _png_with_header_size(path: Path, width: int, height: int) -> None:
    """A valid small PNG whose IHDR claims another size (as a hostile or broken file would)."""
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    path.write_bytes(bytes(data))


def test_bad_files_are_quarantined_with_their_reason_and_the_rest_goes_on(tmp_path):
    export = Export(tmp_path / "export")
    export.add("c001")
    export.add("c002")
    images = export.root / "images"
    export.add("c003")
    full = (images / "c003.png").read_bytes()
    (images / "c003.png").write_bytes(full[: len(full) // 2])  # truncated
    export.add("c004")
    (images / "c004.png").write_bytes(b"")  # zero bytes
    export.add("c005", mask=disk_mask((50, 50), (20, 20), 10))  # mask size differs
    export.add("c006")
    Image.fromarray(textured_image(6).astype(np.uint16) * 250).save(images / "c006.png")  # 16-bit
    export.add("c007")
    rgba = np.dstack([textured_image(7)] * 3 + [np.full((96, 128), 128, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(images / "c007.png")  # transparent RGBA
    export.add("c008")
    _png_with_header_size(images / "c008.png", 20000, 20000)
    export.add("c009", mask=np.zeros((96, 128), bool))  # empty mask on a benign case
    export.add("c010", pathology="maybe")
    export.add("c011", reference="")
    export.add("c012", patient_id="John Smith")
    grey_rgb = np.dstack([textured_image(13)] * 3)
    export.add("c013", image=grey_rgb)  # grey stored as RGB: normalised, accepted

    summary = _ingest(export, tmp_path / "reg")

    registry = Registry(tmp_path / "reg")
    reasons = {q.case_id: q.reason for q in registry.state.quarantine}
    assert reasons == {
        "c003": "truncated-image",
        "c004": "unreadable-image",
        "c005": "mask-size-mismatch",
        "c006": "unsupported-image-mode",
        "c007": "unsupported-image-mode",
        "c008": "absurd-size",
        "c009": "empty-mask",
        "c010": "unknown-label",
        "c011": "missing-reference-standard",
        "c012": "invalid-field",
    }
    details = {q.case_id: q.detail for q in registry.state.quarantine}
    assert "patient_id" in details["c012"]
    assert "20000x20000" in details["c008"] or "pixels" in details["c008"]
    assert summary.received == 13
    assert summary.accepted == 3
    assert sum(summary.quarantined.values()) == 10
    assert {e.case.case_id for e in registry.entries} == {"c001", "c002", "c013"}
    assert registry.image(next(e for e in registry.entries if e.case.case_id == "c013")).ndim == 2


def test_schema_refuses_unknown_fields_and_names(tmp_path):
    fields = {
        "case_id": "c1",
        "patient_id": "p1",
        "site_id": "site-a",
        "image": "images/c1.png",
        "image_sha256": "0" * 64,
        "source_sha256": "0" * 64,
        "width": 64,
        "height": 64,
        "pathology": "normal",
        "reference_standard": "follow-up",
        "ingested_at": datetime.now(UTC),
    }
    Case(**fields)
    with pytest.raises(ValidationError, match="patient_name"):
        Case(**fields, patient_name="Jane Doe")
    with pytest.raises(ValidationError, match="patient_id"):
        Case(**{**fields, "patient_id": "Jane Doe"})
    with pytest.raises(ValidationError, match="patient_id"):
        Case(**{**fields, "patient_id": "JaneDoe"})  # a pseudonym carries a digit


def test_copies_grouped_agreeing_kept_once_conflicting_excluded(tmp_path):
    export = Export(tmp_path / "export")
    base = textured_image(1, (120, 160))
    export.add("c001", image=base, mask=disk_mask((120, 160)))
    export.add("c002", image=base, mask=disk_mask((120, 160)))  # exact copy, same label
    near = np.asarray(Image.fromarray(base).resize((128, 96), Image.Resampling.LANCZOS))
    near = np.clip(near.astype(int) + 12, 0, 255).astype(np.uint8)  # resized and brighter
    export.add("c003", image=near, mask=disk_mask((96, 128)), pathology="malignant")
    export.add("c004", seed=44)
    export.add("c005", seed=55, pathology="malignant", reference="follow-up")
    export.add("c006", seed=66, reference="none")
    export.add("c007", seed=77, reference="follow-up")

    summary = _ingest(export, tmp_path / "reg")

    entries = {e.case.case_id: e for e in Registry(tmp_path / "reg").entries}
    assert summary.duplicates.exact == 1
    assert summary.duplicates.near == 2
    assert sorted(map(sorted, summary.duplicates.conflicting)) == [
        ["c001", "c003"],
        ["c002", "c003"],
    ]
    assert entries["c001"].group == entries["c002"].group == entries["c003"].group
    assert all("conflicting-duplicate" in entries[c].reasons for c in ("c001", "c002", "c003"))
    assert entries["c004"].eligible and entries["c007"].eligible  # follow-up counts for benign
    assert entries["c005"].reasons == ("follow-up-only-for-malignant",)
    assert entries["c006"].reasons == ("unconfirmed-reference",)


def test_agreeing_copies_keep_the_first(tmp_path):
    export = Export(tmp_path / "export")
    base = textured_image(3)
    export.add("c001", image=base)
    export.add("c002", image=base)
    _ingest(export, tmp_path / "reg")
    entries = {e.case.case_id: e for e in Registry(tmp_path / "reg").entries}
    assert entries["c001"].eligible
    assert entries["c002"].reasons == ("duplicate-of:c001",)


def test_versions_and_new_cases_since(tmp_path):
    export = Export(tmp_path / "export")
    for i in range(3):
        export.add(f"c00{i}")
    first = _ingest(export, tmp_path / "reg")
    for i in range(3, 5):
        export.add(f"c00{i}")
    second = _ingest(export, tmp_path / "reg")
    registry = Registry(tmp_path / "reg")
    assert (first.version, second.version) == (1, 2)
    assert second.already_present == 3 and second.accepted == 2
    assert {e.case.case_id for e in registry.eligible(since=1)} == {"c003", "c004"}
    assert len(registry.eligible()) == 5
    assert [row["version"] for row in registry.status()["history"]] == [1, 2]
    assert len(Registry(tmp_path / "reg", version=1).entries) == 3
    with pytest.raises(RegistryStateError, match="--since 7"):
        registry.eligible(since=7)
    with pytest.raises(RegistryStateError, match="site-t"):
        ingest(FOLDER(export.root), tmp_path / "reg", site_id="site-x", source="x")


def test_a_killed_ingest_leaves_the_previous_version_intact(tmp_path):
    export = Export(tmp_path / "export")
    export.add("c000")
    before = _ingest(export, tmp_path / "reg")
    for i in range(1, 400):
        export.add(f"c{i:03d}", image=textured_image(i, (256, 256)), mask=disk_mask((256, 256)))
    export.write()
    command = [
        sys.executable, "-m", "sonofed.cli", "hospital", "ingest", "--source", "folder",
        "--path", str(export.root), "--registry", str(tmp_path / "reg"), "--site-id", "site-t",
        "--quiet", "--no-exclude",
    ]  # fmt: skip
    process = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    images = tmp_path / "reg" / "images"
    while time.monotonic() < deadline and len(list(images.glob("*.png"))) < 20:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()

    registry = Registry(tmp_path / "reg")
    assert registry.version == 1, "the ingest finished before it was killed: make the export larger"
    assert registry.state.summary.content_hash == before.content_hash
    after = _ingest(export, tmp_path / "reg")  # the stale lock of the dead process is taken over
    assert after.version == 2 and after.accepted == 399


def test_dvc_round_trip_of_registry_versions(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    dvc = str(Path(sys.executable).with_name("dvc"))

    def run(*command: str) -> None:
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)

    run("git", "init", "-q")
    run(dvc, "init", "-q")
    run(dvc, "remote", "add", "-d", "local", str(tmp_path / "remote"))
    export = Export(tmp_path / "export")
    for i in range(3):
        export.add(f"c00{i}")
    v1 = _ingest(export, repo / "reg")
    run(dvc, "add", "reg")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "registry v1")
    run(dvc, "push", "-q")
    export.add("c003")
    v2 = _ingest(export, repo / "reg")
    run(dvc, "add", "reg")
    run("git", "commit", "-qam", "registry v2")
    run(dvc, "push", "-q")
    assert Registry(repo / "reg").version == 2

    run("git", "checkout", "-q", "HEAD~1")
    subprocess.run(["rm", "-rf", str(repo / ".dvc" / "cache")], check=True)
    run(dvc, "pull", "-q", "--force")  # from the remote, as a fresh clone would
    restored = Registry(repo / "reg")
    assert restored.version == 1
    assert restored.state.summary.content_hash == v1.content_hash != v2.content_hash
    assert len(restored.entries) == 3


@pytest.mark.realdata
def test_busi_conflicting_copies_found(real_data, tmp_path):
    summary = ingest(
        get_importer("busi")(real_data / "busi", assume_reference="biopsy"),
        tmp_path / "reg",
        site_id="busi",
        source="busi",
    )
    conflicting = {tuple(sorted(pair)) for pair in summary.duplicates.conflicting}
    assert ("busi-benign-433", "busi-malignant-145") in conflicting
    assert summary.duplicates.exact >= 1
    assert summary.received == summary.accepted == 620
    status = Registry(tmp_path / "reg").status()
    assert status["ineligible_reasons"]["duplicate-of"] > 50  # about one image in five has a copy
    json.dumps(status)
