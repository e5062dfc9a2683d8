"""Who may train on what: the case schema, importers, intake, the registry and the locked test set.

Imports nothing from ``models``, ``federation`` or ``release``.
"""

from data_registry.exceptions import (
    ImageError,
    RegistryError,
    RegistryStateError,
    SettingsError,
    SourceError,
    TestSetIntegrityError,
)
from data_registry.exclusion import Exclusion
from data_registry.ingest import ingest
from data_registry.registry import Entry, IngestSummary, Registry, RegistrySettings
from data_registry.schema import Case
from data_registry.testset import LockedTestSet, SourceSpec, lock_testset

__all__ = [
    "Case",
    "Entry",
    "Exclusion",
    "ImageError",
    "IngestSummary",
    "LockedTestSet",
    "Registry",
    "RegistryError",
    "RegistrySettings",
    "RegistryStateError",
    "SettingsError",
    "SourceError",
    "SourceSpec",
    "TestSetIntegrityError",
    "ingest",
    "lock_testset",
]
