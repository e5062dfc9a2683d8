"""The TUF update repository (python-tuf metadata API, consistent snapshots).

Layout::

    REPO/metadata/N.root.json        every root version (consoles walk the chain)
    REPO/metadata/root.json          the newest root (what a console is provisioned with)
    REPO/metadata/N.targets.json     signed with the offline targets key
    REPO/metadata/N.snapshot.json    signed with the online snapshot key
    REPO/metadata/timestamp.json     signed with the online timestamp key (short expiry)
    REPO/targets/releases/<channel>/<sha256>.sonofed-lesion-<version>.tar.gz

Roles and keys: root 2 of 3 Ed25519 keys, targets, snapshot and timestamp one key each; root
and targets keys live in the offline key folder, snapshot and timestamp keys in the online one
(:mod:`release.keys`). Every change writes new versioned files first and replaces
``timestamp.json`` last, so a console reading at any moment sees one consistent state.

Each release target carries custom fields (:class:`TargetCustom`): model version, minimum
console software, console models, channel and rollout percentage.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from securesystemslib.signer import Signer
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization import DeserializationError
from tuf.api.serialization.json import JSONSerializer

from data_registry.files import fsync_dir, write_atomic
from release import semver
from release.exceptions import KeyStoreError, RepositoryStateError, VersionError
from release.keys import KeyStore, check_apart
from release.layout import archive_name
from release.manifest import TargetCustom, read_archive_manifest

METADATA = "metadata"
TARGETS = "targets"
ROOT_KEYS = 3
ROOT_THRESHOLD = 2
RELEASES_PREFIX = "releases"
_SERIALIZER = JSONSerializer(compact=False)


@dataclass(frozen=True)
class Expiry:
    """How long each role's metadata stays valid once signed."""

    root: timedelta = timedelta(days=365)
    targets: timedelta = timedelta(days=90)
    snapshot: timedelta = timedelta(days=7)
    timestamp: timedelta = timedelta(days=1)

    @classmethod
    def from_params(cls, block: Mapping[str, Any] | None) -> Expiry:
        """From ``release.expiry`` in params.yaml: ``{root_days, targets_days, snapshot_days,
        timestamp_hours}`` (missing keys keep their defaults)."""
        block = block or {}
        default = cls()
        return cls(
            root=timedelta(days=block.get("root_days", default.root.days)),
            targets=timedelta(days=block.get("targets_days", default.targets.days)),
            snapshot=timedelta(days=block.get("snapshot_days", default.snapshot.days)),
            timestamp=timedelta(hours=block.get("timestamp_hours", default.timestamp.days * 24)),
        )

    def of(self, role: str) -> timedelta:
        """The validity of a role's metadata."""
        return getattr(self, role)


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _bytes(md: Metadata) -> bytes:
    return md.to_bytes(_SERIALIZER)


def _sign(md: Metadata, signers: Sequence[Signer]) -> None:
    md.signatures.clear()
    for signer in signers:
        md.sign(signer, append=True)


