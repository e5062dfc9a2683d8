"""Importers: real-data counts (skipped without the data) and crafted faulty exports."""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest

from data_registry.exceptions import SourceError
from data_registry.importers import IMPORTERS, SourceCase, get_importer
from data_registry.importers.breast_lesions_usg import COLUMNS as BREAST_COLUMNS
from data_registry.importers.breast_lesions_usg import CSV_NAME as BREAST_CSV
from data_registry.importers.breast_lesions_usg import IMAGE_DIR as BREAST_IMAGES
from data_registry.schema import Case

realdata = pytest.mark.realdata


# --- helpers -------------------------------------------------------------------------------------


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not opened by importers")
    return path


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _import(kind: str, root: Path, **options: str) -> list[SourceCase]:
    return list(get_importer(kind)(root, **options))


def _by_id(cases: list[SourceCase]) -> dict[str, SourceCase]:
    return {c.fields["case_id"]: c for c in cases}


def _problem(case: SourceCase) -> tuple[str, str]:
    assert case.problem is not None, case
    return case.problem.reason, case.problem.detail


def _as_case(case: SourceCase) -> Case:
    """Complete the importer's fields with what intake adds and validate them with the schema."""
    fields = dict(case.fields)
    fields.setdefault("seed", {"x": 1, "y": 1})
    return Case(
        **fields,
        site_id="site-a",
        image=case.source_key,
        image_sha256="0" * 64,
        source_sha256="0" * 64,
        width=400,
        height=400,
        masks=tuple(p.name for p in case.mask_paths) or ("mask.png",),
        ingested_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


# --- registry of importers -----------------------------------------------------------------------


def test_kinds_and_unknown_kind() -> None:
    assert set(IMPORTERS) == {"busi", "bus_bra", "breast_lesions_usg", "phantom", "folder"}
    for kind in ("busi", "bus_bra", "breast_lesions_usg", "folder"):
        importer = get_importer(kind)
        assert importer.kind == kind
        assert importer.default_site_id
    with pytest.raises(SourceError, match=r"'dicom'.*busi, bus_bra, breast_lesions_usg"):
        get_importer("dicom")


@pytest.mark.parametrize("kind", ["busi", "bus_bra", "breast_lesions_usg", "folder"])
def test_missing_root_raises(tmp_path: Path, kind: str) -> None:
    with pytest.raises(SourceError, match="nowhere"):
        get_importer(kind)(tmp_path / "nowhere")


@pytest.mark.parametrize("kind", ["busi", "bus_bra", "breast_lesions_usg", "folder"])
def test_assume_reference_must_confirm(tmp_path: Path, kind: str) -> None:
    with pytest.raises(ValueError, match=re.escape("expected biopsy|surgery|follow-up or None")):
        get_importer(kind)(tmp_path, assume_reference="none")


# --- real data -----------------------------------------------------------------------------------


@realdata
def test_busi_real(real_data: Path) -> None:
    cases = _import("busi", real_data / "busi")
    assert len(cases) == 620
    assert [c for c in cases if c.problem] == []
    assert Counter(c.fields["pathology"] for c in cases) == {
        "benign": 345,
        "malignant": 166,
        "normal": 109,
    }
    assert {c.fields["reference_standard"] for c in cases} == {"none"}
    # 17 extra mask files on 16 images ('benign (195)' has two): the README's "17 images" counts files
    assert sum(len(c.mask_paths) > 1 for c in cases) == 16
    assert sum(len(c.mask_paths) - 1 for c in cases) == 17
    assert all(c.mask_paths and all(p.is_file() for p in c.mask_paths) for c in cases)
    by_id = _by_id(cases)
    assert len(by_id) == 620
    assert [p.name for p in by_id["busi-benign-195"].mask_paths] == [
        "benign (195)_mask.png",
        "benign (195)_mask_1.png",
        "benign (195)_mask_2.png",
    ]
    # the known byte-identical pair is passed through; the registry deduplicates
    assert by_id["busi-benign-433"].fields["patient_id"] == "busi-benign-433"
    assert "busi-malignant-145" in by_id


@realdata
def test_bus_bra_real(real_data: Path) -> None:
    cases = _import("bus_bra", real_data / "bus_bra")
    assert len(cases) == 1493
    assert [c for c in cases if c.problem] == []
    assert Counter(c.fields["pathology"] for c in cases) == {"benign": 1012, "malignant": 481}
    assert {c.fields["reference_standard"] for c in cases} == {"biopsy"}
    patients = {c.fields["patient_id"] for c in cases}
    assert len(patients) == 852
    by_id = _by_id(cases)
    assert by_id["busbra-0001-l"].fields["patient_id"] == "busbra-p0001"
    assert by_id["busbra-0001-r"].fields["patient_id"] == "busbra-p0001"
    assert by_id["busbra-0001-l"].mask_paths[0].name == "mask_0001-l.png"
    # BI-RADS 4 has no subcategory in BUS-BRA: kept as plain "4", never guessed
    assert Counter(c.fields.get("birads") for c in cases) == {
        "4": 573,
        "2": 441,
        "3": 376,
        "5": 103,
    }
    assert len({c.fields["device"] for c in cases}) == 4
    assert {c.fields["source_fold"] for c in cases} == {1, 2, 3, 4, 5}
    folds_per_patient = Counter()
    for patient in patients:
        folds = {c.fields["source_fold"] for c in cases if c.fields["patient_id"] == patient}
        folds_per_patient[len(folds)] += 1
    assert folds_per_patient == {1: 852}
    assert all("Histology" not in c.fields and "histology" not in c.fields for c in cases)


@realdata
def test_breast_lesions_usg_real(real_data: Path) -> None:
    cases = _import("breast_lesions_usg", real_data / "breast_lesions_usg")
    assert len(cases) == 180
    assert [c for c in cases if c.problem] == []
    assert Counter(c.fields["pathology"] for c in cases) == {
        "benign": 108,
        "malignant": 69,
        "normal": 3,
    }
    assert Counter(c.fields["reference_standard"] for c in cases) == {
        "biopsy": 139,
        "follow-up": 38,
        "none": 3,
    }
    # the three without verification are the normal images: BI-RADS 1, no lesion, no mask
    unverified = [c for c in cases if c.fields["reference_standard"] == "none"]
    assert {c.fields["pathology"] for c in unverified} == {"normal"}
    assert {c.fields["birads"] for c in unverified} == {"1"}
    assert [c.mask_paths for c in unverified] == [(), (), ()]
    assert all(c.fields["descriptors"] == {} for c in unverified)
    lesions = [c for c in cases if c.fields["pathology"] != "normal"]
    assert all(
        len(c.mask_paths) == 1 and c.mask_paths[0].name.endswith("_tumor.png") for c in lesions
    )
    assert Counter(c.fields["birads"] for c in cases) == {
        "1": 3,
        "2": 19,
        "3": 27,
        "4A": 30,
        "4B": 33,
        "4C": 32,
        "5": 36,
    }
    descriptors = [c.fields["descriptors"] for c in cases]
    assert Counter(d.get("posterior_features") for d in descriptors) == {
        "none": 111,
        "shadowing": 34,
        "enhancement": 25,
        "combined": 7,
        None: 3,
    }
    assert sum("spiculated" in d.get("margin", []) for d in descriptors) == 21
    assert sum(d.get("margin") == ["circumscribed"] for d in descriptors) == 80
    assert all("orientation" not in d for d in descriptors)
    assert sum("age" in c.fields for c in cases) == 180 - 34
    assert all(0.05 < c.fields["pixel_spacing_mm"] < 0.3 for c in cases)


@realdata
@pytest.mark.parametrize(
    ("kind", "folder"),
    [("busi", "busi"), ("bus_bra", "bus_bra"), ("breast_lesions_usg", "breast_lesions_usg")],
)
def test_real_fields_fit_the_schema(real_data: Path, kind: str, folder: str) -> None:
    for case in _import(kind, real_data / folder):
        _as_case(case)


# --- BUSI, crafted -------------------------------------------------------------------------------


def _busi(root: Path) -> Path:
    for name in ("benign (1).png", "benign (1)_mask.png", "benign (2).png"):
        _touch(root / "benign" / name)
    for suffix in ("", "_mask_10", "_mask_2", "_mask", "_mask_1"):
        _touch(root / "benign" / f"benign (3){suffix}.png")
    _touch(root / "malignant" / "benign (4).png")
    _touch(root / "malignant" / "benign (4)_mask.png")
    _touch(root / "normal" / "normal (1).png")
    _touch(root / "normal" / "normal (1)_mask.png")
    _touch(root / "unsure" / "unsure (1).png")
    _touch(root / "unsure" / "unsure (1)_mask.png")
    return root


def test_busi_crafted(tmp_path: Path) -> None:
    cases = {c.source_key: c for c in _import("busi", _busi(tmp_path))}
    assert list(cases) == [
        "benign/benign (1).png",
        "benign/benign (2).png",
        "benign/benign (3).png",
        "malignant/benign (4).png",
        "normal/normal (1).png",
        "unsure/unsure (1).png",
    ]
    good = cases["benign/benign (1).png"]
    assert good.problem is None
    assert good.fields == {
        "case_id": "busi-benign-1",
        "patient_id": "busi-benign-1",
        "pathology": "benign",
        "reference_standard": "none",
    }
    assert _problem(cases["benign/benign (2).png"]) == (
        "missing-file",
        "benign (2)_mask.png: expected a lesion mask beside 'benign (2).png'",
    )
    assert [p.stem for p in cases["benign/benign (3).png"].mask_paths] == [
        "benign (3)_mask",
        "benign (3)_mask_1",
        "benign (3)_mask_2",
        "benign (3)_mask_10",
    ]
    reason, detail = _problem(cases["malignant/benign (4).png"])
    assert reason == "invalid-field" and "'malignant (<n>).png'" in detail
    normal = cases["normal/normal (1).png"]
    assert normal.problem is None and normal.fields["pathology"] == "normal"
    assert [p.name for p in normal.mask_paths] == ["normal (1)_mask.png"]
    assert _problem(cases["unsure/unsure (1).png"]) == (
        "unknown-label",
        "folder: expected benign|malignant|normal, got 'unsure'",
    )


def test_busi_assume_reference(tmp_path: Path) -> None:
    case = _import("busi", _busi(tmp_path), assume_reference="biopsy")[0]
    assert case.fields["reference_standard"] == "biopsy"
    assert case.fields["reference_attested_by_site"] is True


def test_busi_without_label_folders(tmp_path: Path) -> None:
    _touch(tmp_path / "images" / "benign (1).png")
    with pytest.raises(SourceError, match="benign, malignant, normal"):
        _import("busi", tmp_path)


# --- BUS-BRA, crafted ----------------------------------------------------------------------------

_BUS_BRA_HEADER = ("ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height")
_BUS_BRA_HEADER += ("Side", "BBOX")


def _bus_bra(root: Path, rows: list[tuple[str, str, str, str]], *, files: bool = True) -> Path:
    """``rows``: (ID, Case, Pathology, BIRADS); images and masks are created when ``files``."""
    data = [
        (i, c, "cyst", p, b, "GE Logiq 7 @10-14MHz", 300, 300, "left", "[1,1,2,2]")
        for i, c, p, b in rows
    ]
    _write_csv(root / "bus_data.csv", _BUS_BRA_HEADER, data)
    folds = [(i, "malignant" if p == "malignant" else "benign", 2) for i, _, p, _ in rows]
    _write_csv(root / "5-fold-cv.csv", ("ID", "Pathology", "kFold"), folds)
    for identifier, *_ in rows:
        if files:
            _touch(root / "Images" / f"{identifier}.png")
            _touch(root / "Masks" / f"mask_{identifier.removeprefix('bus_')}.png")
    return root


def test_bus_bra_crafted(tmp_path: Path) -> None:
    root = _bus_bra(
        tmp_path,
        [
            ("bus_0001-l", "1", "benign", "3"),
            ("bus_0002-l", "2", "maybe", "3"),
            ("bus_0003-l", "3", "benign", "7"),
            ("bus_0004-s", "4", "malignant", "4"),
            ("bus_0005-l", "6", "benign", "2"),
            ("bus-0007", "7", "benign", "2"),
        ],
    )
    cases = {c.source_key: c for c in _import("bus_bra", root)}
    good = cases["Images/bus_0001-l.png"]
    assert good.problem is None
    assert good.fields == {
        "case_id": "busbra-0001-l",
        "patient_id": "busbra-p0001",
        "pathology": "benign",
        "reference_standard": "biopsy",
        "source_fold": 2,
        "birads": "3",
        "device": "GE Logiq 7 @10-14MHz",
    }
    assert _problem(cases["Images/bus_0002-l.png"]) == (
        "unknown-label",
        "Pathology: expected benign|malignant, got 'maybe'",
    )
    assert _problem(cases["Images/bus_0003-l.png"]) == (
        "invalid-field",
        "BIRADS: expected 1|2|3|4|4A|4B|4C|5, got '7'",
    )
    four = cases["Images/bus_0004-s.png"]
    assert four.problem is None and four.fields["birads"] == "4"
    assert _problem(cases["Images/bus_0005-l.png"])[0] == "invalid-field"
    assert "Case" in _problem(cases["Images/bus_0005-l.png"])[1]
    assert _problem(cases["Images/bus-0007.png"]) == (
        "invalid-field",
        "ID: expected bus_<case>-<l|r|s>, got 'bus-0007'",
    )


def test_bus_bra_missing_files_and_fold_disagreement(tmp_path: Path) -> None:
    root = _bus_bra(
        tmp_path, [("bus_0001-l", "1", "benign", "3"), ("bus_0002-r", "2", "benign", "3")]
    )
    (root / "Masks" / "mask_0002-r.png").unlink()
    (root / "Images" / "bus_0001-l.png").unlink()
    cases = _import("bus_bra", root)
    assert _problem(cases[0]) == (
        "missing-file",
        "ID (image): file 'Images/bus_0001-l.png' not found",
    )
    assert _problem(cases[1]) == (
        "missing-file",
        "ID (lesion mask): file 'Masks/mask_0002-r.png' not found",
    )
    _write_csv(
        root / "5-fold-cv.csv", ("ID", "Pathology", "kFold"), [("bus_0002-r", "malignant", 1)]
    )
    _touch(root / "Masks" / "mask_0002-r.png")
    reason, detail = _problem(_import("bus_bra", root)[1])
    assert reason == "unknown-label" and "5-fold-cv.csv says 'malignant'" in detail


def test_bus_bra_layout_errors(tmp_path: Path) -> None:
    root = _bus_bra(tmp_path, [("bus_0001-l", "1", "benign", "3")])
    (root / "5-fold-cv.csv").unlink()
    with pytest.raises(SourceError, match=r"5-fold-cv\.csv: CSV file not found"):
        _import("bus_bra", root)
    _write_csv(root / "5-fold-cv.csv", ("ID", "Pathology", "kFold"), [])
    _write_csv(root / "bus_data.csv", ("ID", "Case", "BIRADS", "Device"), [])
    with pytest.raises(SourceError, match=r"missing column.*Pathology"):
        _import("bus_bra", root)


# --- BrEaST-Lesions_USG, crafted -----------------------------------------------------------------

_BREAST_GOOD = {
    "CaseID": "7",
    "Image_filename": "case007.png",
    "Mask_tumor_filename": "case007_tumor.png",
    "Mask_other_filename": "case007_other1.png",
    "Pixel_size": "0.0125",
    "Age": "57",
    "Shape": "irregular",
    "Margin": "not circumscribed - indistinct&spiculated",
    "Echogenicity": "hypoechoic",
    "Posterior_features": "no",
    "Halo": "yes",
    "BIRADS": "4b",
    "Verification": "confirmed by biopsy",
    "Diagnosis": "Invasive carcinoma of no special type (NST)",
    "Classification": "malignant",
}


def _breast(root: Path, rows: list[dict[str, str]]) -> Path:
    header = list(_BREAST_GOOD)
    full = [{**_BREAST_GOOD, **row} for row in rows]
    _write_csv(root / BREAST_CSV, header, [[r[c] for c in header] for r in full])
    for row in full:
        for column in ("Image_filename", "Mask_tumor_filename", "Mask_other_filename"):
            if row[column]:
                _touch(root / BREAST_IMAGES / row[column])
    return root


def _breast_row(number: int, **cells: str) -> dict[str, str]:
    name = f"case{number:03d}"
    return {
        "CaseID": str(number),
        "Image_filename": f"{name}.png",
        "Mask_tumor_filename": f"{name}_tumor.png",
        "Mask_other_filename": "",
        **cells,
    }


def test_breast_crafted_good_row(tmp_path: Path) -> None:
    (case,) = _import("breast_lesions_usg", _breast(tmp_path, [_BREAST_GOOD]))
    assert case.problem is None
    assert [p.name for p in case.mask_paths] == ["case007_tumor.png"]
    assert case.fields == {
        "case_id": "breast-007",
        "patient_id": "breast-p007",
        "pathology": "malignant",
        "reference_standard": "biopsy",
        "birads": "4B",
        "descriptors": {
            "shape": "irregular",
            "margin": ["indistinct", "spiculated"],
            "echo_pattern": "hypoechoic",
            "posterior_features": "none",
        },
        "age": 57,
        "pixel_spacing_mm": pytest.approx(0.125),
    }
    _as_case(case)


def test_breast_crafted_bad_rows(tmp_path: Path) -> None:
    rows = [
        _breast_row(1, Age="abc"),
        _breast_row(2, Margin="wavy"),
        _breast_row(3, Margin="not circumscribed - wavy&angular"),
        _breast_row(4, BIRADS="7"),
        _breast_row(5, Classification="maybe"),
        _breast_row(6, Verification=""),
        _breast_row(7, Verification="confirmed by MRI"),
        _breast_row(8, Pixel_size="n/a"),
        _breast_row(9, Mask_tumor_filename=""),
        _breast_row(10, Posterior_features="sparkling"),
        _breast_row(11, Age="not available", Shape="not applicable", Margin="not applicable"),
    ]
    cases = _import("breast_lesions_usg", _breast(tmp_path, rows))
    assert [c.problem.reason if c.problem else None for c in cases] == [
        "invalid-field",
        "invalid-field",
        "invalid-field",
        "invalid-field",
        "unknown-label",
        "missing-reference-standard",
        "missing-reference-standard",
        "invalid-field",
        "missing-file",
        "invalid-field",
        None,
    ]
    details = [c.problem.detail for c in cases if c.problem]
    assert details[0].startswith("Age: ") and "'abc'" in details[0]
    assert details[1].startswith("Margin: ") and "'wavy'" in details[1]
    assert details[2] == (
        "Margin: expected indistinct|angular|microlobulated|spiculated, got 'wavy'"
    )
    assert details[3] == "BIRADS: expected 1|2|3|4|4A|4B|4C|5, got '7'"
    assert details[4] == "Classification: expected benign|malignant|normal, got 'maybe'"
    assert details[5].startswith("Verification: expected 'confirmed by biopsy'")
    assert "'confirmed by MRI'" in details[6]
    assert details[7] == "Pixel_size: expected centimetres per pixel, got 'n/a'"
    assert details[8] == "Mask_tumor_filename: a malignant case needs a lesion mask, got ''"
    assert details[9].startswith("Posterior_features: expected none|enhancement")
    assert cases[10].fields["descriptors"] == {
        "echo_pattern": "hypoechoic",
        "posterior_features": "none",
    }
    assert "age" not in cases[10].fields
    assert cases[0].fields["case_id"] == "breast-001"  # identity kept for the quarantine report


def test_breast_reference_standard(tmp_path: Path) -> None:
    rows = [
        _breast_row(1, Verification="", Classification="benign"),
        _breast_row(2, Verification="confirmed by follow-up care", Classification="benign"),
        _breast_row(
            3,
            Verification="not applicable",
            Classification="normal",
            Mask_tumor_filename="",
            BIRADS="1",
        ),
        _breast_row(4, Verification="confirmed by MRI"),
    ]
    root = _breast(tmp_path, rows)
    cases = _import("breast_lesions_usg", root, assume_reference="follow-up")
    assert cases[0].problem is None
    assert cases[0].fields["reference_standard"] == "follow-up"
    assert cases[0].fields["reference_attested_by_site"] is True
    assert cases[1].fields["reference_standard"] == "follow-up"
    assert "reference_attested_by_site" not in cases[1].fields
    assert cases[2].problem is None and cases[2].mask_paths == ()
    assert cases[2].fields["reference_standard"] == "none"
    assert _problem(cases[3])[0] == "missing-reference-standard"


def test_breast_missing_files(tmp_path: Path) -> None:
    root = _breast(tmp_path, [_breast_row(1), _breast_row(2)])
    (root / BREAST_IMAGES / "case001.png").unlink()
    (root / BREAST_IMAGES / "case002_tumor.png").unlink()
    cases = _import("breast_lesions_usg", root)
    assert _problem(cases[0]) == ("missing-file", "Image_filename: file 'case001.png' not found")
    assert _problem(cases[1]) == (
        "missing-file",
        "Mask_tumor_filename: file 'case002_tumor.png' not found",
    )


def test_breast_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=BREAST_CSV):
        _import("breast_lesions_usg", tmp_path)
    columns = [c for c in BREAST_COLUMNS if c != "Verification"]
    _write_csv(tmp_path / BREAST_CSV, columns, [])
    with pytest.raises(SourceError, match=r"missing column.*Verification"):
        _import("breast_lesions_usg", tmp_path)
    _write_csv(tmp_path / BREAST_CSV, BREAST_COLUMNS, [])
    with pytest.raises(SourceError, match=f"{BREAST_IMAGES}: image folder not found"):
        _import("breast_lesions_usg", tmp_path)


