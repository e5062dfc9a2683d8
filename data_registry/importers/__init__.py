"""Importers: one per kind of site export, each turning its layout into :class:`SourceCase` s.

Every importer is called as ``importer(root, *, assume_reference=None)``; ``assume_reference``
is the reference standard (biopsy, surgery, follow-up) a site vouches for where its export states
none, and such cases carry ``reference_attested_by_site=True``.

Modules are imported on first use, so one kind's code (or its absence) does not affect the others.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from importlib import import_module

from data_registry.exceptions import SourceError
from data_registry.importers.base import Importer, Problem, SourceCase

__all__ = ["IMPORTERS", "Importer", "Problem", "SourceCase", "get_importer"]

_MODULES = {
    "busi": "data_registry.importers.busi",
    "bus_bra": "data_registry.importers.bus_bra",
    "breast_lesions_usg": "data_registry.importers.breast_lesions_usg",
    "phantom": "data_registry.importers.phantom",
    "folder": "data_registry.importers.folder",
}


class _LazyImporters(Mapping[str, Importer]):
    """kind → importer; a module is imported when its kind is first looked up."""

    def __getitem__(self, kind: str) -> Importer:
        return import_module(_MODULES[kind]).importer

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


IMPORTERS: Mapping[str, Importer] = _LazyImporters()


def get_importer(kind: str) -> Importer:
    """Return the importer of ``kind``.

    Raises:
        SourceError: ``kind`` is not one of :data:`IMPORTERS`.
    """
    if kind not in _MODULES:
        raise SourceError(f"unknown source kind {kind!r}; expected one of: {', '.join(_MODULES)}")
    return IMPORTERS[kind]
