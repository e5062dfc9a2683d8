"""Shared machinery of the importers: reading CSV exports and mapping cells to the schema.

A cell that cannot be mapped raises :class:`RowError`; :func:`build` turns it into a
:class:`SourceCase` with ``problem`` set, so a single bad row never stops an import. Only layout
faults (a missing folder, file or column) raise :class:`SourceError`. Values are checked against
:mod:`data_registry.schema` itself, so the schema stays the one place that defines them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from data_registry.exceptions import SourceError
from data_registry.importers.base import Problem, SourceCase
from data_registry.schema import Case, Descriptors, Margin, ReferenceStandard

UNKNOWN_LABEL = "unknown-label"
MISSING_REFERENCE = "missing-reference-standard"
INVALID_FIELD = "invalid-field"
MISSING_FILE = "missing-file"
SYMBOLIC_LINK = "symbolic-link"

Fields = dict[str, Any]


class RowError(Exception):
    """One row cannot be mapped; never leaves an importer (it becomes ``SourceCase.problem``)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.problem = Problem(reason, detail)


@dataclass(frozen=True)
class Row:
    """One data row of a CSV file; ``line`` is its line number for messages."""

    line: int
    cells: Mapping[str, str]
    overflow: bool = False

    def __getitem__(self, column: str) -> str:
        return (self.cells.get(column) or "").strip()


@dataclass
class Draft:
    """A candidate being filled in; what was mapped before a failure is kept for the report."""

    source_key: str
    image_path: Path
    mask_paths: list[Path] = field(default_factory=list)
    fields: Fields = field(default_factory=dict)


def build(draft: Draft, fill: Callable[[Draft], None]) -> SourceCase:
    """Run ``fill`` on ``draft`` and freeze the result; a :class:`RowError` becomes a problem."""
    problem = None
    try:
        fill(draft)
    except RowError as e:
        problem = e.problem
    return SourceCase(
        source_key=draft.source_key,
        image_path=draft.image_path,
        mask_paths=tuple(draft.mask_paths),
        fields=dict(draft.fields),
        problem=problem,
    )


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise SourceError(f"{path}: {what} folder not found")
    return path


