"""The vendor's locked test set: sealing, tamper detection, exclusion of its cases everywhere."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_registry import LockedTestSet, Registry, SourceSpec, TestSetIntegrityError, lock_testset
from data_registry.exceptions import SourceError
from data_registry.exclusion import Exclusion
from data_registry.importers import get_importer
from data_registry.ingest import ingest
from tests._exports import Export, disk_mask, textured_image


@pytest.fixture
def source(tmp_path):
    """40 patients, a quarter malignant; every third patient has a second image."""
    export = Export(tmp_path / "export")
    for p in range(40):
        pathology = "malignant" if p % 4 == 0 else "benign"
        export.add(f"c{p:03d}a", patient_id=f"p{p:03d}", pathology=pathology, seed=p)
        if p % 3 == 0:
            export.add(f"c{p:03d}b", patient_id=f"p{p:03d}", pathology=pathology, seed=100 + p)
    return export


def _lock(export: Export, out, fraction=0.25, seed=1):
    return lock_testset([SourceSpec("folder", export.write())], out, fraction=fraction, seed=seed)


def test_lock_is_patient_disjoint_stratified_and_verifies(source, tmp_path):
    summary = _lock(source, tmp_path / "locked")
    locked = LockedTestSet(tmp_path / "locked")
    assert locked.verify() == summary["manifest_hash"]
    patients = {c["patient_id"] for c in locked.cases}
    assert {c["case_id"] for c in locked.cases} == {
        r["case_id"] for r in source.rows if r["patient_id"] in patients
    }, "a locked patient's every image is locked"
    labels = [c["label"] for c in locked.cases]
    assert 0 < sum(labels) < len(labels)
    assert 0.15 < len(labels) / len(source.rows) < 0.35
    _lock(source, tmp_path / "again")  # the same seed takes the same cases
    assert json.loads((tmp_path / "again" / "manifest.json").read_text())["cases"] == locked.cases


def test_source_date_epoch_makes_the_seal_reproducible(source, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1767225600")
    first = _lock(source, tmp_path / "first")
    second = _lock(source, tmp_path / "second")
    assert first["manifest_hash"] == second["manifest_hash"]
    manifest = json.loads((tmp_path / "first" / "manifest.json").read_text())
    assert manifest["created"] == "2026-01-01T00:00:00+00:00"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(SourceError, match="SOURCE_DATE_EPOCH='yesterday': expected whole seconds"):
        _lock(source, tmp_path / "bad")


def test_tampering_is_detected_byte_label_membership(source, tmp_path):
    _lock(source, tmp_path / "locked")
    root = tmp_path / "locked"
    manifest = json.loads((root / "manifest.json").read_text())
    first = manifest["cases"][0]

    image = root / first["image"]
    original = image.read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(
        TestSetIntegrityError, match=f"case {first['case_id']}: image .* bytes changed"
    ):
        LockedTestSet(root).verify()
    image.write_bytes(original)

    edited = json.loads(json.dumps(manifest))
    edited["cases"][0]["label"] = 1 - first["label"]
    (root / "manifest.json").write_text(json.dumps(edited))
    with pytest.raises(TestSetIntegrityError, match="label or metadata changed"):
        LockedTestSet(root).verify()

    dropped = json.loads(json.dumps(manifest))
    del dropped["cases"][0]
    (root / "manifest.json").write_text(json.dumps(dropped))
    with pytest.raises(TestSetIntegrityError, match=r"membership changed.*differs from the seal"):
        LockedTestSet(root).verify()
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    LockedTestSet(root).verify()

    result = subprocess.run(
        [sys.executable, "-m", "sonofed.cli", "vendor", "verify-testset", str(root)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    (root / "images" / "site" / "extra.png").write_bytes(original)
    result = subprocess.run(
        [sys.executable, "-m", "sonofed.cli", "vendor", "verify-testset", str(root)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert "unexpected file images/site/extra.png" in result.stderr
    assert "Traceback" not in result.stderr


def test_locked_cases_and_their_near_copies_never_train(source, tmp_path):
    _lock(source, tmp_path / "locked")
    locked = LockedTestSet(tmp_path / "locked")
    locked_ids = {c["case_id"] for c in locked.cases}
    victim = locked.cases[0]
    near = np.asarray(
        Image.fromarray(locked.image(victim)).resize((100, 75), Image.Resampling.BILINEAR)
    )
    source.add("copy1", image=np.clip(near.astype(int) - 8, 0, 255).astype(np.uint8),
               mask=disk_mask((75, 100), (30, 50), 10), patient_id="other9")  # fmt: skip
    exclusion = Exclusion.load(tmp_path / "locked" / "exclusion.json")
    assert "copy" not in (tmp_path / "locked" / "exclusion.json").read_text()

    summary = ingest(
        get_importer("folder")(source.write()),
        tmp_path / "reg",
        site_id="site",
        source="folder",
        exclusion=exclusion,
    )
    entries = {e.case.case_id: e for e in Registry(tmp_path / "reg").entries}
    for case_id in [*locked_ids, "copy1"]:
        assert "locked-test-case" in entries[case_id].reasons, case_id
    assert summary.locked_test_matches == len(locked_ids) + 1
    eligible_patients = {e.case.patient_id for e in entries.values() if e.eligible}
    assert eligible_patients.isdisjoint({c["patient_id"] for c in locked.cases})
    assert sum(e.eligible for e in entries.values()) == len(source.rows) - len(locked_ids) - 1


def test_a_lock_is_never_overwritten_and_fraction_is_checked(source, tmp_path):
    _lock(source, tmp_path / "locked")
    with pytest.raises(FileExistsError):
        _lock(source, tmp_path / "locked")
    from data_registry.exceptions import SourceError

    with pytest.raises(SourceError, match="fraction"):
        _lock(source, tmp_path / "other", fraction=1.5)


def test_distinct_textures_are_not_called_copies():
    from data_registry.hashing import near_pairs, perceptual_hash

    hashes = [perceptual_hash(textured_image(seed, (128, 128))) for seed in range(60)]
    assert near_pairs(hashes) == []
