"""The console's update client: provision, update, roll back, report status.

An update runs python-tuf's client workflow (:class:`tuf.ngclient.Updater`: root chain,
timestamp, snapshot, targets, with its rollback, freeze and signature checks), chooses the
newest release this console may take, downloads it (length and sha256 checked against the
signed targets metadata), unpacks it next to the running model, checks its manifest and
compatibility, runs its self-test, and only then switches (:mod:`release.slots`).

Every download has a total deadline (:mod:`release._fetch`), so a server that trickles bytes
cannot hold an update for longer than that. The refresh and the download run under the
update lock only; the console lock, which ``rollback`` needs, is taken just for the install and
the switch, so a rollback never waits behind a download.

Which release: in this console's channel, newer than anything it ever installed (anti-rollback),
for its hardware model, needing no newer console software, and rolled out to its bucket
(``sha256(console id) mod 100 < rollout percent``). Every refusal names its check.

No torch is imported here.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Literal

import urllib3.exceptions
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization import DeserializationError
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

from data_registry.files import write_atomic
from release import semver
from release._faults import crashpoint
from release._fetch import METADATA_DEADLINE_S, TARGET_DEADLINE_S, DeadlineFetcher
from release.exceptions import (
    ConsoleBusyError,
    ConsoleError,
    DownloadFailedError,
    InstallError,
    MetadataRefusedError,
    ReleaseError,
    TargetIntegrityError,
    UpdateError,
)
from release.layout import DEFAULT_CHANNEL, DEFAULT_CONSOLE_MODEL
from release.manifest import TargetCustom, verify_release
from release.selftest import SelfTestResult, run_self_test
from release.slots import IDENTITY, TRUSTED_ROOT, TUF_DIR, ConsoleFolder, ConsoleIdentity

FALLBACK_SOFTWARE_VERSION = "0.1.0"
INSTALL_WAIT_S = 120.0
"""How long a finished download waits for a running rollback before installing."""
Action = Literal["installed", "up-to-date", "refused"]


def console_software_version() -> str:
    """The running console software's version (the installed ``sonofed`` distribution)."""
    try:
        return importlib_metadata.version("sonofed")
    except importlib_metadata.PackageNotFoundError:
        return FALLBACK_SOFTWARE_VERSION


def _load_root(data: bytes, source: str) -> Metadata[Root]:
    try:
        md = Metadata[Root].from_bytes(data)
    except DeserializationError as e:
        raise ConsoleError(f"{source}: not TUF root metadata ({e})") from e
    if md.signed.type != Root.type:
        raise ConsoleError(f"{source}: holds {md.signed.type} metadata, not root")
    try:
        md.signed.verify_delegate(Root.type, md.signed_bytes, md.signatures)
    except tuf_errors.UnsignedMetadataError as e:
        raise ConsoleError(f"{source}: the root is not signed by its own threshold ({e})") from e
    return md


def provision(
    root_file: Path,
    console_id: str,
    folder: Path,
    *,
    console_model: str = DEFAULT_CONSOLE_MODEL,
    channel: str = DEFAULT_CHANNEL,
) -> ConsoleIdentity:
    """Install the trusted root and this console's identity into a new console folder.

    Args:
        root_file: the repository's root metadata, obtained out of band (factory image).
        console_id: this console's unique id (decides its rollout bucket).
        folder: the console folder (created; must not be provisioned already).
        console_model: the console hardware model.
        channel: the release channel it follows.

    Returns:
        The identity written.

    Raises:
        ConsoleError: the folder is already provisioned, or the root is invalid.
    """
    folder = Path(folder)
    if (folder / IDENTITY).exists():
        raise ConsoleError(f"{folder}: already provisioned; a console's trust is never reset")
    try:
        data = Path(root_file).read_bytes()
    except OSError as e:
        raise ConsoleError(f"{root_file}: cannot read the root metadata ({e})") from e
    _load_root(data, str(root_file))
    try:
        identity = ConsoleIdentity(
            console_id=console_id,
            console_model=console_model,
            channel=channel,
            provisioned_at=datetime.now(UTC).replace(microsecond=0),
            root_sha256=hashlib.sha256(data).hexdigest(),
        )
    except ValueError as e:
        raise ConsoleError(f"invalid console identity: {e}") from e
    (folder / TUF_DIR).mkdir(parents=True, exist_ok=True)
    write_atomic(folder / TRUSTED_ROOT, data)
    write_atomic(folder / IDENTITY, identity.model_dump_json(indent=2).encode())  # commit point
    return identity


@dataclass(frozen=True)
class Skipped:
    """A newer release this console did not take, and the check that excluded it."""

    version: str
    path: str
    check: str
    reason: str


