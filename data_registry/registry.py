"""A hospital's registry: one directory per site, one immutable JSON state per version.

Layout::

    REGISTRY/
      HEAD                  the current version number
      versions/v0001.json   full state after ingest 1 (entries, quarantine, summary)
      images/<case_id>.png  normalised 8-bit greyscale images
      masks/<case_id>.png   merged lesion masks (0/255)

A version file is written completely before HEAD moves to it, and HEAD is replaced atomically, so
a reader (or a killed ingest) always sees one whole version.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from datetime import datetime
from functools import cached_property
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.exceptions import RegistryStateError
from data_registry.images import read_grey, write_atomic
from data_registry.schema import Case, SiteId

SCHEMA_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entry(_Record):
    """A registered case with what the registry decided about it."""

    case: Case
    phash: str
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
    eligible: int
    quarantined: dict[str, int]
    duplicates: DuplicateSummary
    locked_test_matches: int
    eligible_total: int
    content_hash: str


class VersionState(_Record):
    schema_version: int = SCHEMA_VERSION
    site_id: SiteId
    version: int
    created: datetime
    source: str
    summary: IngestSummary
    entries: list[Entry]
    quarantine: list[QuarantineRecord]


class Registry:
    """Read access to the current (or a given) version of a site's registry."""

    def __init__(self, root: Path, version: int | None = None) -> None:
        self.root = Path(root)
        head = self.root / "HEAD"
        if not head.is_file():
            raise RegistryStateError(f"{self.root}: not a registry (no HEAD file)")
        self.version = int(head.read_text().strip()) if version is None else version
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


def write_version(root: Path, state: VersionState) -> None:
    """Write a version's state, then move HEAD to it (the commit point)."""
    path = root / "versions" / f"v{state.version:04d}.json"
    write_atomic(path, state.model_dump_json(indent=None).encode())
    write_atomic(root / "HEAD", f"{state.version}\n".encode())


class IngestLock:
    """One ingest at a time per registry; a lock left by a dead process is taken over."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / ".ingest.lock"

    def __enter__(self) -> IngestLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and _alive(holder):
                    raise RegistryStateError(
                        f"{self.path.parent}: another ingest (pid {holder}) is running"
                    ) from None
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(str(os.getpid()))
            return self
        raise RegistryStateError(f"{self.path}: could not take the ingest lock")

    def __exit__(self, *exc: object) -> None:
        self.path.unlink(missing_ok=True)

    def _holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or "0") or None
        except (OSError, ValueError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def dumps_canonical(payload: object) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
