"""A hospital's registry: one directory per site, one immutable JSON state per version.

Layout::

    REGISTRY/
      HEAD                  the current version number
      settings.json         the site's own rules (pseudonym patterns), optional
      versions/v0001.json   full state after ingest 1 (entries, quarantine, summary)
      images/<case_id>.png  normalised 8-bit greyscale images
      masks/<case_id>.png   merged lesion masks (0/255)

A version file is written completely before HEAD moves to it, and HEAD is replaced atomically, so
a reader (or a killed ingest) always sees one whole version.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from data_registry.exceptions import RegistryStateError, SettingsError
from data_registry.files import write_atomic
from data_registry.images import read_grey
from data_registry.schema import Case, SiteId

SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entry(_Record):
    """A registered case with what the registry decided about it."""

    case: Case
    phash: str
    probes: tuple[str, ...] = ()  # for the locked-copy check (hashing.copy_probes)
    added_in: int = Field(ge=1)
    group: str
    eligible: bool
    reasons: tuple[str, ...] = ()


class QuarantineRecord(_Record):
    source_key: str
    case_id: str | None
    reason: str
    detail: str
    version: int


class DuplicateSummary(_Record):
    exact: int = 0
    near: int = 0
    conflicting: list[tuple[str, str]] = []


class IngestSummary(_Record):
    """What one ingest did; the ``--json`` output of ``sonofed hospital ingest``."""

    site_id: str
    version: int
    received: int
    accepted: int
    already_present: int
    updated: int = 0  # already present, but the export now says something else (attestation…)
    eligible: int
    quarantined: dict[str, int]
    duplicates: DuplicateSummary
    locked_test_matches: int
    eligible_total: int
    content_hash: str
    hints: list[str] = []


class VersionState(_Record):
    schema_version: int = SCHEMA_VERSION
    site_id: SiteId
    version: int
    created: datetime
    source: str
    summary: IngestSummary
    entries: list[Entry]
    quarantine: list[QuarantineRecord]


SETTINGS_FILE = "settings.json"


def _check_pattern(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as e:
            raise ValueError(f"not a regular expression ({e}): {value!r}") from None
    return value


class RegistrySettings(_Record):
    """A site's own rules, kept in ``REGISTRY/settings.json``.

    ``patient_id_pattern`` and ``case_id_pattern`` are regular expressions that every identifier
    of the site must match in full (for example ``P\\d{6}``): a value that does not, such as a
    name typed where a pseudonym belongs, is quarantined.
    """

    patient_id_pattern: Annotated[str | None, AfterValidator(_check_pattern)] = None
    case_id_pattern: Annotated[str | None, AfterValidator(_check_pattern)] = None

    @classmethod
    def load(cls, root: Path) -> RegistrySettings:
        """The registry's settings; the defaults when it has no settings file.

        Raises:
            SettingsError: the file is not valid JSON or not valid settings.
        """
        path = Path(root) / SETTINGS_FILE
        if not path.exists():
            return cls()
        try:
            return cls.model_validate_json(path.read_bytes())
        except OSError as e:
            raise SettingsError(f"{path}: cannot be read ({e.strerror})") from e
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "settings"
            raise SettingsError(f"{path}: {where}: {first['msg']}") from e

    def updated(self, **values: str | None) -> RegistrySettings:
        """These settings with the given (non-None) values replaced.

        Raises:
            SettingsError: a value is not valid (for example not a regular expression).
        """
        merged = self.model_dump() | {k: v for k, v in values.items() if v is not None}
        try:
            return RegistrySettings.model_validate(merged)
        except ValidationError as e:
            first = e.errors()[0]
            where = "--" + str(first["loc"][0]).replace("_", "-") if first["loc"] else "settings"
            raise SettingsError(f"{where}: {first['msg'].removeprefix('Value error, ')}") from e

    def problems(self, case: Case) -> list[str]:
        """What of ``case`` breaks the site's patterns (empty when nothing does)."""
        found = []
        for field, pattern in (
            ("patient_id", self.patient_id_pattern),
            ("case_id", self.case_id_pattern),
        ):
            value = getattr(case, field)
            if pattern is not None and re.fullmatch(pattern, value) is None:
                found.append(
                    f"{field}: {value!r} does not match the site's pseudonym pattern "
                    f"{pattern!r} ({SETTINGS_FILE})"
                )
        return found


