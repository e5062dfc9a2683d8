"""Validate one candidate case: read and normalise its files, check them, build a `Case`.

Intake never raises for a bad case: it returns a `Quarantined` record that says why, so the
rest of a site's export goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
from pydantic import ValidationError

from data_registry.exceptions import ImageError
from data_registry.files import sha256_file
from data_registry.hashing import copy_probes, perceptual_hash
from data_registry.images import (
    encode_png,
    read_grey,
    read_mask,
    seed_point,
    sha256_bytes,
)
from data_registry.importers.base import SourceCase
from data_registry.schema import Case, Pathology


@dataclass(frozen=True)
class Admitted:
    """A valid case with its normalised files, ready to be stored."""

    case: Case
    image_png: bytes
    mask_png: bytes | None
    phash: str
    probes: tuple[str, ...]
    image: np.ndarray
    mask: np.ndarray | None


@dataclass(frozen=True)
class Quarantined:
    """A case kept out of the registry, with a reason code and a detail naming the file or field."""

    source_key: str
    case_id: str | None
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str | None]:
        return {
            "source_key": self.source_key,
            "case_id": self.case_id,
            "reason": self.reason,
            "detail": self.detail,
        }


def _validation_detail(error: ValidationError) -> tuple[str, str]:
    first = error.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "case"
    reason = "unknown-field" if first["type"] == "extra_forbidden" else "invalid-field"
    return reason, f"{location}: {first['msg']}"


def _merged_mask(candidate: SourceCase, shape: tuple[int, int]) -> np.ndarray:
    merged = np.zeros(shape, dtype=bool)
    for path in candidate.mask_paths:
        merged |= read_mask(path, shape)
    return merged


def _seed_on_lesion(seed: object, mask: np.ndarray) -> bool:
    """True when the seed is a point of the mask; an out-of-image seed is the schema's to refuse."""
    if not isinstance(seed, dict):
        return True
    x, y = seed.get("x"), seed.get("y")
    if not (isinstance(x, int) and isinstance(y, int)):
        return True
    if not (0 <= y < mask.shape[0] and 0 <= x < mask.shape[1]):
        return True
    return bool(mask[y, x])


def admit(candidate: SourceCase, *, site_id: str, ingested_at: datetime) -> Admitted | Quarantined:
    """Turn a candidate into an admitted case or a quarantine record."""
    case_id = candidate.fields.get("case_id")
    case_id = str(case_id) if case_id is not None else None

    def quarantine(reason: str, detail: str) -> Quarantined:
        return Quarantined(candidate.source_key, case_id, reason, detail)

    if candidate.problem is not None:
        return quarantine(candidate.problem.reason, candidate.problem.detail)
    linked = [p for p in (candidate.image_path, *candidate.mask_paths) if p.is_symlink()]
    if linked:
        return quarantine(
            "symbolic-link",
            f"{candidate.source_key}: {linked[0].name} is a symbolic link; export the file itself",
        )
    try:
        image = read_grey(candidate.image_path)
        mask = _merged_mask(candidate, image.shape)
    except ImageError as e:
        return quarantine(e.reason, e.detail)

    pathology = candidate.fields.get("pathology")
    is_normal = pathology == Pathology.NORMAL.value
    if not is_normal and not mask.any():
        return quarantine(
            "empty-mask", f"{candidate.source_key}: {pathology} case without a lesion"
        )
    if is_normal and mask.any():
        return quarantine(
            "mask-on-normal", f"{candidate.source_key}: normal case with a lesion mask"
        )

    fields = dict(candidate.fields)
    if not is_normal and "seed" not in fields:
        x, y = seed_point(mask)
        fields["seed"] = {"x": x, "y": y}
    elif not is_normal and not _seed_on_lesion(fields["seed"], mask):
        return quarantine(
            "seed-outside-lesion",
            f"{candidate.source_key}: seed ({fields['seed'].get('x')}, {fields['seed'].get('y')})"
            " is not inside the lesion mask; expected the click on the lesion",
        )
    image_png = encode_png(image)
    mask_png = None if is_normal else encode_png(mask)
    try:
        case = Case(
            **fields,
            site_id=site_id,
            image=f"images/{case_id}.png",
            image_sha256=sha256_bytes(image_png),
            source_sha256=sha256_file(candidate.image_path),
            width=image.shape[1],
            height=image.shape[0],
            masks=() if mask_png is None else (f"masks/{case_id}.png",),
            ingested_at=ingested_at,
        )
    except ValidationError as e:
        return quarantine(*_validation_detail(e))
    except TypeError as e:  # a field given twice by an importer is a programming error upstream
        return quarantine("invalid-field", str(e))
    return Admitted(
        case=case,
        image_png=image_png,
        mask_png=mask_png,
        phash=perceptual_hash(image),
        probes=copy_probes(image),
        image=image,
        mask=None if is_normal else mask,
    )
