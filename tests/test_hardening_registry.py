"""Regression tests of the registry's hardening: races, leaks, traps and one-line errors."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from data_registry import (
    LockedTestSet,
    Registry,
    SettingsError,
    SourceSpec,
    TestSetIntegrityError,
    ingest,
    lock_testset,
)
from data_registry.exceptions import RegistryStateError
from data_registry.exclusion import Exclusion
from data_registry.importers import get_importer
from data_registry.schema import Case
from tests._exports import COLUMNS, Export, disk_mask, textured_image

FOLDER = get_importer("folder")


def _small_export(root: Path, prefix: str, count: int, seed0: int) -> Path:
    export = Export(root)
    for i in range(count):
        export.add(
            f"{prefix}{i:03d}",
            image=textured_image(seed0 + i, (48, 48)),
            mask=disk_mask((48, 48), (24, 24), 8),
        )
    return export.write()


def _racer(export: str, registry: str, barrier, results) -> None:
    barrier.wait()
    try:
        summary = ingest(FOLDER(Path(export)), Path(registry), site_id="site-t", source="race")
        results.put(("ok", summary.accepted))
    except RegistryStateError as e:
        results.put(("refused", str(e)))


def test_two_simultaneous_ingests_never_lose_a_case(tmp_path):
    """Two processes released by one barrier, many times: every accepted case is registered."""
    context = multiprocessing.get_context("fork")
    exports = [
        _small_export(tmp_path / "a", "a", 20, 0),
        _small_export(tmp_path / "b", "b", 20, 500),
    ]
    outcomes = []
    for trial in range(30):
        registry = tmp_path / f"reg{trial}"
        barrier, results = context.Barrier(2), context.Queue()
        racers = [
            context.Process(target=_racer, args=(str(e), str(registry), barrier, results))
            for e in exports
        ]
        for process in racers:
            process.start()
        for process in racers:
            process.join(60)
        reports = [results.get(timeout=5) for _ in racers]
        accepted = sum(count for kind, count in reports if kind == "ok")
        assert all(kind == "ok" or "another ingest" in str(count) for kind, count in reports)
        assert accepted >= 20, reports
        registered = len(Registry(registry).entries)
        assert registered == accepted, f"trial {trial}: {reports}, registry holds {registered}"
        outcomes.append(tuple(sorted(kind for kind, _ in reports)))


def test_registry_files_keep_the_umask_mode(tmp_path):
    """Files are created as open() would (0666 minus umask), not with mkstemp's 0600."""
    import os
    import stat

    export = _small_export(tmp_path / "export", "c", 2, 0)
    old = os.umask(0o022)
    try:
        ingest(FOLDER(export), tmp_path / "reg", site_id="site-t", source="t")
    finally:
        os.umask(old)
    files = [tmp_path / "reg" / "HEAD", *sorted((tmp_path / "reg").rglob("*.json"))]
    files += sorted((tmp_path / "reg" / "images").glob("*.png"))
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sonofed.cli", *args],
        capture_output=True,
        text=True,
        **kwargs,
    )


