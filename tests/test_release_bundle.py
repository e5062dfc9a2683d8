"""Release bundles: what a release holds, what it refuses to be built from, how it is sealed."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from models.bundle import load_metadata
from release.bundle import build_release, write_archive
from release.exceptions import GateReportError, ReleaseIntegrityError, VersionError
from release.gate_report import load_report
from release.manifest import read_archive_manifest, verify_release
from release.selftest import run_self_test
from tests._release_world import release_world


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    return release_world(tiny_world, tmp_path_factory.mktemp("release-world"))


def test_release_holds_model_metadata_lineage_card_gates_and_selftest(world, tiny_world):
    folder = world.releases["1.1.0"]
    manifest = verify_release(folder)
    assert manifest.version == "1.1.0" and manifest.parent_version == "1.0.0"
    assert manifest.console_models == ["sonofed-us"]
    metadata = load_metadata(folder / "model")
    assert (metadata.version, metadata.parent_version) == ("1.1.0", "1.0.0")
    assert metadata.min_console_version == manifest.min_console_version
    assert {"model/model.onnx", "model/weights.pt", "model/metadata.json"} <= set(manifest.files)
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["locked_test_manifest_hash"] == tiny_world.locked_set.verify()
    assert [r["site_id"] for r in lineage["registries"]] == ["site-a", "site-b", "site-c"]
    assert set(lineage["training_data"]["sites"]) == {"site-a", "site-b", "site-c"}
    assert lineage["code"]["commit"]
    assert load_report(folder / "gate-report.json").passed
    card = (folder / "model-card.html").read_text()
    for heading in (
        "ROC curves",
        "Reliability",
        "Metrics per site",
        "Metrics per scanner",
        "Release gates",
        "Intended use",
        "auc-non-inferiority",
    ):
        assert heading in card
    assert len(re.findall(r"<img ", card)) >= 2
    cases = json.loads((folder / "selftest" / "cases.json").read_text())
    assert len(cases["cases"]) == 2
    assert run_self_test(folder).passed


def test_archive_is_deterministic_and_carries_its_manifest(world, tmp_path):
    folder = world.releases["1.1.0"]
    a = write_archive(folder, tmp_path / "a.tar.gz")
    b = write_archive(folder, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    assert read_archive_manifest(a).version == "1.1.0"


def test_any_changed_extra_or_missing_file_breaks_verification(world, tmp_path):
    folder = tmp_path / "release"
    shutil.copytree(world.releases["1.1.0"], folder)
    model = folder / "model" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(ReleaseIntegrityError, match=r"changed model/model.onnx"):
        verify_release(folder)
    shutil.copy(world.releases["1.1.0"] / "model" / "model.onnx", model)
    (folder / "extra.txt").write_text("x")
    with pytest.raises(ReleaseIntegrityError, match=r"unexpected extra\.txt"):
        verify_release(folder)
    (folder / "extra.txt").unlink()
    (folder / "lineage.json").unlink()
    with pytest.raises(ReleaseIntegrityError, match=r"missing lineage\.json"):
        verify_release(folder)


def test_no_release_from_a_failed_report_or_another_candidates_report(world, tiny_world, tmp_path):
    gates = tmp_path / "gates"
    shutil.copytree(world.gate_dir, gates)
    report = json.loads((gates / "gate-report.json").read_text())
    report["passed"] = False
    report["gates"][1]["passed"] = False
    (gates / "gate-report.json").write_text(json.dumps(report))
    with pytest.raises(GateReportError, match="failed the release gates"):
        build_release(
            tiny_world.bundle, gates / "gate-report.json", tmp_path / "r1", version="1.1.0"
        )
    report = json.loads((world.gate_dir / "gate-report.json").read_text())
    report["candidate"]["fingerprint"] = "0" * 64
    (gates / "gate-report.json").write_text(json.dumps(report))
    with pytest.raises(GateReportError, match="another candidate"):
        build_release(
            tiny_world.bundle, gates / "gate-report.json", tmp_path / "r2", version="1.1.0"
        )
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_a_release_must_move_the_version_forward(world, tiny_world, tmp_path):
    report = world.gate_dir / "gate-report.json"  # compared with 1.0.0
    with pytest.raises(VersionError, match="does not come after"):
        build_release(tiny_world.bundle, report, tmp_path / "r", version="1.0.0")
    with pytest.raises(VersionError, match="not a semantic version"):
        build_release(tiny_world.bundle, report, tmp_path / "r", version="v2")
    assert not (tmp_path / "r").exists()
    assert not list(tmp_path.glob(".*building"))
