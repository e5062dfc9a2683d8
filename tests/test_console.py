"""The console's analysis: report contract, batch contract, bad inputs, and no torch."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from data_registry.registry import Registry
from models.report import LesionReport

REPORT_KEYS = {
    "case_id", "lesion_found", "finding", "malignancy_probability", "suggestion", "birads_note",
    "mode", "birads", "descriptors", "lesion_area_px", "mask_png", "model_version",
    "release_status", "release_statement", "latency_ms",
}  # fmt: skip


def _sonofed(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sonofed.cli", *map(str, args)], capture_output=True, text=True
    )


@pytest.fixture(scope="module")
def lesion(tiny_world):
    registry = Registry(tiny_world.registries[0])
    entry = next(e for e in registry.entries if e.case.is_lesion)
    return tiny_world.registries[0] / entry.case.image, entry.case.seed


def test_analyze_writes_the_report_contract(tiny_world, lesion, tmp_path):
    image, seed = lesion
    result = _sonofed(
        "console", "analyze", "--model", tiny_world.bundle, "--image", image,
        "--seed", f"{seed.x},{seed.y}", "--mode", "high-sensitivity", "--out", tmp_path / "r",
        "--case-id", "c42",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert set(report) == REPORT_KEYS
    LesionReport.model_validate(report)
    assert report["mode"] == "high-sensitivity" and report["case_id"] == "c42"
    assert report["model_version"] == "1.0.0"
    assert report["release_status"] == "unreleased-candidate"  # a bundle given with --model
    assert report["release_statement"] == "unreleased candidate: not for clinical use"
    if report["lesion_found"]:
        assert set(report["descriptors"]) == {
            "shape", "orientation", "margin", "echo_pattern", "posterior_features",
        }  # fmt: skip
        assert report["suggestion"] in ("possibly benign", "possibly malignant")
    else:  # the session's barely trained model segments nothing: no verdict then
        assert report["finding"].startswith("no lesion found at the click")
        assert report["malignancy_probability"] is report["birads"] is report["suggestion"] is None
    for name in ("report.html", "overlay.png", report["mask_png"]):
        assert (tmp_path / "r" / name).is_file()
    mask = np.asarray(Image.open(tmp_path / "r" / report["mask_png"]))
    assert int((mask > 0).sum()) == report["lesion_area_px"]
    page = (tmp_path / "r" / "report.html").read_text()
    assert "not a medical device" in page and "unreleased candidate: not for clinical use" in page


def test_batch_goes_on_past_bad_cases(tiny_world, lesion, tmp_path):
    image, seed = lesion
    Image.fromarray(np.zeros((40, 40, 4), np.uint8)).save(tmp_path / "rgba.png")  # transparent
    Image.fromarray((np.arange(1600).reshape(40, 40) * 40).astype(np.uint16)).save(
        tmp_path / "deep.png"
    )  # 16-bit with values above 255
    rows = [
        ("good1", image, seed.x, seed.y),
        ("missing", tmp_path / "nope.png", 1, 1),
        ("outside", image, 10_000, 3),
        ("rgba", tmp_path / "rgba.png", 5, 5),
        ("deep", tmp_path / "deep.png", 5, 5),
        ("badseed", image, "x", 3),
        ("good2", image, seed.x, seed.y),
    ]
    with open(tmp_path / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "seed_x", "seed_y"])
        writer.writerows(rows)
    result = _sonofed(
        "console", "analyze", "--model", tiny_world.bundle,
        "--manifest", tmp_path / "cases.csv", "--out", tmp_path / "results.jsonl",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [line["case_id"] for line in lines] == [row[0] for row in rows]
    errors = {line["case_id"]: line.get("error", "") for line in lines}
    assert not errors["good1"] and not errors["good2"]
    assert "missing-file" in errors["missing"]
    assert "outside" in errors["outside"]
    assert "transparent" in errors["rgba"]
    assert "I;16" in errors["deep"] and "8-bit" in errors["deep"]
    assert "X,Y" in errors["badseed"]
    assert set(lines[0]) == REPORT_KEYS


def test_user_mistakes_are_one_line_errors(tiny_world, tmp_path):
    result = _sonofed("console", "analyze", "--model", tmp_path / "none", "--image", "x.png",
                      "--seed", "1,1")  # fmt: skip
    assert result.returncode == 2 and "no such bundle" in result.stderr
    assert "Traceback" not in result.stderr
    result = _sonofed("console", "analyze", "--model", tiny_world.bundle)
    assert result.returncode == 2 and "either --image" in result.stderr


def test_console_analysis_does_not_import_torch(tiny_world, lesion, tmp_path):
    image, seed = lesion
    code = (
        "import sys, numpy as np; from PIL import Image\n"
        "from models.analysis import LesionAnalyser\n"
        f"a = LesionAnalyser(r'{tiny_world.bundle}')\n"
        f"img = np.asarray(Image.open(r'{image}'))\n"
        f"out = a.analyze(img, ({seed.x}, {seed.y}))\n"
        "assert 'torch' not in sys.modules, 'console analysis imported torch'\n"
        "print(out.probability)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert 0.0 <= float(result.stdout.strip()) <= 1.0


def test_a_changed_model_file_is_refused(tiny_world, tmp_path):
    import shutil

    from models.analysis import LesionAnalyser
    from models.bundle import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_world.bundle, bundle)
    with open(bundle / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(BundleError, match=r"model\.onnx does not match"):
        LesionAnalyser(bundle)


def _batch(tiny_world, tmp_path, rows) -> list[dict]:
    with open(tmp_path / "cases.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case_id", "image", "seed_x", "seed_y"])
        writer.writerows(rows)
    result = _sonofed(
        "console", "analyze", "--model", tiny_world.bundle,
        "--manifest", tmp_path / "cases.csv", "--out", tmp_path / "results.jsonl",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]


def test_a_click_on_background_or_a_black_image_gets_no_verdict(tiny_world, lesion, tmp_path):
    image, _ = lesion
    Image.fromarray(np.zeros((128, 128), np.uint8)).save(tmp_path / "black.png")
    result = _sonofed(
        "console", "analyze", "--model", tiny_world.bundle, "--image", tmp_path / "black.png",
        "--seed", "64,64", "--out", tmp_path / "single",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    single = json.loads((tmp_path / "single" / "report.json").read_text())
    lines = _batch(tiny_world, tmp_path, [("black1", tmp_path / "black.png", 64, 64),
                                          ("corner1", image, 2, 2)])  # fmt: skip
    for report in (single, *lines):
        assert report["lesion_found"] is False, report
        assert report["finding"].startswith("no lesion found at the click")
        assert (report["malignancy_probability"], report["suggestion"], report["birads"]) == (
            None, None, None,
        )  # fmt: skip
    page = (tmp_path / "single" / "report.html").read_text()
    assert "No lesion found at the click" in page


def test_bad_seeds_and_duplicate_case_ids_are_error_lines(tiny_world, lesion, tmp_path):
    image, seed = lesion
    rows = [
        ("first1", image, seed.x, seed.y),
        ("inf1", image, "inf", seed.y),
        ("nan1", image, seed.x, "nan"),
        ("minus-inf1", image, "-inf", "-inf"),
        ("huge1", image, "1e400", 3),
        ("negative1", image, -5, 3),
        ("first1", image, 2, 2),  # a duplicate id: must not overwrite the first one's report
        ("last1", image, seed.x, seed.y),
    ]
    lines = _batch(tiny_world, tmp_path, rows)
    assert [line["case_id"] for line in lines] == [row[0] for row in rows]
    errors = [line.get("error", "") for line in lines]
    assert not errors[0] and not errors[-1]
    for error in errors[1:5]:
        assert "finite" in error, errors
    assert "outside" in errors[5]
    assert "duplicate case_id 'first1' (first on line 2)" in errors[6]
    first = json.loads((tmp_path / "results" / "first1" / "report.json").read_text())
    assert first == {**lines[0], "mask_png": "mask.png"}  # latency_ms would differ otherwise