@dataclass(frozen=True)
class Choice:
    """The outcome of :func:`choose_target`.

    Attributes:
        path: the target to install, or None.
        custom: its custom fields.
        skipped: newer releases excluded, newest first.
    """

    path: str | None
    custom: TargetCustom | None
    skipped: list[Skipped] = field(default_factory=list)


def choose_target(
    targets: Mapping[str, TargetFile],
    identity: ConsoleIdentity,
    software: str,
    floor: str | None,
) -> Choice:
    """The newest release this console may install (pure; no I/O).

    Args:
        targets: the verified targets metadata's targets.
        identity: this console.
        software: this console's software version.
        floor: the highest version ever installed here (None before the first install).

    Returns:
        The chosen target (or none) and the newer releases skipped with their checks.
    """
    floor_version = semver.parse(floor) if floor else None
    candidates = []
    skipped = []
    for path, target in targets.items():
        raw = target.custom if isinstance(target.custom, dict) else {}
        if raw.get("channel") != identity.channel:
            continue
        try:
            custom = TargetCustom.model_validate(raw)
            version = semver.parse(custom.model_version)
            needs = semver.parse(custom.min_console_version)
        except (ValueError, ReleaseError) as e:
            skipped.append(Skipped(str(raw.get("model_version")), path, "custom-fields", str(e)))
            continue
        if floor_version is not None and not version > floor_version:
            continue
        if identity.console_model not in custom.console_models:
            reason = f"for console model(s) {', '.join(custom.console_models)}, this is {identity.console_model}"
            skipped.append(Skipped(custom.model_version, path, "console-model", reason))
        elif needs > semver.parse(software):
            reason = f"needs console software >= {custom.min_console_version}, this runs {software}"
            skipped.append(Skipped(custom.model_version, path, "console-software", reason))
        elif identity.rollout_bucket >= custom.rollout_percent:
            reason = (
                f"rolled out to {custom.rollout_percent} % of consoles; "
                f"this console's bucket is {identity.rollout_bucket}"
            )
            skipped.append(Skipped(custom.model_version, path, "rollout", reason))
        else:
            candidates.append((version, path, custom))
    skipped.sort(key=lambda s: _sort_key(s.version), reverse=True)
    if not candidates:
        return Choice(None, None, skipped)
    version, path, custom = max(candidates, key=lambda c: c[0])
    return Choice(path, custom, [s for s in skipped if _sort_key(s.version) > version])


def _sort_key(text: str) -> semver.SemVer:
    try:
        return semver.parse(text)
    except ReleaseError:
        return semver.SemVer(0, 0, 0, ("invalid",))


# --- mapping python-tuf's errors to the console's checks ----------------------------------------


def _refusal(error: Exception, stage: str) -> UpdateError:
    """The console's error for a python-tuf or I/O exception (caller raises it ``from``)."""
    if isinstance(error, tuf_errors.BadVersionNumberError):
        return MetadataRefusedError(
            f"{stage}: older metadata was served: {error}", "metadata-rollback"
        )
    if isinstance(error, tuf_errors.ExpiredMetadataError):
        return MetadataRefusedError(f"{stage}: metadata has expired: {error}", "metadata-expired")
    if isinstance(error, tuf_errors.UnsignedMetadataError):
        return MetadataRefusedError(
            f"{stage}: metadata not signed by the trusted keys: {error}", "metadata-signature"
        )
    if isinstance(
        error, tuf_errors.LengthOrHashMismatchError | tuf_errors.DownloadLengthMismatchError
    ):
        check = "target-integrity" if stage == "download" else "metadata-integrity"
        return TargetIntegrityError(
            f"{stage}: length or hash differs from the signed metadata: {error}", check
        )
    if isinstance(error, tuf_errors.SlowRetrievalError):
        return DownloadFailedError(f"{stage}: download too slow, given up: {error}")
    if isinstance(error, tuf_errors.DownloadHTTPError):
        return DownloadFailedError(f"{stage}: server answered HTTP {error.status_code}: {error}")
    if isinstance(error, tuf_errors.DownloadError | urllib3.exceptions.HTTPError):
        cause = error.__cause__ or error.__context__
        return DownloadFailedError(f"{stage}: download failed: {error} ({cause})")
    if isinstance(error, tuf_errors.RepositoryError):
        return MetadataRefusedError(f"{stage}: metadata refused: {error}", "metadata")
    if isinstance(error, OSError):
        return InstallError(f"{stage}: local write failed: {error}", "local-io")
    return MetadataRefusedError(f"{stage}: {type(error).__name__}: {error}", "metadata")