# --- folder (a hospital's own export), crafted ---------------------------------------------------

_FOLDER_GOOD = {
    "case_id": "c0001",
    "patient_id": "p0001",
    "image": "img/c0001.png",
    "mask": "img/c0001_a.png;img/c0001_b.png",
    "pathology": "Malignant",
    "reference_standard": "surgery",
    "birads": "4c",
    "shape": "irregular",
    "orientation": "not parallel",
    "margin": "spiculated&angular",
    "echo_pattern": "hypoechoic",
    "posterior_features": "shadowing",
    "device": "Acme Sono 9",
    "age": "61",
    "pixel_spacing_mm": "0.08",
    "seed_x": "40",
    "seed_y": "32",
    "study_date": "2026-03-01",
    "reference_date": "2026-03-15",
}


def _folder(root: Path, rows: list[dict[str, str]], header: Sequence[str] | None = None) -> Path:
    header = list(header or _FOLDER_GOOD)
    full = [{**_FOLDER_GOOD, **row} for row in rows]
    _write_csv(root / "cases.csv", header, [[r.get(c, "") for c in header] for r in full])
    for row in full:
        for name in [row["image"], *row["mask"].split(";")]:
            if name and ".." not in name:
                _touch(root / name)
    return root


def test_folder_good_row(tmp_path: Path) -> None:
    (case,) = _import("folder", _folder(tmp_path, [{}]))
    assert case.problem is None
    assert case.source_key == "img/c0001.png"
    assert case.image_path == tmp_path / "img" / "c0001.png"
    assert [p.name for p in case.mask_paths] == ["c0001_a.png", "c0001_b.png"]
    assert case.fields == {
        "case_id": "c0001",
        "patient_id": "p0001",
        "pathology": "malignant",
        "reference_standard": "surgery",
        "birads": "4C",
        "descriptors": {
            "shape": "irregular",
            "orientation": "not parallel",
            "echo_pattern": "hypoechoic",
            "posterior_features": "shadowing",
            "margin": ["angular", "spiculated"],
        },
        "device": "Acme Sono 9",
        "age": 61,
        "pixel_spacing_mm": 0.08,
        "study_date": "2026-03-01",
        "reference_date": "2026-03-15",
        "seed": {"x": 40, "y": 32},
    }
    _as_case(case)