class Registry:
    """Read access to the current (or a given) version of a site's registry."""

    def __init__(self, root: Path, version: int | None = None) -> None:
        self.root = Path(root)
        head = self.root / "HEAD"
        if not head.is_file():
            raise RegistryStateError(f"{self.root}: not a registry (no HEAD file)")
        self.version = _read_head(head) if version is None else version
        self._state_path = self.root / "versions" / f"v{self.version:04d}.json"
        if not self._state_path.is_file():
            raise RegistryStateError(f"{self.root}: version {self.version} does not exist")

    @staticmethod
    def exists(root: Path) -> bool:
        return (Path(root) / "HEAD").is_file()

    @cached_property
    def state(self) -> VersionState:
        try:
            return VersionState.model_validate_json(self._state_path.read_bytes())
        except ValidationError as e:
            raise RegistryStateError(f"{self._state_path}: corrupt registry state ({e})") from e

    @property
    def site_id(self) -> str:
        return self.state.site_id

    @property
    def entries(self) -> list[Entry]:
        return self.state.entries

    def eligible(self, since: int | None = None) -> list[Entry]:
        """Cases that may train; with ``since``, only those added after that version."""
        if since is not None and not 0 <= since <= self.version:
            raise RegistryStateError(
                f"{self.root}: --since {since} is not a version of this registry "
                f"(0..{self.version})"
            )
        floor = since or 0
        return [e for e in self.entries if e.eligible and e.added_in > floor]

    def history(self) -> list[IngestSummary]:
        """The summary of every version up to this one."""
        return [Registry(self.root, v).state.summary for v in range(1, self.version + 1)]

    def image(self, entry: Entry) -> np.ndarray:
        return read_grey(self.root / entry.case.image)

    def mask(self, entry: Entry) -> np.ndarray | None:
        if not entry.case.masks:
            return None
        return read_grey(self.root / entry.case.masks[0]) > 127

    def status(self) -> dict[str, object]:
        """Counts by label, eligibility, quarantine reason, and the version history."""
        entries = self.entries
        reasons = Counter(r.split(":")[0] for e in entries for r in e.reasons)
        return {
            "site_id": self.site_id,
            "version": self.version,
            "cases": len(entries),
            "by_pathology": dict(Counter(e.case.pathology.value for e in entries)),
            "eligible": sum(e.eligible for e in entries),
            "eligible_by_pathology": dict(
                Counter(e.case.pathology.value for e in entries if e.eligible)
            ),
            "ineligible_reasons": dict(reasons),
            "quarantined": dict(Counter(q.reason for q in self.state.quarantine)),
            "history": [
                {
                    "version": s.version,
                    "received": s.received,
                    "accepted": s.accepted,
                    "eligible_total": s.eligible_total,
                    "content_hash": s.content_hash,
                }
                for s in self.history()
            ],
        }


def _read_head(head: Path) -> int:
    try:
        text = head.read_text().strip()
        version = int(text)
    except (OSError, ValueError) as e:
        raise RegistryStateError(f"{head}: expected a version number, e.g. 3 ({e})") from e
    if version < 1:
        raise RegistryStateError(f"{head}: expected a version number >= 1, got {version}")
    return version


def write_version(root: Path, state: VersionState) -> None:
    """Write a version's state, then move HEAD to it (the commit point)."""
    path = root / "versions" / f"v{state.version:04d}.json"
    write_atomic(path, state.model_dump_json(indent=None).encode())
    write_atomic(root / "HEAD", f"{state.version}\n".encode())


class IngestLock:
    """One ingest at a time per registry: an exclusive ``flock`` on ``REGISTRY/.ingest.lock``.

    The kernel holds the lock on the open descriptor and releases it when the process ends, so a
    killed ingest never leaves a stale lock and there is no window in which two processes can both
    believe they hold it. The file itself is never deleted (deleting a locked file would let a
    third process lock a new file of the same name); it holds the holder's pid for messages.
    """

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".ingest.lock"
        self._fd: int | None = None

    def __enter__(self) -> IngestLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RegistryStateError(
                f"{self.path.parent}: cannot write to the registry ({e.strerror})"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RegistryStateError(
                f"{self.path.parent}: another ingest (pid {holder}) is running"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def dumps_canonical(payload: object) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
