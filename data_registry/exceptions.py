"""Errors of the data registry, in a few families; every name ends in ``Error``."""

from __future__ import annotations


class RegistryError(Exception):
    """Base of every error this package raises on purpose."""


class SourceError(RegistryError):
    """A site's export cannot be read as the layout its importer expects (missing CSV, no folders)."""


class ImageError(RegistryError):
    """An image or mask file cannot be used; ``reason`` is a short quarantine code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class SettingsError(RegistryError):
    """A setting given by the user is invalid: a site id, a registry's settings file."""


class RegistryStateError(RegistryError):
    """A registry directory is missing, of another site, or its files disagree with each other."""


class TestSetIntegrityError(RegistryError):
    """The locked test set differs from its sealed manifest (bytes, labels or membership)."""

    __test__ = False  # not a pytest test class
