"""The console's folder: identity, trusted root, two model slots (A/B) and one state pointer.

Layout::

    DIR/console.json        who this console is (id, hardware model, channel), from provisioning
    DIR/trusted-root.json   the TUF root it was provisioned with
    DIR/tuf/                python-tuf's metadata cache (its anti-rollback memory)
    DIR/state.json          which slot is active, what each slot holds, the highest version seen
    DIR/slots/a, DIR/slots/b  two release folders: the active one and the previous one
    DIR/slots/.staging      an update being unpacked and self-tested
    DIR/downloads/          verified downloads waiting to be unpacked
    DIR/.lock               held by install, switch and rollback
    DIR/.update.lock        held by an update from start to end (downloads included)

``state.json`` is the single commit point: it is replaced with ``os.replace`` after the new
release is unpacked, verified and self-tested, and a slot is listed in it only while complete.
The inactive slot (the previous model) is only overwritten after the new release passed its
self-test in the staging folder, so a failed update keeps both models. Killed at any moment,
the console starts from ``state.json`` with a complete, tested model.

No torch is imported here.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tarfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.files import fsync_dir, remove_tree, write_atomic
from release import semver
from release._faults import crashpoint
from release.exceptions import (
    ConsoleBusyError,
    IncompatibleReleaseError,
    InstallError,
    NoModelError,
    NotProvisionedError,
    ReleaseIntegrityError,
    SelfTestError,
    TargetIntegrityError,
)
from release.layout import MODEL_DIR
from release.manifest import ReleaseManifest, TargetCustom, verify_release
from release.selftest import SelfTestResult, run_self_test

SlotName = Literal["a", "b"]
SLOTS: tuple[SlotName, SlotName] = ("a", "b")
IDENTITY = "console.json"
TRUSTED_ROOT = "trusted-root.json"
STATE = "state.json"
TUF_DIR = "tuf"
SLOTS_DIR = "slots"
STAGING = ".staging"
DOWNLOADS = "downloads"
MAX_UNPACKED_BYTES = 2 << 30
"""Refuse archives that unpack to more than this (a decompression bomb)."""


class ConsoleIdentity(BaseModel):
    """``console.json``: written once at provisioning."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    console_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    console_model: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    channel: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    provisioned_at: datetime
    root_sha256: str

    @property
    def rollout_bucket(self) -> int:
        """This console's bucket in 0..99: a release at rollout p % reaches buckets below p."""
        digest = hashlib.sha256(f"sonofed-rollout:{self.console_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % 100


class SlotRecord(BaseModel):
    """A complete, self-tested release in a slot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str
    target_path: str
    target_sha256: str
    installed_at: datetime
    self_test: dict[str, Any]


class ConsoleState(BaseModel):
    """``state.json``: the one file that says which model the console runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    active: SlotName | None = None
    slots: dict[SlotName, SlotRecord] = {}
    highest_version: str | None = None
    last_update: dict[str, Any] | None = None

    @property
    def inactive(self) -> SlotName:
        """The slot an update installs into."""
        return "b" if self.active == "a" else "a"

    @property
    def previous(self) -> SlotName | None:
        """The inactive slot when it holds a complete release (the rollback target)."""
        return self.inactive if self.inactive in self.slots and self.active else None


class ConsoleFolder:
    """A provisioned console folder.

    Args:
        root: the folder.

    Raises:
        NotProvisionedError: it holds no ``console.json``.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        try:
            self.identity = ConsoleIdentity.model_validate_json((self.root / IDENTITY).read_bytes())
        except FileNotFoundError as e:
            raise NotProvisionedError(
                f"{self.root}: not a provisioned console (run `sonofed console provision`)"
            ) from e
        except ValidationError as e:
            raise NotProvisionedError(f"{self.root}/{IDENTITY}: invalid ({e})") from e

    # --- paths and state ---------------------------------------------------------------------

    @property
    def tuf_dir(self) -> Path:
        """python-tuf's metadata cache."""
        return self.root / TUF_DIR

    @property
    def downloads(self) -> Path:
        """Where verified downloads are kept until unpacked."""
        return self.root / DOWNLOADS

    def slot_dir(self, slot: SlotName) -> Path:
        """A slot's release folder."""
        return self.root / SLOTS_DIR / slot

    def trusted_root(self) -> bytes:
        """The provisioned root metadata (python-tuf's bootstrap)."""
        return (self.root / TRUSTED_ROOT).read_bytes()

    def state(self) -> ConsoleState:
        """The current state (empty before the first install).

        Raises:
            NotProvisionedError: ``state.json`` is unreadable.
        """
        path = self.root / STATE
        if not path.exists():
            return ConsoleState()
        try:
            return ConsoleState.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise NotProvisionedError(f"{path}: invalid console state ({e})") from e

    def save_state(self, state: ConsoleState) -> None:
        """Replace ``state.json`` atomically (the commit point of every change)."""
        write_atomic(self.root / STATE, state.model_dump_json(indent=2).encode())

    def active_release(self) -> Path:
        """The active slot's release folder.

        Raises:
            NoModelError: nothing is installed yet.
        """
        state = self.state()
        if state.active is None:
            raise NoModelError(
                f"{self.root}: no model installed yet (run `sonofed console update`)"
            )
        return self.slot_dir(state.active)

    def active_model(self) -> Path:
        """The active slot's model bundle (what ``console analyze`` loads)."""
        return self.active_release() / MODEL_DIR

    # --- locking and recovery ----------------------------------------------------------------

    @contextmanager
    def locked(self, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the console lock (install, switch and rollback); the kernel drops it if we die.

        Args:
            wait_s: how long to wait for it (0: refuse at once when it is held).

        Raises:
            ConsoleBusyError: another process holds it.
        """
        with _flock(self.root / ".lock", wait_s, f"{self.root}: an install or rollback is running"):
            yield

    @contextmanager
    def updating(self) -> Iterator[None]:
        """Hold the update lock (one update at a time; rollback does not need it).

        Raises:
            ConsoleBusyError: another update is running.
        """
        with _flock(self.root / ".update.lock", 0.0, f"{self.root}: another update is running"):
            yield

    def clear_downloads(self) -> None:
        """Remove the downloads folder's contents (call with the update lock held)."""
        if self.downloads.is_dir():
            for path in sorted(self.downloads.iterdir()):
                remove_tree(path)

    def recover(self) -> list[str]:
        """Remove what an interrupted update left behind (call with the lock held).

        Returns:
            What was removed, for the log.
        """
        state = self.state()
        removed = []
        slots = self.root / SLOTS_DIR
        for path in sorted(slots.iterdir()) if slots.is_dir() else []:
            if path.name not in state.slots:
                remove_tree(path)
                removed.append(str(path.relative_to(self.root)))
        if self.downloads.is_dir():
            for path in sorted(self.downloads.iterdir()):
                remove_tree(path)
                removed.append(str(path.relative_to(self.root)))
        return removed

    # --- installing --------------------------------------------------------------------------

    def install(
        self,
        archive: Path,
        *,
        target_path: str,
        target_sha256: str,
        custom: TargetCustom,
        software_version: str,
        self_test: Callable[[Path], SelfTestResult] = run_self_test,
    ) -> tuple[SlotRecord, ConsoleState]:
        """Unpack a verified download, check and self-test it, then switch to it atomically.

        Call with the lock held. On any failure the active model and the previous one are
        untouched and the staging folder is removed.

        Args:
            archive: the downloaded archive (already verified against the signed target).
            target_path: its TUF target path.
            target_sha256: its signed sha256.
            custom: the target's signed custom fields.
            software_version: this console's software version.
            self_test: runs the reference cases of a release folder.

        Returns:
            The new slot's record and the new state.

        Raises:
            InstallError: unpacking or writing failed, or the archive is unsafe.
            ReleaseIntegrityError: unpacked files differ from the release manifest.
            IncompatibleReleaseError: the release contents are not for this console.
            SelfTestError: the reference cases did not reproduce.
        """
        staging = self.root / SLOTS_DIR / STAGING
        remove_tree(staging)
        try:
            try:
                unpack(archive, staging)
            except OSError as e:
                raise InstallError(f"writing the release failed: {e}") from e
            crashpoint("extracted")
            try:
                manifest = verify_release(staging)
            except ReleaseIntegrityError as e:
                raise TargetIntegrityError(str(e), check="release-manifest") from e
            check_contents(manifest, custom, self.identity, software_version)
            result = self_test(staging)
            if not result.passed:
                problems = "; ".join(p for c in result.cases for p in c.problems)
                raise SelfTestError(f"release {manifest.version} failed its self-test: {problems}")
            crashpoint("self-tested")
            return self._switch(staging, manifest, target_path, target_sha256, result)
        except BaseException:
            remove_tree(staging)
            raise

    def _switch(
        self,
        staging: Path,
        manifest: ReleaseManifest,
        target_path: str,
        target_sha256: str,
        result: SelfTestResult,
    ) -> tuple[SlotRecord, ConsoleState]:
        state = self.state()
        slot = state.inactive
        if slot in state.slots:  # the previous model is about to be replaced: forget it first
            state = state.model_copy(
                update={"slots": {k: v for k, v in state.slots.items() if k != slot}}
            )
            self.save_state(state)
            crashpoint("forgot-previous")
        target = self.slot_dir(slot)
        try:
            remove_tree(target)
            os.replace(staging, target)
            fsync_dir(target.parent)
        except OSError as e:
            raise InstallError(f"moving the release into slot {slot} failed: {e}") from e
        crashpoint("moved-into-slot")
        record = SlotRecord(
            version=manifest.version,
            target_path=target_path,
            target_sha256=target_sha256,
            installed_at=datetime.now(UTC).replace(microsecond=0),
            self_test=result.to_dict(),
        )
        highest = state.highest_version
        if highest is None or semver.parse(manifest.version) > semver.parse(highest):
            highest = manifest.version
        new_state = state.model_copy(
            update={
                "active": slot,
                "slots": {**state.slots, slot: record},
                "highest_version": highest,
            }
        )
        self.save_state(new_state)  # the switch
        crashpoint("switched")
        return record, new_state

    def rollback(
        self, *, self_test: Callable[[Path], SelfTestResult] = run_self_test
    ) -> ConsoleState:
        """Make the previous model active again (call with the lock held).

        The previous slot is verified against its manifest and self-tested first. The highest
        version seen stays, so ``update`` will not reinstall the version rolled back from.

        Returns:
            The new state.

        Raises:
            NoModelError: there is no previous model.
            ReleaseIntegrityError: the previous slot's files changed.
            SelfTestError: the previous model no longer reproduces its reference cases.
        """
        state = self.state()
        previous = state.previous
        if previous is None:
            raise NoModelError(f"{self.root}: no previous model to roll back to")
        verify_release(self.slot_dir(previous))
        result = self_test(self.slot_dir(previous))
        if not result.passed:
            raise SelfTestError(
                f"the previous model ({state.slots[previous].version}) fails its self-test"
            )
        new_state = state.model_copy(update={"active": previous})
        self.save_state(new_state)
        return new_state


@contextmanager
def _flock(path: Path, wait_s: float, busy: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``, waiting up to ``wait_s`` seconds for it."""
    deadline = time.monotonic() + wait_s
    with open(path, "a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as e:
                if time.monotonic() >= deadline:
                    raise ConsoleBusyError(busy) from e
                time.sleep(0.05)
        yield


def check_contents(
    manifest: ReleaseManifest, custom: TargetCustom, identity: ConsoleIdentity, software: str
) -> None:
    """Check an unpacked release against the signed target and this console.

    Args:
        manifest: the release's own manifest.
        custom: the signed target's custom fields.
        identity: this console.
        software: this console's software version.

    Raises:
        IncompatibleReleaseError: versions disagree, or the release is for another console
            model or newer software.
    """
    if manifest.version != custom.model_version:
        raise IncompatibleReleaseError(
            f"the archive holds release {manifest.version}, the signed target says "
            f"{custom.model_version}",
            check="release-manifest",
        )
    if identity.console_model not in manifest.console_models:
        raise IncompatibleReleaseError(
            f"release {manifest.version} is for console model(s) "
            f"{', '.join(manifest.console_models)}, this console is {identity.console_model}",
            check="console-model",
        )
    if semver.parse(manifest.min_console_version) > semver.parse(software):
        raise IncompatibleReleaseError(
            f"release {manifest.version} needs console software >= {manifest.min_console_version}, "
            f"this console runs {software}",
            check="console-software",
        )


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts or name.startswith("/"):
        raise InstallError(f"unsafe path {name!r} in the release archive")
    return path


def _write_member(source: IO[bytes], dest: Path) -> None:
    """Copy one archive member to ``dest`` and flush it to disk."""
    with open(dest, "xb") as handle:
        shutil.copyfileobj(source, handle, 1 << 20)
        handle.flush()
        os.fsync(handle.fileno())


def unpack(archive: Path, dest: Path) -> None:
    """Unpack a release archive into a new folder: regular files and folders only.

    Args:
        archive: the verified archive.
        dest: the folder to create (must not exist).

    Raises:
        InstallError: a link, device, absolute or ``..`` path, or too many bytes.
        OSError: writing failed (disk full, I/O error).
    """
    dest.mkdir(parents=True)
    total = 0
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for index, member in enumerate(tar):
                relative = _safe_name(member.name)
                target = dest.joinpath(*relative.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise InstallError(f"{member.name}: only regular files may be in a release")
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise InstallError(
                        f"the release unpacks to more than {MAX_UNPACKED_BYTES} bytes"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                if source is None:
                    raise InstallError(f"{member.name}: cannot be read from the archive")
                _write_member(source, target)
                if index == 2:
                    crashpoint("mid-extract")
    except (tarfile.TarError, EOFError) as e:
        raise InstallError(f"the release archive is damaged: {e}") from e
    for folder in sorted({p.parent for p in dest.rglob("*")} | {dest}, reverse=True):
        fsync_dir(folder)
