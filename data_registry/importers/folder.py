"""A hospital's own export: ``<root>/cases.csv`` plus image and mask files (see
``docs/hospital-export-format.md``).

Values are already in the schema's vocabulary (matched case-insensitively); the header may hold
only the columns below, so a field the registry does not know (``patient_name``…) stops the import
before anything is read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_registry.importers._csv import (
    INVALID_FIELD,
    MISSING_REFERENCE,
    UNKNOWN_LABEL,
    Draft,
    Fields,
    Row,
    RowError,
    attest,
    build,
    check_assumed,
    check_shape,
    choice,
    existing,
    margins,
    read_table,
    require_dir,
    schema_value,
)
from data_registry.importers.base import SourceCase
from data_registry.schema import (
    BiRads,
    EchoPattern,
    Orientation,
    Pathology,
    PosteriorFeatures,
    ReferenceStandard,
    SeedPoint,
    Shape,
)

CSV_NAME = "cases.csv"
REQUIRED = ("case_id", "patient_id", "image", "pathology", "reference_standard")
OPTIONAL = (
    "mask",
    "birads",
    "shape",
    "orientation",
    "margin",
    "echo_pattern",
    "posterior_features",
    "device",
    "age",
    "pixel_spacing_mm",
    "seed_x",
    "seed_y",
    "study_date",
    "reference_date",
)
MASK_SEPARATOR = ";"
MARGIN_SEPARATOR = "&"
_ENUM_DESCRIPTORS = {
    "shape": Shape,
    "orientation": Orientation,
    "echo_pattern": EchoPattern,
    "posterior_features": PosteriorFeatures,
}
_SCALARS = ("device", "age", "pixel_spacing_mm", "study_date", "reference_date")


class FolderImporter:
    kind = "folder"
    default_site_id = "site"

    def __call__(self, root: Path, *, assume_reference: str | None = None) -> Iterator[SourceCase]:
        """Yield one candidate per row of ``cases.csv``.

        Raises:
            SourceError: ``root`` or ``cases.csv`` is missing, a required column is absent, or a
                column is not one of :data:`REQUIRED` + :data:`OPTIONAL`.
            ValueError: ``assume_reference`` is not a confirming reference standard.
        """
        assumed = check_assumed(assume_reference)
        require_dir(root, "export")
        rows = read_table(root / CSV_NAME, REQUIRED, allowed=REQUIRED + OPTIONAL)
        seen: dict[str, int] = {}
        return (_case(root, row, assumed, seen) for row in rows)


def _case(root: Path, row: Row, assumed: str | None, seen: dict[str, int]) -> SourceCase:
    draft = Draft(row["image"] or f"{CSV_NAME}:{row.line}", root / row["image"])
    return build(draft, lambda d: _fill(d, root, row, assumed, seen))


def _fill(draft: Draft, root: Path, row: Row, assumed: str | None, seen: dict[str, int]) -> None:
    check_shape(row)
    fields = draft.fields
    fields["case_id"] = _unique_case_id(row, seen)
    fields["patient_id"] = schema_value("patient_id", row["patient_id"], "patient_id")
    fields["pathology"] = choice(Pathology, row["pathology"], "pathology", reason=UNKNOWN_LABEL)
    _put_reference(fields, row["reference_standard"], assumed)
    draft.image_path = existing(root, row["image"], "image")
    draft.mask_paths.extend(
        existing(root, name, "mask") for name in row["mask"].split(MASK_SEPARATOR) if name.strip()
    )
    if row["birads"]:
        fields["birads"] = choice(BiRads, row["birads"], "birads")
    fields["descriptors"] = _descriptors(row)
    fields.update({name: schema_value(name, row[name], name) for name in _SCALARS if row[name]})
    if row["seed_x"] or row["seed_y"]:
        fields["seed"] = _seed(row)


def _unique_case_id(row: Row, seen: dict[str, int]) -> str:
    case_id = schema_value("case_id", row["case_id"], "case_id")
    first = seen.setdefault(case_id, row.line)
    if first != row.line:
        raise RowError(INVALID_FIELD, f"case_id: {case_id!r} already used on line {first}")
    return case_id


def _put_reference(fields: Fields, raw: str, assumed: str | None) -> None:
    if raw:
        fields["reference_standard"] = choice(ReferenceStandard, raw, "reference_standard")
    elif not attest(fields, assumed):
        expected = "|".join(r.value for r in ReferenceStandard)
        raise RowError(MISSING_REFERENCE, f"reference_standard: expected {expected}, got ''")


def _descriptors(row: Row) -> Fields:
    found: Fields = {
        name: choice(enum, row[name], name) for name, enum in _ENUM_DESCRIPTORS.items() if row[name]
    }
    if row["margin"]:
        found["margin"] = margins(row["margin"].split(MARGIN_SEPARATOR), "margin")
    return found


def _seed(row: Row) -> dict[str, int]:
    if not (row["seed_x"] and row["seed_y"]):
        raise RowError(INVALID_FIELD, "seed_x, seed_y: give both or neither")
    return {
        axis: schema_value(axis, row[f"seed_{axis}"], f"seed_{axis}", model=SeedPoint)
        for axis in ("x", "y")
    }


importer = FolderImporter()
