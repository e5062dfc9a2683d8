"""Release and device updates: gates, release bundles, the TUF repository, the update server,
and the console's update client.

Vendor side: :mod:`release.gates` (the declared change protocol), :mod:`release.bundle`
(release folders and archives), :mod:`release.repository` and :mod:`release.keys` (TUF
metadata and keys), :mod:`release.server` (HTTP). Console side, which never imports torch:
:mod:`release.console_client`, :mod:`release.slots`, :mod:`release.selftest`,
:mod:`release.manifest`.

Names are imported lazily (PEP 562) so that a console loading ``release.console_client`` does
not pull in the vendor's modules (``release.gates`` imports torch through ``models.evaluation``).
"""

from __future__ import annotations

import importlib
from typing import Any

from release.exceptions import (
    ConsoleBusyError,
    ConsoleError,
    DownloadFailedError,
    GateError,
    GateReportError,
    IncompatibleReleaseError,
    InstallError,
    KeyStoreError,
    MetadataRefusedError,
    NoModelError,
    NotProvisionedError,
    PackagingError,
    ProtocolError,
    ReleaseError,
    ReleaseIntegrityError,
    RepositoryStateError,
    SelfTestError,
    SigningError,
    TargetIntegrityError,
    UpdateError,
    VersionError,
)

_LAZY = {
    "GateProtocol": "release.protocol",
    "GateReport": "release.gate_report",
    "load_protocol": "release.protocol",
    "validate": "release.gates",
    "write_validation": "release.gates",
    "build_release": "release.bundle",
    "write_archive": "release.bundle",
    "ReleaseManifest": "release.manifest",
    "TargetCustom": "release.manifest",
    "verify_release": "release.manifest",
    "Expiry": "release.repository",
    "UpdateRepository": "release.repository",
    "KeyStore": "release.keys",
    "UpdateServer": "release.server",
    "ConsoleFolder": "release.slots",
    "UpdateResult": "release.console_client",
    "provision": "release.console_client",
    "update": "release.console_client",
    "rollback": "release.console_client",
    "status": "release.console_client",
    "run_self_test": "release.selftest",
}

__all__ = [
    "ConsoleBusyError",
    "ConsoleError",
    "DownloadFailedError",
    "GateError",
    "GateReportError",
    "IncompatibleReleaseError",
    "InstallError",
    "KeyStoreError",
    "MetadataRefusedError",
    "NoModelError",
    "NotProvisionedError",
    "PackagingError",
    "ProtocolError",
    "ReleaseError",
    "ReleaseIntegrityError",
    "RepositoryStateError",
    "SelfTestError",
    "SigningError",
    "TargetIntegrityError",
    "UpdateError",
    "VersionError",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'release' has no attribute {name!r}")
