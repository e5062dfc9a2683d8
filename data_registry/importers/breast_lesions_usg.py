"""BrEaST-Lesions_USG (Pawłowska et al. 2024): one clinical CSV, images and masks in one folder.

Lexicon columns map onto the schema's enums; ``not applicable`` / ``not available`` mean unknown
and are left out. ``Mask_tumor_filename`` is the lesion mask; ``Mask_other_filename`` marks other
findings (not lesions) and is ignored, as are the free-text columns (Signs, Symptoms,
Interpretation, Diagnosis) and the descriptors the schema has no place for (Halo, Calcifications,
Skin_thickening, Tissue_composition). ``Pixel_size`` is centimetres per pixel.

Reference standard: ``Verification`` gives biopsy or follow-up. The normal images (BI-RADS 1, no
lesion) say ``not applicable``: they get ``"none"``, as there is nothing to confirm. A lesion
without a usable verification is a ``missing-reference-standard`` problem unless the caller vouches
for one with ``assume_reference`` (only when the cell is empty or ``not available``/``not
applicable``; an unrecognised text stays a problem).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from data_registry.importers._csv import (
    INVALID_FIELD,
    MISSING_FILE,
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
from data_registry.schema import BiRads, EchoPattern, Margin, Pathology, PosteriorFeatures, Shape

CSV_NAME = "BrEaST-Lesions-USG-clinical-data-Dec-15-2023.csv"
IMAGE_DIR = "BrEaST-Lesions_USG-images_and_masks"
COLUMNS = (
    "CaseID",
    "Image_filename",
    "Mask_tumor_filename",
    "Pixel_size",
    "Age",
    "Shape",
    "Margin",
    "Echogenicity",
    "Posterior_features",
    "BIRADS",
    "Verification",
    "Classification",
)
_UNKNOWN = frozenset({"", "not available", "not applicable"})
_VERIFICATION = {"confirmed by biopsy": "biopsy", "confirmed by follow-up care": "follow-up"}
_NOT_CIRCUMSCRIBED = "not circumscribed - "
_MM_PER_CM = 10.0


class BreastLesionsUsgImporter:
    kind = "breast_lesions_usg"
    default_site_id = "breast"

    def __call__(self, root: Path, *, assume_reference: str | None = None) -> Iterator[SourceCase]:
        """Yield one candidate per row of the clinical CSV.

        Raises:
            SourceError: ``root``, the CSV or the image folder is missing, or a column is absent.
            ValueError: ``assume_reference`` is not a confirming reference standard.
        """
        assumed = check_assumed(assume_reference)
        require_dir(root, "BrEaST-Lesions_USG")
        rows = read_table(root / CSV_NAME, COLUMNS)
        images = require_dir(root / IMAGE_DIR, "image")
        return (_case(images, row, assumed) for row in rows)


def _case(images: Path, row: Row, assumed: str | None) -> SourceCase:
    draft = Draft(f"{IMAGE_DIR}/{row['Image_filename']}", images / row["Image_filename"])
    return build(draft, lambda d: _fill(d, images, row, assumed))


def _fill(draft: Draft, images: Path, row: Row, assumed: str | None) -> None:
    check_shape(row)
    fields = draft.fields
    if not row["CaseID"].isdigit():
        raise RowError(INVALID_FIELD, f"CaseID: expected a case number, got {row['CaseID']!r}")
    number = int(row["CaseID"])
    fields["case_id"] = schema_value("case_id", f"breast-{number:03d}", "CaseID")
    fields["patient_id"] = schema_value("patient_id", f"breast-p{number:03d}", "CaseID")
    pathology = choice(Pathology, row["Classification"], "Classification", reason=UNKNOWN_LABEL)
    fields["pathology"] = pathology
    _put_reference(fields, row["Verification"], assumed)
    existing(images, row["Image_filename"], "Image_filename")
    draft.mask_paths.extend(_lesion_masks(images, row["Mask_tumor_filename"], pathology))
    if not _unknown(row["BIRADS"]):
        fields["birads"] = choice(BiRads, row["BIRADS"], "BIRADS")
    fields["descriptors"] = _descriptors(row)
    if not _unknown(row["Age"]):
        fields["age"] = schema_value("age", row["Age"], "Age")
    if not _unknown(row["Pixel_size"]):
        fields["pixel_spacing_mm"] = _pixel_spacing_mm(row["Pixel_size"])


def _unknown(raw: str) -> bool:
    return raw.strip().lower() in _UNKNOWN


def _put_reference(fields: Fields, raw: str, assumed: str | None) -> None:
    text = raw.strip().lower()
    if text in _VERIFICATION:
        fields["reference_standard"] = _VERIFICATION[text]
    elif text in _UNKNOWN and fields["pathology"] == Pathology.NORMAL.value:
        fields["reference_standard"] = "none"
    elif not (text in _UNKNOWN and attest(fields, assumed)):
        raise RowError(
            MISSING_REFERENCE,
            f"Verification: expected {' or '.join(repr(v) for v in _VERIFICATION)}, got {raw!r}",
        )


def _lesion_masks(images: Path, raw: str, pathology: str) -> list[Path]:
    names = [name for name in raw.split("&") if name.strip()]
    if not names and pathology != Pathology.NORMAL.value:
        raise RowError(
            MISSING_FILE, f"Mask_tumor_filename: a {pathology} case needs a lesion mask, got ''"
        )
    return [existing(images, name, "Mask_tumor_filename") for name in names]


def _descriptors(row: Row) -> Fields:
    found: Fields = {}
    if not _unknown(row["Shape"]):
        found["shape"] = choice(Shape, row["Shape"], "Shape")
    if not _unknown(row["Margin"]):
        found["margin"] = _margin(row["Margin"])
    if not _unknown(row["Echogenicity"]):
        found["echo_pattern"] = choice(EchoPattern, row["Echogenicity"], "Echogenicity")
    if not _unknown(row["Posterior_features"]):
        found["posterior_features"] = choice(
            PosteriorFeatures,
            row["Posterior_features"],
            "Posterior_features",
            aliases={"no": "none"},
        )
    return found


def _margin(raw: str) -> list[str]:
    """``circumscribed`` or ``not circumscribed - <term>[&<term>…]``."""
    text = raw.strip().lower()
    if text == Margin.CIRCUMSCRIBED.value:
        return [Margin.CIRCUMSCRIBED.value]
    if text.startswith(_NOT_CIRCUMSCRIBED):
        terms = text.removeprefix(_NOT_CIRCUMSCRIBED).split("&")
        not_circumscribed = [m for m in Margin if m is not Margin.CIRCUMSCRIBED]
        return margins(terms, "Margin", allowed=not_circumscribed)
    raise RowError(
        INVALID_FIELD,
        "Margin: expected 'circumscribed' or 'not circumscribed - <term>[&<term>...]', "
        f"got {raw!r}",
    )


def _pixel_spacing_mm(raw: str) -> float:
    try:
        cm = float(raw)
    except ValueError:
        raise RowError(
            INVALID_FIELD, f"Pixel_size: expected centimetres per pixel, got {raw!r}"
        ) from None
    return schema_value("pixel_spacing_mm", cm * _MM_PER_CM, "Pixel_size (x10, mm)")


importer = BreastLesionsUsgImporter()