class UpdateRepository:
    """A TUF repository folder on disk.

    Args:
        path: the repository folder (made by :meth:`init`).

    Raises:
        RepositoryStateError: the folder holds no repository.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.metadata_dir = self.path / METADATA
        self.targets_dir = self.path / TARGETS
        if not (self.metadata_dir / "timestamp.json").is_file():
            raise RepositoryStateError(f"{self.path}: not an update repository (run repo-init)")

    # --- reading -----------------------------------------------------------------------------

    def _read(self, name: str) -> Metadata:
        try:
            return Metadata.from_bytes((self.metadata_dir / name).read_bytes())
        except (OSError, DeserializationError) as e:
            raise RepositoryStateError(f"{self.path}: cannot read {name} ({e})") from e

    def root(self) -> Metadata[Root]:
        """The newest root metadata."""
        versions = [int(p.name.split(".")[0]) for p in self.metadata_dir.glob("*.root.json")]
        if not versions:
            raise RepositoryStateError(f"{self.path}: no root metadata")
        return self._read(f"{max(versions)}.root.json")

    def timestamp(self) -> Metadata[Timestamp]:
        """The current timestamp metadata."""
        return self._read("timestamp.json")

    def snapshot(self) -> Metadata[Snapshot]:
        """The snapshot the current timestamp names."""
        return self._read(f"{self.timestamp().signed.snapshot_meta.version}.snapshot.json")

    def targets(self) -> Metadata[Targets]:
        """The targets metadata the current snapshot names."""
        return self._read(f"{self.snapshot().signed.meta['targets.json'].version}.targets.json")

    def releases(self) -> list[dict[str, Any]]:
        """Every release target with its custom fields, newest version first."""
        rows = []
        for path, target in self.targets().signed.targets.items():
            custom = target.custom or {}
            rows.append({"path": path, "length": target.length, **custom})
        return sorted(
            rows, key=lambda r: semver.parse(r.get("model_version", "0.0.0")), reverse=True
        )

    # --- writing -----------------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.path / ".lock", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise RepositoryStateError(f"{self.path}: another command is changing it") from e
            yield

    def _signers(self, root: Root, role: str, store: KeyStore) -> list[Signer]:
        keyids = root.roles[role].keyids
        signers = store.signers(keyids)
        if len(signers) < root.roles[role].threshold:
            raise KeyStoreError(
                f"{store.folder}: holds {len(signers)} of the {role} keys the root trusts; "
                f"{root.roles[role].threshold} needed"
            )
        return signers

    def _write_versioned(self, md: Metadata, name: str, root: Root) -> None:
        try:
            root.verify_delegate(name, md.signed_bytes, md.signatures)
        except UnsignedMetadataError as e:
            raise RepositoryStateError(f"new {name} metadata does not verify: {e}") from e
        write_atomic(self.metadata_dir / f"{md.signed.version}.{name}.json", _bytes(md))

    def _new_timestamp(
        self,
        root: Root,
        online: KeyStore,
        snapshot: Metadata[Snapshot],
        expiry: Expiry,
        expires: datetime | None = None,
    ) -> Metadata[Timestamp]:
        try:
            version = self.timestamp().signed.version + 1
        except RepositoryStateError:
            version = 1
        timestamp = Metadata(
            Timestamp(
                version=version,
                expires=expires or _now() + expiry.timestamp,
                snapshot_meta=MetaFile.from_data(
                    snapshot.signed.version, _bytes(snapshot), ["sha256"]
                ),
            )
        )
        _sign(timestamp, self._signers(root, "timestamp", online))
        try:
            root.verify_delegate("timestamp", timestamp.signed_bytes, timestamp.signatures)
        except UnsignedMetadataError as e:
            raise RepositoryStateError(f"new timestamp metadata does not verify: {e}") from e
        write_atomic(self.metadata_dir / "timestamp.json", _bytes(timestamp))  # the commit point
        return timestamp

    def _new_snapshot(
        self, root: Root, online: KeyStore, targets_version: int, expiry: Expiry
    ) -> Metadata[Snapshot]:
        try:
            version = self.snapshot().signed.version + 1
        except RepositoryStateError:
            version = 1
        snapshot = Metadata(
            Snapshot(
                version=version,
                expires=_now() + expiry.snapshot,
                meta={"targets.json": MetaFile(targets_version)},
            )
        )
        _sign(snapshot, self._signers(root, "snapshot", online))
        self._write_versioned(snapshot, "snapshot", root)
        return snapshot

    def _write_root(self, root_md: Metadata[Root], trusted: Root | None) -> None:
        for verifier in filter(None, (trusted, root_md.signed)):
            try:
                verifier.verify_delegate("root", root_md.signed_bytes, root_md.signatures)
            except UnsignedMetadataError as e:
                raise RepositoryStateError(f"new root does not verify: {e}") from e
        data = _bytes(root_md)
        write_atomic(self.metadata_dir / f"{root_md.signed.version}.root.json", data)
        write_atomic(self.metadata_dir / "root.json", data)

    @classmethod
    def init(
        cls, path: Path, offline_keys: Path, online_keys: Path, expiry: Expiry | None = None
    ) -> UpdateRepository:
        """Create keys (3 root, 1 each for targets, snapshot, timestamp) and version 1 of
        every role.

        Args:
            path: the repository folder (created; must not hold a repository).
            offline_keys: new folder for the root and targets keys.
            online_keys: new folder for the snapshot and timestamp keys.
            expiry: metadata validity (defaults when None).

        Returns:
            The repository.

        Raises:
            RepositoryStateError: ``path`` already holds a repository.
            KeyStoreError: a key folder is not empty, or they are not kept apart.
        """
        expiry = expiry or Expiry()
        path = Path(path)
        if (path / METADATA / "timestamp.json").exists() or (
            path / METADATA / "1.root.json"
        ).exists():
            raise RepositoryStateError(f"{path}: already holds an update repository")
        check_apart(offline_keys, online_keys)
        if path.resolve() in (Path(offline_keys).resolve(), Path(online_keys).resolve()):
            raise KeyStoreError("keep the key folders outside the served repository")
        for keys in (offline_keys, online_keys):
            if Path(keys).resolve().is_relative_to(path.resolve()):
                raise KeyStoreError(f"{keys}: keys must not lie inside the served repository")
        offline = KeyStore.create(offline_keys, "offline")
        online = KeyStore.create(online_keys, "online")
        root = Root(expires=_now() + expiry.root, consistent_snapshot=True)
        root_signers = [offline.generate("root") for _ in range(ROOT_KEYS)]
        for signer in root_signers:
            root.add_key(signer.public_key, "root")
        root.roles["root"].threshold = ROOT_THRESHOLD
        root.add_key(offline.generate("targets").public_key, "targets")
        root.add_key(online.generate("snapshot").public_key, "snapshot")
        root.add_key(online.generate("timestamp").public_key, "timestamp")
        (path / METADATA).mkdir(parents=True, exist_ok=True)
        (path / TARGETS).mkdir(parents=True, exist_ok=True)
        repo = cls.__new__(cls)
        repo.path, repo.metadata_dir, repo.targets_dir = path, path / METADATA, path / TARGETS
        root_md = Metadata(root)
        _sign(root_md, root_signers)
        repo._write_root(root_md, None)
        targets = Metadata(Targets(expires=_now() + expiry.targets))
        _sign(targets, repo._signers(root, "targets", offline))
        repo._write_versioned(targets, "targets", root)
        snapshot = repo._new_snapshot(root, online, 1, expiry)
        repo._new_timestamp(root, online, snapshot, expiry)
        return cls(path)

    def publish(
        self,
        archive: Path,
        *,
        channel: str,
        rollout_percent: int,
        offline: KeyStore,
        online: KeyStore,
        expiry: Expiry | None = None,
        allow_older: bool = False,
    ) -> TargetFile:
        """Add a release archive as a target (or change the rollout of one already there).

        Args:
            archive: a release archive (:func:`release.bundle.write_archive`).
            channel: the channel (``stable``, ``pilot``, …).
            rollout_percent: share of consoles (by their rollout bucket) offered the release.
            offline: the offline key folder (targets key).
            online: the online key folder (snapshot and timestamp keys).
            expiry: metadata validity.
            allow_older: permit a version not newer than the channel's newest (consoles still
                never install it; for tests of that refusal).

        Returns:
            The signed target.

        Raises:
            RepositoryStateError: the path exists with other content, or the keys do not fit.
            VersionError: the version is not newer than the channel's newest.
            ReleaseIntegrityError: the archive has no readable manifest.
        """
        expiry = expiry or Expiry()
        manifest = read_archive_manifest(archive)
        path = f"{RELEASES_PREFIX}/{channel}/{archive_name(manifest.version)}"
        custom = TargetCustom(
            product=manifest.product,
            model_version=manifest.version,
            min_console_version=manifest.min_console_version,
            console_models=manifest.console_models,
            channel=channel,
            rollout_percent=rollout_percent,
        )
        with self._locked():
            root = self.root().signed
            targets = self.targets()
            target = TargetFile.from_file(path, str(archive), ["sha256"])
            target.unrecognized_fields["custom"] = custom.model_dump()
            existing = targets.signed.targets.get(path)
            if existing is not None and existing.hashes != target.hashes:
                raise RepositoryStateError(
                    f"{path} is already published with other content; release a new version"
                )
            if existing is None and not allow_older:
                newer = [
                    r["model_version"]
                    for r in self.releases()
                    if r.get("channel") == channel
                    and semver.parse(r["model_version"]) >= semver.parse(manifest.version)
                ]
                if newer:
                    raise VersionError(
                        f"{manifest.version} is not newer than {newer[0]} in channel {channel}"
                    )
            stored = self.targets_dir / RELEASES_PREFIX / channel
            stored.mkdir(parents=True, exist_ok=True)
            final = stored / f"{target.hashes['sha256']}.{archive_name(manifest.version)}"
            if not final.exists():
                temporary = stored / f".{final.name}.tmp"
                shutil.copyfile(archive, temporary)
                with open(temporary, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(temporary, final)
                fsync_dir(stored)
            targets.signed.targets[path] = target
            targets.signed.version += 1
            targets.signed.expires = _now() + expiry.targets
            _sign(targets, self._signers(root, "targets", offline))
            self._write_versioned(targets, "targets", root)
            snapshot = self._new_snapshot(root, online, targets.signed.version, expiry)
            self._new_timestamp(root, online, snapshot, expiry)
        return target

    def refresh_timestamp(
        self, online: KeyStore, expiry: Expiry | None = None, *, expires: datetime | None = None
    ) -> dict[str, Any]:
        """Sign a new timestamp (and a new snapshot when it would expire before it).

        Args:
            online: the online key folder.
            expiry: metadata validity.
            expires: the timestamp's expiry, overriding ``expiry`` (e.g. in the past, to test
                that consoles refuse frozen metadata).

        Returns:
            The new versions and expiry dates.

        Raises:
            KeyStoreError: the folder lacks the keys the root trusts.
        """
        expiry = expiry or Expiry()
        with self._locked():
            root = self.root().signed
            snapshot = self.snapshot()
            new_expiry = expires or _now() + expiry.timestamp
            if snapshot.signed.expires <= new_expiry:
                targets_version = snapshot.signed.meta["targets.json"].version
                snapshot = self._new_snapshot(root, online, targets_version, expiry)
            timestamp = self._new_timestamp(root, online, snapshot, expiry, expires=new_expiry)
        return {
            "timestamp_version": timestamp.signed.version,
            "timestamp_expires": timestamp.signed.expires.isoformat(),
            "snapshot_version": snapshot.signed.version,
            "snapshot_expires": snapshot.signed.expires.isoformat(),
        }

    def rotate_key(
        self,
        role: str,
        *,
        offline: KeyStore,
        online: KeyStore,
        keyid: str | None = None,
        expiry: Expiry | None = None,
    ) -> dict[str, Any]:
        """Replace one key of a role: a new root version trusts the new key instead of the old.

        The new root is signed by the old root keys (a threshold of the previous root) and by
        the new set, so consoles follow the chain. Metadata of the rotated role (and those
        below it) is re-signed; the old key moves into the key folder's ``retired/`` last.

        Args:
            role: ``root``, ``targets``, ``snapshot`` or ``timestamp``.
            offline: the offline key folder.
            online: the online key folder.
            keyid: which key to replace (required for root, which has three).
            expiry: metadata validity.

        Returns:
            The role, the old and new key ids and the new root version.

        Raises:
            RepositoryStateError: unknown role or key id.
            KeyStoreError: the folders lack keys the root trusts.
        """
        expiry = expiry or Expiry()
        if role not in ("root", "targets", "snapshot", "timestamp"):
            raise RepositoryStateError(f"unknown role {role!r}")
        store = offline if role in ("root", "targets") else online
        with self._locked():
            old_root_md = self.root()
            old_root = old_root_md.signed
            keyids = list(old_root.roles[role].keyids)
            if keyid is None and len(keyids) == 1:
                keyid = keyids[0]
            matches = [k for k in keyids if keyid is not None and k.startswith(keyid)]
            if len(matches) != 1:
                raise RepositoryStateError(
                    f"name one of the {role} keys to rotate (--keyid): {', '.join(keyids)}"
                )
            old_keyid = matches[0]
            old_root_signers = self._signers(old_root, "root", offline)
            new_signer = store.generate(role)  # stored before anything trusts it
            new_root = Metadata.from_bytes(old_root_md.to_bytes())
            new_root.signed.revoke_key(old_keyid, role)
            new_root.signed.add_key(new_signer.public_key, role)
            new_root.signed.version += 1
            new_root.signed.expires = _now() + expiry.root
            signers = {s.public_key.keyid: s for s in old_root_signers}
            signers |= {
                s.public_key.keyid: s for s in offline.signers(new_root.signed.roles["root"].keyids)
            }
            _sign(new_root, list(signers.values()))
            self._write_root(new_root, old_root)
            root = new_root.signed
            targets = self.targets()
            if role == "targets":
                targets.signed.version += 1
                targets.signed.expires = _now() + expiry.targets
                _sign(targets, self._signers(root, "targets", offline))
                self._write_versioned(targets, "targets", root)
            snapshot = self.snapshot()
            if role in ("targets", "snapshot"):
                snapshot = self._new_snapshot(root, online, targets.signed.version, expiry)
            self._new_timestamp(root, online, snapshot, expiry)
            store.retire(old_keyid)
        return {
            "role": role,
            "old_keyid": old_keyid,
            "new_keyid": new_signer.public_key.keyid,
            "root_version": root.version,
        }


def load_stores(offline: Path | None, online: Path) -> tuple[KeyStore | None, KeyStore]:
    """Open the key folders a command needs (offline may be absent for online-only work).

    Args:
        offline: the offline key folder, or None.
        online: the online key folder.

    Returns:
        ``(offline store or None, online store)``.

    Raises:
        KeyStoreError: a folder is unusable, or they are not kept apart.
    """
    if offline is not None:
        check_apart(offline, online)
    return (None if offline is None else KeyStore(offline, "offline")), KeyStore(online, "online")


def validate_custom(custom: Any) -> TargetCustom | None:
    """A target's custom fields as :class:`TargetCustom`, or None when absent or malformed."""
    try:
        return TargetCustom.model_validate(custom)
    except ValidationError:
        return None