_TUF_ERRORS = (
    tuf_errors.RepositoryError,
    tuf_errors.DownloadError,
    urllib3.exceptions.HTTPError,  # raised while streaming a body (a connection cut midway)
    OSError,
    ValueError,
)


# --- update ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UpdateResult:
    """What ``sonofed console update`` reports.

    Attributes:
        previous: the active version before the update (None when nothing was installed).
        installed: the active version after it.
        action: ``installed``, ``up-to-date`` or ``refused``.
        reason: why, in words.
        check: the check that refused it (None unless refused).
        target: the release target considered, if any.
        skipped: newer releases this console did not take, with their checks.
    """

    previous: str | None
    installed: str | None
    action: Action
    reason: str
    check: str | None = None
    target: str | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass(frozen=True)
class Deadlines:
    """Total seconds allowed for one metadata file and for one release archive."""

    metadata_s: float = METADATA_DEADLINE_S
    target_s: float = TARGET_DEADLINE_S


def _updater(
    folder: ConsoleFolder, server: str, fetcher: FetcherInterface | None, deadlines: Deadlines
) -> Updater:
    base = server.rstrip("/")
    agent = f"sonofed-console/{console_software_version()} ({folder.identity.console_id})"
    fetcher = fetcher or DeadlineFetcher(
        f"{base}/targets/",
        metadata_deadline_s=deadlines.metadata_s,
        target_deadline_s=deadlines.target_s,
        user_agent=agent,
    )
    return Updater(
        metadata_dir=str(folder.tuf_dir),
        metadata_base_url=f"{base}/metadata/",
        target_dir=str(folder.downloads),
        target_base_url=f"{base}/targets/",
        fetcher=fetcher,
        bootstrap=folder.trusted_root(),
    )


def _verified_targets(updater: Updater, folder: ConsoleFolder) -> dict[str, TargetFile]:
    """The targets python-tuf just verified (its persisted ``targets.json``), re-confirmed one
    by one through :meth:`Updater.get_targetinfo`."""
    md = Metadata[Targets].from_file(str(folder.tuf_dir / "targets.json"))
    confirmed = {}
    for path in md.signed.targets:
        info = updater.get_targetinfo(path)
        if info is not None:
            confirmed[path] = info
    return confirmed


def _record(folder: ConsoleFolder, result: UpdateResult) -> None:
    """Keep the result as ``last_update`` (best effort: a full disk must not hide the result)."""
    state = folder.state()
    entry = {"at": datetime.now(UTC).replace(microsecond=0).isoformat(), **result.to_dict()}
    with contextlib.suppress(OSError):
        folder.save_state(state.model_copy(update={"last_update": entry}))


def update(
    folder_path: Path,
    server: str,
    *,
    software_version: str | None = None,
    fetcher: FetcherInterface | None = None,
    self_test: Callable[[Path], SelfTestResult] = run_self_test,
    deadlines: Deadlines | None = None,
) -> UpdateResult:
    """Refresh the TUF metadata, choose, download, install, self-test and switch.

    A refusal is a result (``action == "refused"`` with its ``check``), not an exception:
    the console keeps running its model either way. The metadata refresh and the download hold
    only the update lock; the console lock (shared with ``rollback``) is held for the install
    and the switch.

    Args:
        folder_path: the provisioned console folder.
        server: the update server's base URL (``http://127.0.0.1:8765``).
        software_version: this console's software version (default: the installed one).
        fetcher: a python-tuf fetcher (default: :class:`release._fetch.DeadlineFetcher`).
        self_test: runs a release's reference cases (default :func:`run_self_test`).
        deadlines: total seconds per metadata file and per target (default :class:`Deadlines`).

    Returns:
        The result, also recorded as ``last_update`` in the console state.

    Raises:
        NotProvisionedError: the folder is not a console.
        ConsoleBusyError: another update is running, or a rollback holds the console lock.
    """
    folder = ConsoleFolder(folder_path)
    software = software_version or console_software_version()
    with folder.updating():
        with folder.locked():
            folder.recover()
            state = folder.state()
        previous = state.slots[state.active].version if state.active else None
        try:
            result = _update(
                folder, server, software, fetcher, self_test, previous, deadlines or Deadlines()
            )
        except UpdateError as e:
            result = UpdateResult(previous, previous, "refused", str(e), e.check)
        except ConsoleBusyError as e:
            result = UpdateResult(previous, previous, "refused", str(e), "console-busy")
        except (ReleaseError, OSError) as e:  # e.g. a malformed manifest, a full disk
            result = UpdateResult(
                previous, previous, "refused", f"{type(e).__name__}: {e}", "install"
            )
        finally:
            folder.clear_downloads()
        with contextlib.suppress(ConsoleBusyError), folder.locked(wait_s=INSTALL_WAIT_S):
            _record(folder, result)
    return result


