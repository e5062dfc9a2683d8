"""Errors of the ``release`` package, in a few families; every name ends in ``Error``.

- :class:`GateError`: the change protocol cannot be applied (bad protocol, unusable inputs).
  A gate that *fails* is not an error: it is a result in the gate report.
- :class:`PackagingError`: a release bundle cannot be built, read or trusted.
- :class:`SigningError`: the TUF repository or its keys are missing, inconsistent or misused.
- :class:`UpdateError`: a console refused an update (each subclass names the check that caught
  it in :attr:`UpdateError.check`).
- :class:`ConsoleError`: the console's own folder is unusable (not provisioned, locked, no
  previous model to roll back to).

Foreign exceptions (python-tuf, securesystemslib, OSError, pydantic) are re-raised ``from e``
as one of these, so a caller needs to catch only :class:`ReleaseError`.
"""

from __future__ import annotations


class ReleaseError(Exception):
    """Base of every error this package raises on purpose."""


# --- gates -----------------------------------------------------------------------------------


class GateError(ReleaseError):
    """The declared change protocol cannot be applied to these inputs."""


class ProtocolError(GateError):
    """The ``gates`` block of the params file is missing or does not validate."""


# --- release bundles -------------------------------------------------------------------------


class PackagingError(ReleaseError):
    """A release bundle cannot be built or read."""


class GateReportError(PackagingError):
    """The gate report is missing, failed, or belongs to another candidate or test set."""


class ReleaseIntegrityError(PackagingError):
    """A release bundle's files do not match its manifest, or its layout is unsafe."""


class VersionError(PackagingError):
    """A version string is not semantic, or a release does not move the version forward."""


# --- signing and the repository ----------------------------------------------------------------


class SigningError(ReleaseError):
    """The TUF repository or its keys cannot be used."""


class KeyStoreError(SigningError):
    """A key folder is missing, mixes offline and online keys, or holds an unreadable key."""


class RepositoryStateError(SigningError):
    """The repository's metadata is missing, inconsistent, or refuses the requested change."""


# --- console updates -------------------------------------------------------------------------


class UpdateError(ReleaseError):
    """An update was refused; :attr:`check` names the check that caught it.

    Args:
        message: what happened, for a person.
        check: a short stable name of the check (``metadata-rollback``, ``target-integrity``,
            ``self-test``, …), for scripts and tests.
    """

    check = "update"

    def __init__(self, message: str, check: str | None = None) -> None:
        super().__init__(message)
        if check is not None:
            self.check = check


class MetadataRefusedError(UpdateError):
    """TUF metadata failed verification: rollback, freeze, unknown key or bad signature."""

    check = "metadata"


class DownloadFailedError(UpdateError):
    """The update server could not be reached, or a download was cut off."""

    check = "download"


class TargetIntegrityError(UpdateError):
    """A downloaded target's length or hashes differ from the signed targets metadata."""

    check = "target-integrity"


class IncompatibleReleaseError(UpdateError):
    """A release is for another console model, newer console software, or is older."""

    check = "compatibility"


class InstallError(UpdateError):
    """Writing the release into the inactive slot failed (disk full, I/O error, bad archive)."""

    check = "install"


class SelfTestError(UpdateError):
    """The installed release's reference cases did not reproduce their expected outputs."""

    check = "self-test"


# --- the console's folder --------------------------------------------------------------------


class ConsoleError(ReleaseError):
    """The console folder cannot be used for this command."""


class NotProvisionedError(ConsoleError):
    """The folder holds no provisioned console (run ``sonofed console provision``)."""


class ConsoleBusyError(ConsoleError):
    """Another update or rollback holds the console's lock."""


class NoModelError(ConsoleError):
    """The console has no installed model (or no previous one to roll back to)."""
