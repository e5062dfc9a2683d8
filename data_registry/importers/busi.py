"""BUSI (Al-Dhabyani et al. 2020): ``<root>/<benign|malignant|normal>/<label> (<n>).png``.

The label is the folder name; there is no patient or per-case metadata, so ``patient_id`` is the
case id (near-duplicates are the registry's job). Every mask beside an image (``_mask.png``,
``_mask_1.png``, …) goes into ``mask_paths`` in that order; normal images carry an empty mask,
passed on too. BUSI states no reference standard: cases get ``"none"`` (unconfirmed, not a
problem) unless the caller vouches for one with ``assume_reference``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

from data_registry.exceptions import SourceError
from data_registry.importers._csv import (
    INVALID_FIELD,
    MISSING_FILE,
    UNKNOWN_LABEL,
    Draft,
    RowError,
    attest,
    build,
    check_assumed,
    choice,
    require_dir,
    schema_value,
)
from data_registry.importers.base import SourceCase
from data_registry.schema import Pathology

_MASK = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<k>\d+))?\.png$")
_IMAGE = re.compile(r"^(?P<label>.+) \((?P<n>\d+)\)\.png$")


class BusiImporter:
    kind = "busi"
    default_site_id = "busi"

    def __call__(self, root: Path, *, assume_reference: str | None = None) -> Iterator[SourceCase]:
        """Yield one candidate per image, label folder by label folder.

        Raises:
            SourceError: ``root`` is missing or holds none of the label folders.
            ValueError: ``assume_reference`` is not a confirming reference standard.
        """
        assumed = check_assumed(assume_reference)
        folders = _folders(root)
        return (case for folder in folders for case in _folder_cases(root, folder, assumed))


def _folders(root: Path) -> list[Path]:
    require_dir(root, "BUSI")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    labels = [p.value for p in Pathology]
    if not any(p.name in labels for p in folders):
        raise SourceError(f"{root}: expected label folders {', '.join(labels)}; found none")
    return folders


def _folder_cases(root: Path, folder: Path, assumed: str | None) -> Iterator[SourceCase]:
    masks: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    images: list[Path] = []
    for path in folder.glob("*.png"):
        match = _MASK.match(path.name)
        if match:
            masks[match["stem"]].append((int(match["k"] or 0), path))
        else:
            images.append(path)
    for image in sorted(images, key=_order):
        own_masks = [path for _, path in sorted(masks.get(image.stem, []))]
        draft = Draft(image.relative_to(root).as_posix(), image, own_masks)
        yield build(draft, lambda d: _fill(d, folder.name, assumed))


def _order(image: Path) -> tuple[int, str]:
    match = _IMAGE.match(image.name)
    return (int(match["n"]) if match else -1, image.name)


def _fill(draft: Draft, label: str, assumed: str | None) -> None:
    name = draft.image_path.name
    pathology = choice(Pathology, label, "folder", reason=UNKNOWN_LABEL)
    match = _IMAGE.match(name)
    if match is None or match["label"] != label:
        raise RowError(
            INVALID_FIELD, f"file name: expected '{label} (<n>).png' in {label}/, got {name!r}"
        )
    case_id = schema_value("case_id", f"busi-{label}-{int(match['n'])}", "file name")
    draft.fields.update(case_id=case_id, patient_id=case_id, pathology=pathology)
    if not attest(draft.fields, assumed):
        draft.fields["reference_standard"] = "none"
    if not draft.mask_paths:
        mask = f"{draft.image_path.stem}_mask.png"
        raise RowError(MISSING_FILE, f"{mask}: expected a lesion mask beside {name!r}")


importer = BusiImporter()