def _update(
    folder: ConsoleFolder,
    server: str,
    software: str,
    fetcher: FetcherInterface | None,
    self_test: Callable[[Path], SelfTestResult],
    previous: str | None,
    deadlines: Deadlines,
) -> UpdateResult:
    state = folder.state()
    try:
        updater = _updater(folder, server, fetcher, deadlines)
        updater.refresh()
        targets = _verified_targets(updater, folder)
    except _TUF_ERRORS as e:
        raise _refusal(e, "metadata") from e
    choice = choose_target(targets, folder.identity, software, state.highest_version)
    skipped = [asdict(s) for s in choice.skipped]
    if choice.path is None or choice.custom is None:
        blocking = [s for s in choice.skipped if s.check != "rollout"]
        if blocking:
            top = blocking[0]
            reason = f"release {top.version} refused: {top.reason}"
            return UpdateResult(previous, previous, "refused", reason, top.check, top.path, skipped)
        reason = (
            f"release {choice.skipped[0].version} not offered yet: {choice.skipped[0].reason}"
            if choice.skipped
            else f"no release newer than {state.highest_version or 'none'} in channel "
            f"{folder.identity.channel}"
        )
        return UpdateResult(previous, previous, "up-to-date", reason, None, None, skipped)
    info = targets[choice.path]
    folder.downloads.mkdir(parents=True, exist_ok=True)
    download = folder.downloads / Path(choice.path).name
    try:
        updater.download_target(info, filepath=str(download))
    except _TUF_ERRORS as e:
        raise _refusal(e, "download") from e
    crashpoint("downloaded")
    with folder.locked(wait_s=INSTALL_WAIT_S):  # a rollback may have run meanwhile
        current = folder.state()
        previous = current.slots[current.active].version if current.active else None
        record, after = folder.install(
            download,
            target_path=choice.path,
            target_sha256=info.hashes["sha256"],
            custom=choice.custom,
            software_version=software,
            self_test=self_test,
        )
    reason = f"installed {record.version} into slot {after.active}" + (
        f"; kept {previous} for rollback" if previous else ""
    )
    return UpdateResult(previous, record.version, "installed", reason, None, choice.path, skipped)


# --- rollback and status ---------------------------------------------------------------------


def rollback(folder_path: Path) -> dict[str, Any]:
    """Switch back to the previous model (verified and self-tested first).

    Args:
        folder_path: the console folder.

    Returns:
        ``previous`` (the version rolled back from) and ``active`` (the version now running).

    Raises:
        NoModelError: there is no previous model.
        ConsoleBusyError: an update is running.
        ReleaseError: the previous model fails verification or its self-test.
    """
    folder = ConsoleFolder(folder_path)
    with folder.locked():
        before = folder.state()
        after = folder.rollback()
    return {
        "previous": before.slots[before.active].version if before.active else None,
        "active": after.slots[after.active].version if after.active else None,
        "slot": after.active,
    }


def status(folder_path: Path, *, verify: bool = True) -> dict[str, Any]:
    """The console's identity, models, trust state and last update.

    Args:
        folder_path: the console folder.
        verify: also check the active release's files against its manifest.

    Returns:
        A JSON-ready dict.

    Raises:
        NotProvisionedError: the folder is not a console.
    """
    folder = ConsoleFolder(folder_path)
    state = folder.state()
    identity = folder.identity
    root_path = folder.tuf_dir / "root.json"
    try:
        root_version = (
            Metadata[Root]
            .from_bytes(root_path.read_bytes() if root_path.exists() else folder.trusted_root())
            .signed.version
        )
    except (OSError, DeserializationError):
        root_version = None
    active = state.slots.get(state.active) if state.active else None
    previous = state.slots.get(state.previous) if state.previous else None
    report: dict[str, Any] = {
        "console_id": identity.console_id,
        "console_model": identity.console_model,
        "channel": identity.channel,
        "rollout_bucket": identity.rollout_bucket,
        "software_version": console_software_version(),
        "trusted_root_version": root_version,
        "active_slot": state.active,
        "active_version": active.version if active else None,
        "active_model": str(folder.active_model()) if active else None,
        "previous_version": previous.version if previous else None,
        "highest_version": state.highest_version,
        "last_update": state.last_update,
    }
    if verify and active is not None:
        try:
            verify_release(folder.slot_dir(state.active))
            report["active_ok"] = True
        except ReleaseError as e:
            report["active_ok"] = False
            report["active_problem"] = str(e)
    return report