def test_folder_minimal_columns(tmp_path: Path) -> None:
    header = ("case_id", "patient_id", "image", "pathology", "reference_standard")
    row = {"image": "a1.png", "pathology": "normal", "reference_standard": "", "mask": ""}
    cases = _import("folder", _folder(tmp_path, [row], header), assume_reference="biopsy")
    assert cases[0].problem is None
    assert cases[0].fields["reference_attested_by_site"] is True
    assert cases[0].fields["descriptors"] == {}


@pytest.mark.parametrize(
    ("cells", "reason", "detail"),
    [
        ({"pathology": "unknown"}, "unknown-label", "pathology: expected benign|malignant|normal"),
        ({"birads": "7"}, "invalid-field", "birads: expected 1|2|3|4|4A|4B|4C|5, got '7'"),
        ({"age": "abc"}, "invalid-field", "age: Input should be a valid integer"),
        ({"age": "7"}, "invalid-field", "age: Input should be greater than or equal to 10"),
        ({"margin": "wavy"}, "invalid-field", "margin: expected circumscribed|indistinct|"),
        ({"margin": "circumscribed&spiculated"}, "invalid-field", "margin: 'circumscribed' cannot"),
        (
            {"shape": "square"},
            "invalid-field",
            "shape: expected oval|round|irregular, got 'square'",
        ),
        ({"pixel_spacing_mm": "9"}, "invalid-field", "pixel_spacing_mm: Input should be less"),
        ({"study_date": "01/03/2026"}, "invalid-field", "study_date: "),
        ({"device": "x" * 90}, "invalid-field", "device: expected a scanner model name"),
        ({"patient_id": "John Smith"}, "invalid-field", "patient_id: expected a pseudonymous"),
        ({"case_id": ""}, "invalid-field", "case_id: expected a pseudonymous"),
        ({"reference_standard": ""}, "missing-reference-standard", "reference_standard: expected"),
        ({"reference_standard": "maybe"}, "invalid-field", "reference_standard: expected biopsy|"),
        ({"seed_y": ""}, "invalid-field", "seed_x, seed_y: give both or neither"),
        ({"seed_x": "-3"}, "invalid-field", "seed_x: Input should be greater than or equal to 0"),
        ({"image": "../outside.png"}, "invalid-field", "image: expected a path inside the export"),
        ({"image": "/etc/hostname"}, "invalid-field", "image: expected a path inside the export"),
        ({"image": ""}, "missing-file", "image: empty, expected a file name"),
    ],
)
def test_folder_bad_values(tmp_path: Path, cells: dict[str, str], reason: str, detail: str) -> None:
    good = {"case_id": "c0002", "image": "img/c0002.png", "mask": "img/c0002_m.png"}
    cases = _import("folder", _folder(tmp_path, [{**good, **cells}, {}]))
    assert cases[1].problem is None  # one bad row does not spoil the next
    got_reason, got_detail = _problem(cases[0])
    assert (got_reason, got_detail[: len(detail)]) == (reason, detail)