def read_table(
    path: Path, required: Sequence[str], *, allowed: Sequence[str] | None = None
) -> list[Row]:
    """Read a UTF-8 CSV with a header row.

    Raises:
        SourceError: the file is missing or unreadable, a ``required`` column is absent, or
            (when ``allowed`` is given) a column is not in ``allowed``.
    """
    if not path.is_file():
        raise SourceError(f"{path}: CSV file not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [name.strip() for name in next(reader, [])]
            rows = [
                Row(
                    reader.line_num,
                    dict(zip(header, cells, strict=False)),
                    len(cells) > len(header),
                )
                for cells in reader
                if any(cell.strip() for cell in cells)
            ]
    except (UnicodeDecodeError, csv.Error) as e:
        raise SourceError(f"{path}: not a readable UTF-8 CSV file ({e})") from e
    _check_header(path, header, required, allowed)
    return rows


def _check_header(
    path: Path, header: list[str], required: Sequence[str], allowed: Sequence[str] | None
) -> None:
    if not header:
        raise SourceError(f"{path}: empty file, expected a header row")
    doubled = sorted({name for name in header if header.count(name) > 1})
    if doubled:
        raise SourceError(f"{path}: column(s) {', '.join(doubled)} appear more than once")
    if allowed is not None:
        unknown = [name for name in header if name not in allowed]
        if unknown:
            raise SourceError(
                f"{path}: unknown column(s) {', '.join(repr(n) for n in unknown)}; "
                f"allowed columns: {', '.join(allowed)}"
            )
    missing = [name for name in required if name not in header]
    if missing:
        raise SourceError(
            f"{path}: missing column(s) {', '.join(missing)}; found: {', '.join(header)}"
        )


def check_shape(row: Row) -> None:
    if row.overflow:
        raise RowError(INVALID_FIELD, f"line {row.line}: more cells than header columns")


def choice(
    enum: type[StrEnum],
    raw: str,
    column: str,
    *,
    reason: str = INVALID_FIELD,
    allowed: Iterable[StrEnum] | None = None,
    aliases: Mapping[str, str] | None = None,
) -> str:
    """Map ``raw`` (case-insensitive, after ``aliases``) to one of ``allowed`` (default: all)."""
    options = list(enum if allowed is None else allowed)
    key = raw.strip().lower()
    key = (aliases or {}).get(key, key)
    for option in options:
        if option.value.lower() == key:
            return option.value
    expected = "|".join(option.value for option in options)
    raise RowError(reason, f"{column}: expected {expected}, got {raw!r}")


def margins(
    terms: Iterable[str], column: str, *, allowed: Iterable[Margin] | None = None
) -> list[str]:
    """Map margin terms to schema values in lexicon order; the schema's combination rule applies."""
    found = {choice(Margin, term, column, allowed=allowed) for term in terms}
    ordered = [m.value for m in Margin if m.value in found]
    try:
        Descriptors(margin=tuple(ordered))
    except ValidationError as e:
        detail = _message(e).removeprefix("margin: ")  # the schema names its own field
        raise RowError(INVALID_FIELD, f"{column}: {detail}") from None
    return ordered


@cache
def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    annotation = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
    return TypeAdapter(annotation)


def schema_value(name: str, raw: Any, column: str, *, model: type[BaseModel] = Case) -> Any:
    """Check ``raw`` as field ``name`` of ``model``; a failure names the source ``column``."""
    try:
        value = _adapter(model, name).validate_python(raw)
    except ValidationError as e:
        message = _message(e)
        got = "" if "got " in message else f", got {raw!r}"
        raise RowError(INVALID_FIELD, f"{column}: {message}{got}") from None
    return _plain(value)


def _message(e: ValidationError) -> str:
    return str(e.errors()[0]["msg"]).removeprefix("Value error, ")


def _plain(value: Any) -> Any:
    """Enum members as their values and dates as ISO text, so ``fields`` stay JSON-friendly."""
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, date):
        return value.isoformat()
    return value


def existing(root: Path, relative: str, column: str) -> Path:
    """Resolve a path taken from the export, refusing one that leaves ``root``.

    Raises:
        RowError: ``invalid-field`` for an absolute or escaping path, ``missing-file`` when the
            file does not exist.
    """
    text = relative.strip().replace("\\", "/")
    if not text:
        raise RowError(MISSING_FILE, f"{column}: empty, expected a file name")
    parts = PurePosixPath(text)
    if parts.is_absolute() or ".." in parts.parts:
        raise RowError(
            INVALID_FIELD, f"{column}: expected a path inside the export folder, got {relative!r}"
        )
    path = root.joinpath(*parts.parts)
    if not path.is_file():
        raise RowError(MISSING_FILE, f"{column}: file {text!r} not found")
    if path.is_symlink() or not path.resolve().is_relative_to(root.resolve()):
        raise RowError(
            SYMBOLIC_LINK,
            f"{column}: {text!r} is or passes through a symbolic link; export the file itself",
        )
    return path


def check_assumed(assume_reference: str | None) -> str | None:
    """Validate the reference standard a site vouches for, before anything is read.

    Raises:
        ValueError: not one of the schema's confirming standards (``none`` vouches for nothing).
    """
    if assume_reference is None:
        return None
    allowed = [r.value for r in ReferenceStandard if r is not ReferenceStandard.NONE]
    if assume_reference not in allowed:
        raise ValueError(
            f"assume_reference: expected {'|'.join(allowed)} or None, got {assume_reference!r}"
        )
    return assume_reference


def attest(fields: Fields, assumed: str | None) -> bool:
    """Fill in the reference standard the site vouches for; False when it vouched for none."""
    if assumed is None:
        return False
    fields["reference_standard"] = assumed
    fields["reference_attested_by_site"] = True
    return True
