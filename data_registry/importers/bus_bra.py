"""BUS-BRA (Gómez-Flores et al. 2024): ``bus_data.csv``, ``5-fold-cv.csv``, ``Images/``, ``Masks/``.

``Case`` is the patient (left and right images share it). Every label is biopsy-proven, so
``assume_reference`` is checked but not needed. BUS-BRA grades BI-RADS 4 without the 4A/4B/4C
subcategory the schema requires, so a plain ``4`` is left unknown rather than guessed. The
official fold (``kFold``, 1–5, grouped by patient) becomes ``source_fold``. Histology is free text
and is not copied; width, height and bounding box are read from the files by intake.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

from data_registry.importers._csv import (
    INVALID_FIELD,
    UNKNOWN_LABEL,
    Draft,
    Row,
    RowError,
    build,
    check_assumed,
    check_shape,
    choice,
    existing,
    read_table,
    require_dir,
    schema_value,
)
from data_registry.importers.base import SourceCase
from data_registry.schema import BiRads, Pathology

_ID = re.compile(r"^bus_(?P<case>\d+)-(?P<side>[lrs])$")


class BusBraImporter:
    kind = "bus_bra"
    default_site_id = "bus-bra"

    def __call__(self, root: Path, *, assume_reference: str | None = None) -> Iterator[SourceCase]:
        """Yield one candidate per row of ``bus_data.csv``.

        Raises:
            SourceError: ``root``, ``bus_data.csv`` or ``5-fold-cv.csv`` is missing, or lacks a
                column this importer reads.
            ValueError: ``assume_reference`` is not a confirming reference standard.
        """
        check_assumed(assume_reference)
        require_dir(root, "BUS-BRA")
        rows = read_table(root / "bus_data.csv", ("ID", "Case", "Pathology", "BIRADS", "Device"))
        folds = {
            row["ID"]: row
            for row in read_table(root / "5-fold-cv.csv", ("ID", "Pathology", "kFold"))
        }
        return (_case(root, row, folds) for row in rows)


def _case(root: Path, row: Row, folds: Mapping[str, Row]) -> SourceCase:
    relative = f"Images/{row['ID']}.png"
    return build(
        Draft(relative, root / relative), lambda d: _fill(d, root, row, folds.get(row["ID"]))
    )


def _fill(draft: Draft, root: Path, row: Row, fold: Row | None) -> None:
    check_shape(row)
    match = _ID.match(row["ID"])
    if match is None:
        raise RowError(INVALID_FIELD, f"ID: expected bus_<case>-<l|r|s>, got {row['ID']!r}")
    fields = draft.fields
    fields["case_id"] = schema_value("case_id", f"busbra-{match['case']}-{match['side']}", "ID")
    fields["patient_id"] = _patient(row["Case"], int(match["case"]))
    existing(root, draft.source_key, "ID (image)")
    mask = f"Masks/mask_{match['case']}-{match['side']}.png"
    draft.mask_paths.append(existing(root, mask, "ID (lesion mask)"))
    fields["pathology"] = choice(
        Pathology,
        row["Pathology"],
        "Pathology",
        reason=UNKNOWN_LABEL,
        allowed=(Pathology.BENIGN, Pathology.MALIGNANT),
    )
    fields["reference_standard"] = "biopsy"
    if fold is not None:
        _put_fold(fields, fold)
    if row["BIRADS"]:
        fields["birads"] = choice(BiRads, row["BIRADS"], "BIRADS")
    if row["Device"]:
        fields["device"] = schema_value("device", row["Device"], "Device")


def _patient(raw: str, case_in_id: int) -> str:
    if not raw.isdigit():
        raise RowError(INVALID_FIELD, f"Case: expected a patient number, got {raw!r}")
    if int(raw) != case_in_id:
        raise RowError(INVALID_FIELD, f"Case: {raw!r} disagrees with the number {case_in_id} in ID")
    return schema_value("patient_id", f"busbra-p{int(raw):04d}", "Case")


def _put_fold(fields: dict[str, object], fold: Row) -> None:
    if fold["Pathology"].lower() != str(fields["pathology"]):
        raise RowError(
            UNKNOWN_LABEL,
            f"Pathology: bus_data.csv says {fields['pathology']!r}, "
            f"5-fold-cv.csv says {fold['Pathology']!r}",
        )
    if fold["kFold"]:
        fields["source_fold"] = schema_value("source_fold", fold["kFold"], "kFold (5-fold-cv.csv)")


importer = BusBraImporter()