def test_folder_missing_files_and_duplicate_ids(tmp_path: Path) -> None:
    root = _folder(tmp_path, [{}, {"case_id": "c0002", "image": "img/c0002.png"}, {}])
    (root / "img" / "c0002.png").unlink()
    (root / "img" / "c0001_b.png").unlink()
    cases = _import("folder", root)
    assert _problem(cases[0]) == ("missing-file", "mask: file 'img/c0001_b.png' not found")
    assert _problem(cases[1]) == ("missing-file", "image: file 'img/c0002.png' not found")
    assert _problem(cases[2]) == ("invalid-field", "case_id: 'c0001' already used on line 2")


def test_folder_unknown_column(tmp_path: Path) -> None:
    _folder(tmp_path, [{}], [*_FOLDER_GOOD, "patient_name"])
    with pytest.raises(SourceError, match=r"unknown column\(s\) 'patient_name'; allowed columns: "):
        _import("folder", tmp_path)


def test_folder_missing_column_and_csv(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"cases\.csv: CSV file not found"):
        _import("folder", tmp_path)
    _folder(tmp_path, [{}], [c for c in _FOLDER_GOOD if c != "reference_standard"])
    with pytest.raises(SourceError, match=r"missing column.*reference_standard"):
        _import("folder", tmp_path)


