"""What an importer yields: one candidate case per image, not yet validated.

Importers only read a source's own layout and map its vocabulary to the schema's. They never
raise on a single bad row: a row they cannot map becomes a candidate with ``problem`` set, and
intake quarantines it with that reason. Files are opened later, by intake.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class Problem:
    """Why a candidate cannot be accepted: ``reason`` is a short code, ``detail`` names the field."""

    reason: str
    detail: str


@dataclass(frozen=True)
class SourceCase:
    """A case as found in a site's export.

    Attributes:
        source_key: the image's path relative to the source root (used in messages and reports).
        image_path: absolute path of the image file.
        mask_paths: lesion mask files; several are merged into one by intake.
        fields: candidate values for :class:`data_registry.schema.Case` fields, already in the
            schema's vocabulary (``case_id``, ``patient_id``, ``pathology``, ``reference_standard``,
            ``birads``, ``descriptors`` as a dict, ``device``, ``age``, ``pixel_spacing_mm``,
            ``source_fold``, ``seed`` as ``{"x":…, "y":…}``, dates). Intake adds ``site_id``,
            hashes, sizes and ``ingested_at``.
        problem: set when the importer could not map a value; intake quarantines the case.
    """

    source_key: str
    image_path: Path
    mask_paths: tuple[Path, ...] = ()
    fields: Mapping[str, Any] = field(default_factory=dict)
    problem: Problem | None = None


class Importer(Protocol):
    """Reads one kind of export. ``default_site_id`` names the site when the user gives none.

    ``assume_reference`` is the reference standard a site vouches for where its export states
    none (BUSI gives folder labels only); such cases carry ``reference_attested_by_site``.
    """

    kind: str
    default_site_id: str

    def __call__(
        self, root: Path, *, assume_reference: str | None = None
    ) -> Iterator[SourceCase]: ...
