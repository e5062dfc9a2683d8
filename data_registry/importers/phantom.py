"""Importer for a site folder written by :mod:`data_registry.phantom`.

Layout: ``<root>/cases.csv`` (columns :data:`data_registry.phantom.CSV_COLUMNS`), with images and
masks at the relative paths it names. The CSV already speaks the schema's vocabulary; this module
only checks every value against it, so a bad row becomes a candidate with a problem, never an
exception.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from data_registry.exceptions import SourceError
from data_registry.importers._csv import check_assumed
from data_registry.importers.base import Problem, SourceCase
from data_registry.schema import (
    BiRads,
    EchoPattern,
    Margin,
    Orientation,
    Pathology,
    PosteriorFeatures,
    ReferenceStandard,
    Shape,
)

CASES_FILE = "cases.csv"
_REQUIRED = ("case_id", "patient_id", "image", "mask", "pathology", "reference_standard")
_DESCRIPTORS: Mapping[str, type[StrEnum]] = {
    "shape": Shape,
    "orientation": Orientation,
    "echo_pattern": EchoPattern,
    "posterior_features": PosteriorFeatures,
}
_E = TypeVar("_E", bound=StrEnum)


class _RowError(Exception):
    """A value of one row that cannot be mapped; becomes the candidate's problem."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.problem = Problem(reason, detail)


def _label(enum: type[_E], column: str, raw: str) -> _E:
    try:
        return enum(raw)
    except ValueError:
        expected = ", ".join(repr(member.value) for member in enum)
        raise _RowError(
            "unknown-label", f"{column}: expected one of {expected}; got {raw!r}"
        ) from None


def _number(kind: type[int] | type[float], column: str, raw: str) -> int | float:
    try:
        return kind(raw)
    except ValueError:
        raise _RowError(
            "invalid-field", f"{column}: expected a {kind.__name__}; got {raw!r}"
        ) from None


def _relative_file(root: Path, column: str, raw: str) -> Path:
    """A path the CSV names, which must stay inside the export."""
    path = PurePosixPath(raw)
    if not raw or path.is_absolute() or ".." in path.parts:
        raise _RowError(
            "invalid-field", f"{column}: expected a path inside the export; got {raw!r}"
        )
    return root / path


def _descriptors(row: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {
        column: _label(enum, column, row[column])
        for column, enum in _DESCRIPTORS.items()
        if row.get(column)
    }
    if row.get("margin"):
        found["margin"] = [_label(Margin, "margin", term) for term in row["margin"].split("&")]
    return found


def _fields(row: Mapping[str, str]) -> dict[str, Any]:
    """Schema fields of one CSV row; empty optional columns are left out."""
    fields: dict[str, Any] = {
        "case_id": row["case_id"],
        "patient_id": row["patient_id"],
        "pathology": _label(Pathology, "pathology", row["pathology"]),
        "reference_standard": _label(
            ReferenceStandard, "reference_standard", row["reference_standard"]
        ),
    }
    if row.get("birads"):
        fields["birads"] = _label(BiRads, "birads", row["birads"].upper())
    if descriptors := _descriptors(row):
        fields["descriptors"] = descriptors
    if row.get("device"):
        fields["device"] = row["device"]
    if row.get("age"):
        fields["age"] = _number(int, "age", row["age"])
    if row.get("pixel_spacing_mm"):
        fields["pixel_spacing_mm"] = _number(float, "pixel_spacing_mm", row["pixel_spacing_mm"])
    seed = row.get("seed_x", ""), row.get("seed_y", "")
    if all(seed):
        fields["seed"] = {
            "x": _number(int, "seed_x", seed[0]),
            "y": _number(int, "seed_y", seed[1]),
        }
    elif any(seed):
        raise _RowError("invalid-field", f"seed_x, seed_y: give both or neither; got {seed!r}")
    return fields


def _case(root: Path, row: Mapping[str, str]) -> SourceCase:
    image = row.get("image") or ""
    try:
        image_path = _relative_file(root, "image", image)
        masks = (_relative_file(root, "mask", row["mask"]),) if row.get("mask") else ()
        return SourceCase(image, image_path, masks, _fields(row))
    except _RowError as e:
        known = {k: row[k] for k in ("case_id", "patient_id") if row.get(k)}
        return SourceCase(image, root / image, (), known, e.problem)


class PhantomImporter:
    """Reads one phantom site folder (``site-a``, ...)."""

    kind = "phantom"
    default_site_id = "phantom"

    def site_id_for(self, root: Path) -> str:
        """The site id a phantom folder stands for: its own name, e.g. ``site-a``."""
        return Path(root).resolve().name.lower()

    def __call__(self, root: Path, *, assume_reference: str | None = None) -> Iterator[SourceCase]:
        """Candidates for every CSV row, in order; a row with a value outside the schema has
        ``problem`` set.

        Args:
            root: the site folder holding ``cases.csv``.
            assume_reference: validated only; the phantom states every case's reference standard.

        Returns:
            An iterator of candidates (the CSV is read, and checked, before this returns).

        Raises:
            SourceError: if ``cases.csv`` is missing, unreadable or lacks a required column.
        """
        check_assumed(assume_reference)
        root = Path(root)
        return (_case(root, row) for row in _read_rows(root / CASES_FILE))


def _read_rows(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
    except FileNotFoundError:
        raise SourceError(f"{path}: not found; is this a phantom site folder?") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{path}: cannot be read as CSV ({e})") from e
    missing = [c for c in _REQUIRED if c not in (reader.fieldnames or ())]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)}")
    return rows


importer = PhantomImporter()