def test_folder_malformed_row(tmp_path: Path) -> None:
    root = _folder(tmp_path, [{}])
    with (root / "cases.csv").open("a", encoding="utf-8") as f:
        f.write("c9,p9,img/c0001.png,,benign,biopsy" + ",x" * 30 + "\n")
    cases = _import("folder", root)
    assert cases[0].problem is None
    assert _problem(cases[1]) == ("invalid-field", "line 3: more cells than header columns")


def test_margin_terms_in_lexicon_order_without_repeats(tmp_path: Path) -> None:
    margin = "spiculated&microlobulated&Angular&indistinct&spiculated"
    (case,) = _import("folder", _folder(tmp_path, [{"margin": margin}]))
    assert case.fields["descriptors"]["margin"] == [
        "indistinct",
        "angular",
        "microlobulated",
        "spiculated",
    ]


def test_documented_example_imports(tmp_path: Path) -> None:
    doc = (Path(__file__).parents[1] / "docs" / "hospital-export-format.md").read_text()
    example = re.search(r"```csv\n(.*?)```", doc, re.DOTALL)
    assert example is not None
    (tmp_path / "cases.csv").write_text(example[1], encoding="utf-8")
    for name in ("c0001.png", "c0001_mask.png", "c0002.png", "c0002_mask.png", "c0003.png"):
        _touch(tmp_path / "2026" / name)
    cases = _import("folder", tmp_path)
    assert [c.problem for c in cases] == [None, None, None]
    for case in cases:
        _as_case(case)