def _one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _without_override() -> list[str]:
    """A command prefix under which root too is bound by mode bits (no DAC override)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: a read-only folder cannot be made")
    caps = "-dac_override,-dac_read_search"
    return [setpriv, "--bounding-set", caps, "--inh-caps", caps, "--"]


def test_a_read_only_registry_is_a_one_line_error(tmp_path):
    export = _small_export(tmp_path / "export", "c", 3, 0)
    registry = tmp_path / "reg"
    ingest(FOLDER(export), registry, site_id="site-t", source="t")
    (registry / ".ingest.lock").unlink(missing_ok=True)  # as an older registry would lack it
    for path in [registry, *registry.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        for lock in (False, True):  # without the lock file, then with a read-only one
            if lock:
                registry.chmod(0o755)
                (registry / ".ingest.lock").write_text("")
                (registry / ".ingest.lock").chmod(0o444)
                registry.chmod(0o555)
            result = subprocess.run(
                [
                    *_without_override(), sys.executable, "-m", "sonofed.cli", "hospital",
                    "ingest", "--source", "folder", "--path", str(export), "--registry",
                    str(registry), "--site-id", "site-t", "--quiet", "--no-exclude",
                ],
                capture_output=True,
                text=True,
            )  # fmt: skip
            _one_line_error(result, str(registry), "cannot write")
    finally:
        for path in [registry, *registry.rglob("*")]:
            path.chmod(0o755)


def test_a_garbage_head_is_a_one_line_error(tmp_path):
    export = _small_export(tmp_path / "export", "c", 2, 0)
    ingest(FOLDER(export), tmp_path / "reg", site_id="site-t", source="t")
    (tmp_path / "reg" / "HEAD").write_bytes(b"\x00\xffgarbage\n")
    _one_line_error(_cli("hospital", "status", "--registry", str(tmp_path / "reg")), "HEAD")
    (tmp_path / "reg" / "HEAD").write_text("banana\n")
    _one_line_error(_cli("hospital", "status", "--registry", str(tmp_path / "reg")), "HEAD")
    with pytest.raises(RegistryStateError, match="HEAD"):
        Registry(tmp_path / "reg")


def test_an_invalid_site_id_is_refused_before_the_export_is_read(tmp_path):
    (tmp_path / "empty").mkdir()  # no cases.csv: reading the export would fail differently
    result = _cli(
        "hospital", "ingest", "--source", "folder", "--path", str(tmp_path / "empty"),
        "--registry", str(tmp_path / "reg"), "--site-id", "Bad Site", "--no-exclude",
    )  # fmt: skip
    _one_line_error(result, "--site-id", "Bad Site")
    export = _small_export(tmp_path / "export", "c", 2, 0)
    with pytest.raises(SettingsError, match="site-id"):
        ingest(FOLDER(export), tmp_path / "reg", site_id="Bad Site", source="t")
    assert not (tmp_path / "reg").exists()


def _locked_set(tmp_path: Path) -> Path:
    export = Export(tmp_path / "lock-export")
    for p in range(16):
        export.add(f"c{p:03d}", pathology="malignant" if p % 3 == 0 else "benign", seed=p)
    lock_testset([SourceSpec("folder", export.write())], tmp_path / "locked", fraction=0.3, seed=1)
    return tmp_path / "locked"


def test_a_damaged_locked_manifest_is_a_one_line_error(tmp_path):
    root = _locked_set(tmp_path)
    manifest = json.loads((root / "manifest.json").read_text())
    no_image = json.loads(json.dumps(manifest))
    del no_image["cases"][0]["image"]
    no_cases = {k: v for k, v in manifest.items() if k != "cases"}
    for damaged, words in [
        (manifest["cases"], ["JSON object"]),
        (no_cases, ["'cases'"]),
        (no_image, ["cases[0]", "image"]),
    ]:
        (root / "manifest.json").write_text(json.dumps(damaged))
        _one_line_error(_cli("vendor", "verify-testset", str(root)), "manifest.json", *words)
        with pytest.raises(TestSetIntegrityError):
            LockedTestSet(root).verify()


def test_metadata_json_as_a_folder_is_a_one_line_error(tmp_path):
    bundle = tmp_path / "bundle"
    (bundle / "metadata.json").mkdir(parents=True)
    Image.fromarray(textured_image(1)).save(tmp_path / "image.png")
    result = _cli(
        "console", "analyze", "--model", str(bundle), "--image", str(tmp_path / "image.png"),
        "--seed", "40,40",
    )  # fmt: skip
    _one_line_error(result, "metadata.json")


def _rewrite_consistently(root: Path) -> str:
    """Flip one label and re-seal: what someone who can write the folder can always do."""
    from data_registry.testset import _record_hash, manifest_hash

    manifest = json.loads((root / "manifest.json").read_text())
    record = manifest["cases"][0]
    record["label"] = 1 - record["label"]
    record["pathology"] = "benign" if record["pathology"] == "malignant" else "malignant"
    record["record_sha256"] = _record_hash(record)
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    digest = manifest_hash(manifest)
    (root / "SEAL").write_text(digest + "\n")
    return digest


def test_a_consistent_rewrite_of_labels_and_seal_is_refused_against_the_expected_hash(tmp_path):
    from data_registry.testset import verify_pinned

    root = _locked_set(tmp_path)
    original = LockedTestSet(root).verify()
    _rewrite_consistently(root)
    LockedTestSet(root).verify()  # self-consistent: the seal alone cannot tell
    with pytest.raises(TestSetIntegrityError, match="not the expected"):
        verify_pinned(root, original)
    export = _small_export(tmp_path / "export", "c", 2, 0)
    ingest(FOLDER(export), tmp_path / "reg", site_id="site-t", source="t")
    for command in (
        ["vendor", "train-central", "--sites", str(tmp_path / "reg"), "--epochs", "1",
         "--out", str(tmp_path / "central")],
        ["vendor", "federate", "--sites", str(tmp_path / "reg"), "--out", str(tmp_path / "fed")],
        ["vendor", "validate", "--candidate", str(tmp_path / "none"), "--out", str(tmp_path / "g")],
    ):  # fmt: skip
        result = _cli(*command, "--testset", str(root), "--testset-seal", original)
        _one_line_error(result, "not the expected")
    assert not (tmp_path / "central").exists() and not (tmp_path / "g").exists()


def test_dvc_lock_pins_the_locked_set(tmp_path):
    """A set that `dvc repro` recorded in dvc.lock is held to that record by every command."""
    repo = tmp_path / "repo"
    repo.mkdir()
    source = _locked_set(tmp_path)
    (repo / "dvc.yaml").write_text(
        "stages:\n  lock:\n"
        f"    cmd: {sys.executable} -c \"import shutil; shutil.copytree('{source}', 'locked')\"\n"
        "    outs:\n      - locked\n"
    )
    dvc = str(Path(sys.executable).with_name("dvc"))
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    for command in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro", "-q"]):
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    assert "locked" in (repo / "dvc.lock").read_text()
    ok = _cli("vendor", "verify-testset", "locked", cwd=repo)
    assert ok.returncode == 0 and "warning" not in ok.stderr, ok.stderr
    _rewrite_consistently(repo / "locked")
    for command in (
        ["vendor", "verify-testset", "locked"],
        ["vendor", "validate", "--candidate", str(tmp_path / "none"), "--testset", "locked",
         "--out", str(tmp_path / "g")],
    ):  # fmt: skip
        _one_line_error(_cli(*command, cwd=repo), "dvc.lock")


def test_extra_files_and_symlinked_images_fail_verification(tmp_path):
    root = _locked_set(tmp_path)
    LockedTestSet(root).verify()
    (root / "notes.txt").write_text("hello")
    with pytest.raises(TestSetIntegrityError, match=r"unexpected file notes\.txt"):
        LockedTestSet(root).verify()
    (root / "notes.txt").unlink()
    (root / "extra").mkdir()
    with pytest.raises(TestSetIntegrityError, match="unexpected folder extra"):
        LockedTestSet(root).verify()
    (root / "extra").rmdir()
    image = root / LockedTestSet(root).cases[0]["image"]
    elsewhere = tmp_path / "elsewhere.png"
    shutil.copyfile(image, elsewhere)
    image.unlink()
    image.symlink_to(elsewhere)  # the same bytes, but outside the sealed folder
    with pytest.raises(TestSetIntegrityError, match="symbolic link"):
        LockedTestSet(root).verify()


def test_intake_refuses_symbolic_links_out_of_the_export(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(textured_image(90)).save(outside / "secret.png")
    Image.fromarray(disk_mask().astype(np.uint8) * 255).save(outside / "mask.png")
    (outside / "sub").mkdir()
    Image.fromarray(textured_image(91)).save(outside / "sub" / "c004.png")
    export = Export(tmp_path / "export")
    for case_id in ("c001", "c002", "c003", "c004"):
        export.add(case_id)
    images, masks = export.root / "images", export.root / "masks"
    (images / "c002.png").unlink()
    (images / "c002.png").symlink_to(outside / "secret.png")
    (masks / "c003.png").unlink()
    (masks / "c003.png").symlink_to(outside / "mask.png")
    (export.root / "linked").symlink_to(outside / "sub")  # a folder link, file itself plain
    export.rows[3]["image"] = "linked/c004.png"
    ingest(FOLDER(export.write()), tmp_path / "reg", site_id="site-t", source="t")
    registry = Registry(tmp_path / "reg")
    assert [e.case.case_id for e in registry.entries] == ["c001"]
    reasons = {q.case_id: q.reason for q in registry.state.quarantine}
    assert reasons == {"c002": "symbolic-link", "c003": "symbolic-link", "c004": "symbolic-link"}

    busi = tmp_path / "busi" / "benign"
    busi.mkdir(parents=True)
    for n in (1, 2):
        Image.fromarray(textured_image(n)).save(busi / f"benign ({n}).png")
        Image.fromarray(disk_mask().astype(np.uint8) * 255).save(busi / f"benign ({n})_mask.png")
    (busi / "benign (2).png").unlink()
    (busi / "benign (2).png").symlink_to(outside / "secret.png")
    ingest(
        get_importer("busi")(tmp_path / "busi", assume_reference="biopsy"),
        tmp_path / "reg-busi",
        site_id="busi",
        source="busi",
    )
    registry = Registry(tmp_path / "reg-busi")
    assert [e.case.case_id for e in registry.entries] == ["busi-benign-1"]
    assert [q.reason for q in registry.state.quarantine] == ["symbolic-link"]


def _write_with(export: Export, extra: dict[str, dict[str, object]]) -> Path:
    """Write ``cases.csv`` with optional columns filled in for some cases."""
    columns = [*COLUMNS, *sorted({name for cells in extra.values() for name in cells})]
    with open(export.root / "cases.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        for row in export.rows:
            writer.writerow({**row, **extra.get(row["case_id"], {})})
    return export.root


def test_a_seed_outside_the_lesion_is_quarantined(tmp_path):
    export = Export(tmp_path / "export")
    for case_id in ("c001", "c002", "c003"):
        export.add(case_id, mask=disk_mask((96, 128), (40, 60), 15))
    # c001 on the lesion, c002 in the background, c003 without a seed (derived from the mask)
    seeds = {"c001": {"seed_x": 60, "seed_y": 40}, "c002": {"seed_x": 120, "seed_y": 90}}
    root = _write_with(export, seeds)
    ingest(FOLDER(root), tmp_path / "reg", site_id="site-t", source="t")
    registry = Registry(tmp_path / "reg")
    entries = {e.case.case_id: e for e in registry.entries}
    assert sorted(entries) == ["c001", "c003"]
    assert entries["c001"].case.seed.x == 60 and entries["c001"].eligible
    [record] = registry.state.quarantine
    assert (record.case_id, record.reason) == ("c002", "seed-outside-lesion")
    assert "(120, 90)" in record.detail


def test_ingest_requires_exclude_or_an_explicit_no_exclude_that_warns(tmp_path):
    export = _small_export(tmp_path / "export", "c", 2, 0)
    base = ["hospital", "ingest", "--source", "folder", "--path", str(export),
            "--registry", str(tmp_path / "reg"), "--site-id", "site-t", "--quiet"]  # fmt: skip
    refused = _cli(*base)
    assert refused.returncode == 2 and "--exclude" in refused.stderr, refused.stderr
    assert not (tmp_path / "reg").exists()
    warned = _cli(*base, "--no-exclude")
    assert warned.returncode == 0, warned.stderr
    assert "warning: --no-exclude" in warned.stderr and "locked test" in warned.stderr


def _busi_export(root: Path, count: int) -> Path:
    for label in ("benign", "malignant"):
        folder = root / label
        folder.mkdir(parents=True)
        for n in range(1, count + 1):
            seed = n + (1000 if label == "malignant" else 0)
            Image.fromarray(textured_image(seed)).save(folder / f"{label} ({n}).png")
            mask = disk_mask().astype(np.uint8) * 255
            Image.fromarray(mask).save(folder / f"{label} ({n})_mask.png")
    return root


def test_busi_without_attestation_says_how_to_fix_and_reingest_applies_it(tmp_path):
    busi = _busi_export(tmp_path / "busi", 3)
    base = ["hospital", "ingest", "--source", "busi", "--path", str(busi),
            "--registry", str(tmp_path / "reg"), "--quiet", "--no-exclude"]  # fmt: skip
    first = _cli(*base)
    assert first.returncode == 0, first.stderr
    assert "eligible 0" in first.stdout and "--assume-reference" in first.stdout, first.stdout
    second = _cli(*base, "--assume-reference", "biopsy", "--json")
    assert second.returncode == 0, second.stderr
    summary = json.loads(second.stdout)
    assert summary["already_present"] == 6 and summary["updated"] == 6
    assert summary["accepted"] == 0 and summary["eligible_total"] == 6 and not summary["hints"]
    registry = Registry(tmp_path / "reg")
    assert all(e.case.reference_attested_by_site for e in registry.entries)
    assert {e.case.reference_standard.value for e in registry.entries} == {"biopsy"}
    assert len(registry.eligible(since=1)) == 6  # newly eligible: the next cycle trains on them
    assert Registry(tmp_path / "reg", version=1).status()["eligible"] == 0  # v1 is unchanged
    third = _cli(*base, "--assume-reference", "biopsy", "--json")
    assert json.loads(third.stdout)["updated"] == 0


def test_names_are_refused_where_pseudonyms_and_device_models_belong(tmp_path):
    fields = {
        "case_id": "c1", "site_id": "site-a", "image": "images/c1.png",
        "image_sha256": "0" * 64, "source_sha256": "0" * 64, "width": 64, "height": 64,
        "pathology": "normal", "reference_standard": "follow-up", "ingested_at": datetime.now(UTC),
    }  # fmt: skip
    for patient_id in ("MariaKowalska1960", "Maria_Kowalska-19600412"):
        with pytest.raises(ValidationError, match="name and a birth year"):
            Case(**fields, patient_id=patient_id)
    for device in ("Maria Kowalska", "Anna Nowak-Kowalska"):
        with pytest.raises(ValidationError, match="person's name"):
            Case(**fields, patient_id="p1", device=device)
    for device in ("GE Logiq 7 @10-14MHz", "Toshiba Aplio 300 @12-14 MHz", "U-Systems @10-14MHz",
                   "Supersonic Aixplorer", "Phantom HF-L15 @14MHz"):  # fmt: skip
        Case(**fields, patient_id="P000117", device=device)

    export = Export(tmp_path / "export")
    for case_id in ("c001", "c002", "c003"):
        export.add(case_id)
    extra = {"c002": {"device": "Maria Kowalska"}}
    export.rows[2]["patient_id"] = "MariaKowalska1960"
    ingest(FOLDER(_write_with(export, extra)), tmp_path / "reg", site_id="site-t", source="t")
    registry = Registry(tmp_path / "reg")
    assert [e.case.case_id for e in registry.entries] == ["c001"]
    details = {q.case_id: q.detail for q in registry.state.quarantine}
    assert details["c002"].startswith("device") and details["c003"].startswith("patient_id")


def test_a_site_declares_its_pseudonym_pattern_and_identifiers_are_checked(tmp_path):
    export = Export(tmp_path / "export")
    export.add("c001", patient_id="P000001")
    export.add("c002", patient_id="mkowalska60")  # passes the generic rule, not the site's
    base = ["hospital", "ingest", "--source", "folder", "--path", str(export.write()),
            "--registry", str(tmp_path / "reg"), "--site-id", "site-t", "--quiet",
            "--no-exclude"]  # fmt: skip
    bad = _cli(*base, "--patient-id-pattern", "P(\\d{6}")
    _one_line_error(bad, "--patient-id-pattern", "regular expression")
    first = _cli(*base, "--patient-id-pattern", "P\\d{6}", "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["accepted"] == 1
    settings = json.loads((tmp_path / "reg" / "settings.json").read_text())
    assert settings == {"patient_id_pattern": "P\\d{6}"}
    export.add("c003", patient_id="anowak1971")
    export.add("c004", patient_id="P000004")
    export.write()
    second = _cli(*base, "--json")  # the saved pattern applies without the option
    assert json.loads(second.stdout)["accepted"] == 1, second.stdout
    registry = Registry(tmp_path / "reg")
    assert sorted(e.case.case_id for e in registry.entries) == ["c001", "c004"]
    details = {q.case_id: q.detail for q in registry.state.quarantine}
    assert "does not match the site's pseudonym pattern" in details["c003"]
    assert set(details) == {"c002", "c003"}


def _edits(image: np.ndarray) -> dict[str, np.ndarray]:
    from scipy import ndimage

    h, w = image.shape
    shifted = np.zeros_like(image)
    shifted[8:, 12:] = image[:-8, :-12]
    return {
        "mirrored": image[:, ::-1],
        "crop5": image[
            round(h * 0.025) : h - round(h * 0.025), round(w * 0.025) : w - round(w * 0.025)
        ],
        "crop5-top": image[round(h * 0.05) :, :],
        "crop5-corner": image[round(h * 0.05) :, : w - round(w * 0.05)],
        "pad20": np.pad(image, 20),
        "pad20-white": np.pad(image, 20, constant_values=255),
        "shifted": shifted,
        "rotated3": ndimage.rotate(image, 3, reshape=False, order=1, mode="constant"),
        "rotated-5": ndimage.rotate(image, -5, reshape=False, order=1, mode="constant"),
        "brighter": np.clip(image.astype(int) + 25, 0, 255).astype(np.uint8),
        "gamma": (255 * (image / 255.0) ** 0.7).astype(np.uint8),
        "mirrored-cropped-padded": np.pad(image[:, ::-1][round(h * 0.05) :, :], 20),
    }


def test_edited_copies_of_locked_images_never_become_eligible(tmp_path):
    """Mirrored, cropped, padded, shifted, rotated or re-toned copies of a locked image."""
    source = Export(tmp_path / "source")
    size = (192, 256)
    for p in range(24):
        source.add(f"c{p:03d}", image=textured_image(p, size), mask=disk_mask(size, (90, 120), 30),
                   pathology="malignant" if p % 3 == 0 else "benign")  # fmt: skip
    lock_testset([SourceSpec("folder", source.write())], tmp_path / "locked", fraction=0.3, seed=2)
    locked = LockedTestSet(tmp_path / "locked")
    victim = locked.image(locked.cases[0])
    hospital = Export(tmp_path / "hospital")
    for name, edited in _edits(victim).items():
        mask = np.zeros(edited.shape, bool)
        mask[
            edited.shape[0] // 3 : edited.shape[0] // 2, edited.shape[1] // 3 : edited.shape[1] // 2
        ] = True
        hospital.add(name.replace("-", "")[:20] + "1", image=edited, mask=mask, patient_id=f"q{len(hospital.rows)}")  # fmt: skip
    for p in range(12):  # distinct images stay eligible
        hospital.add(f"other{p:02d}", image=textured_image(500 + p, size), mask=disk_mask(size, (90, 120), 30))  # fmt: skip
    exclusion = Exclusion.load(tmp_path / "locked" / "exclusion.json")
    ingest(
        FOLDER(hospital.write()),
        tmp_path / "reg",
        site_id="site-h",
        source="t",
        exclusion=exclusion,
    )
    entries = {e.case.case_id: e for e in Registry(tmp_path / "reg").entries}
    leaked = [
        c
        for c, e in entries.items()
        if not c.startswith("other") and "locked-test-case" not in e.reasons
    ]
    assert leaked == [], leaked
    assert all(entries[f"other{p:02d}"].eligible for p in range(12))


@pytest.mark.realdata
def test_real_images_edited_copies_caught_and_distinct_images_kept_apart(real_data):
    """On the three real sites: trivial edits are caught, other sites' images never match.

    The full measurement (100 images per site, 18 edits, 625,700 distinct pairs) is
    ``python -m bench.registry --only-copies``; this is a small slice of it.
    """
    from scipy import ndimage

    from data_registry.hashing import COPY_BITS, copy_poses, copy_probes, nearest_pose_bits
    from data_registry.images import read_grey

    paths = {
        "busi": sorted(p for p in (real_data / "busi").rglob("*.png") if "_mask" not in p.name),
        "bus_bra": sorted((real_data / "bus_bra" / "Images").glob("*.png")),
        "breast": sorted(
            p for p in (real_data / "breast_lesions_usg").rglob("case*.png") if "_" not in p.stem
        ),
    }
    edits = {
        "mirror": lambda a: a[:, ::-1],
        "crop 5 % off the top": lambda a: a[round(a.shape[0] * 0.05) :],
        "pad 20 px": lambda a: np.pad(a, 20),
        "shift 12x8 px": lambda a: np.pad(a, ((8, 0), (12, 0)))[: a.shape[0], : a.shape[1]],
        "rotate 3 deg": lambda a: ndimage.rotate(a, 3, reshape=False, order=1),
        "brighter": lambda a: np.clip(a.astype(int) + 25, 0, 255).astype(np.uint8),
    }
    locked = {site: [read_grey(p) for p in found[::97][:8]] for site, found in paths.items()}
    poses = {site: [copy_poses(a) for a in images] for site, images in locked.items()}
    for site, images in locked.items():
        for image, own in zip(images, poses[site], strict=True):
            for name, edit in edits.items():
                bits = nearest_pose_bits([copy_probes(edit(image))], list(own))[0]
                assert bits <= COPY_BITS, (site, name, bits)
    for site, found in paths.items():
        probes = [copy_probes(read_grey(p)) for p in found[1::13]]
        others = [h for other, lists in poses.items() if other != site for p in lists for h in p]
        assert nearest_pose_bits(probes, others).min() > COPY_BITS, site


def test_a_registry_from_before_probes_gets_them_when_an_exclusion_list_arrives(tmp_path):
    size = (192, 256)
    source = Export(tmp_path / "source")
    for p in range(12):
        source.add(f"c{p:03d}", image=textured_image(p, size), mask=disk_mask(size, (90, 120), 30),
                   pathology="malignant" if p % 3 == 0 else "benign")  # fmt: skip
    lock_testset([SourceSpec("folder", source.write())], tmp_path / "locked", fraction=0.3, seed=2)
    locked = LockedTestSet(tmp_path / "locked")
    hospital = Export(tmp_path / "hospital")
    hospital.add("mirror1", image=locked.image(locked.cases[0])[:, ::-1], mask=disk_mask(size))
    hospital.add("other1", image=textured_image(700, size), mask=disk_mask(size))
    registry = tmp_path / "reg"
    ingest(FOLDER(hospital.write()), registry, site_id="site-h", source="t")
    version = registry / "versions" / "v0001.json"
    state = json.loads(version.read_text())
    for entry in state["entries"]:
        del entry["probes"]  # as written before probes existed
    version.write_text(json.dumps(state))
    exclusion = Exclusion.load(tmp_path / "locked" / "exclusion.json")
    ingest(FOLDER(hospital.root), registry, site_id="site-h", source="t", exclusion=exclusion)
    entries = {e.case.case_id: e for e in Registry(registry).entries}
    assert "locked-test-case" in entries["mirror1"].reasons
    assert entries["other1"].eligible
