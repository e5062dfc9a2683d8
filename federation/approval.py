"""A hospital runs only the Flower apps it approved.

Flower's own check (``flower-supernode --trusted-entities``) accepts a FAB only when its
``verifications`` carry a signature of a trusted key. In Flower 1.42 only the Flower Hub fills
them (``flwr/superlink/servicer/control/control_handlers.py``: ``_get_remote_fab`` and
``add_app`` download the FAB and its signatures from the hosted platform); a FAB the vendor
sends with ``flwr run`` arrives with empty ``verifications``, and a SuperNode with trusted
entities refuses it as "not supported by the connected SuperLink". A self-hosted federation
cannot use it, so a hospital checks the FAB's hash itself:

- the hospital approves the sha256 of an app bundle (:func:`approve`), from the vendor's
  announcement or by building the reviewed source (:func:`federation.deployment.fab_hash`);
- its SuperNode runs with ``--isolation process``: it starts no app code itself;
- the hospital's executor (:func:`executor_main`, Flower's ``flower-superexec``) launches
  ``sonofed-clientapp`` (:func:`clientapp_main`) instead of ``flwr-clientapp`` for each task;
- ``sonofed-clientapp`` is Flower's ``flwr-clientapp`` whose first step, installing the FAB it
  pulled, first compares the sha256 of the FAB's bytes with the approved list
  (:func:`check_fab`). An unapproved FAB is never unpacked or imported; the task ends with an
  error reply that names only the hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import sys
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.files import write_atomic
from federation.exceptions import AppApprovalError

__all__ = [
    "APPROVED_ENV",
    "ApprovedApp",
    "ApprovedApps",
    "approve",
    "check_fab",
    "clientapp_command",
    "executor_command",
    "load_approved",
]

APPROVED_ENV = "SONOFED_APPROVED_APPS"
"""Environment variable naming the approved-apps file for ``sonofed-clientapp``."""
_HEX = re.compile(r"^[0-9a-f]{64}$")


class ApprovedApp(BaseModel):
    """One approved app bundle."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    note: str = ""
    approved_at: str = ""


class ApprovedApps(BaseModel):
    """A hospital's ``approved-apps.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    approved: tuple[ApprovedApp, ...] = ()

    def hashes(self) -> set[str]:
        """The approved sha256 values."""
        return {app.sha256 for app in self.approved}


def load_approved(path: Path) -> ApprovedApps:
    """Read an approved-apps file.

    Raises:
        AppApprovalError: missing or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise AppApprovalError(
            f"{path}: no approved-apps file; approve the vendor's app first with "
            "`sonofed hospital approve-app --fab-sha256 HASH` (or --source CHECKOUT)"
        )
    try:
        return ApprovedApps.model_validate(json.loads(path.read_text()))
    except (ValueError, ValidationError) as e:
        first = str(e).splitlines()[0]
        raise AppApprovalError(
            f"{path}: not an approved-apps file (expected {{'approved': [{{'sha256': 64 hex "
            f"digits, 'note': text}}]}}): {first}"
        ) from e


def approve(path: Path, sha256: str, *, note: str = "") -> ApprovedApps:
    """Add ``sha256`` to the approved-apps file at ``path`` (created when missing).

    Raises:
        AppApprovalError: ``sha256`` is not 64 hex digits, or the file is malformed.
    """
    digest = sha256.strip().lower()
    if not _HEX.match(digest):
        raise AppApprovalError(f"--fab-sha256 {sha256!r}: expected 64 hex digits")
    current = load_approved(path) if Path(path).is_file() else ApprovedApps()
    if digest in current.hashes():
        return current
    when = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    updated = ApprovedApps(approved=(*current.approved, ApprovedApp(sha256=digest, note=note,
                                                                    approved_at=when)))  # fmt: skip
    write_atomic(Path(path), (updated.model_dump_json(indent=1) + "\n").encode())
    return updated


def check_fab(content: bytes, approved_file: Path) -> str:
    """The sha256 of a FAB's bytes, when the approved-apps file lists it.

    Raises:
        AppApprovalError: not approved (or the file is missing/malformed).
    """
    digest = hashlib.sha256(content).hexdigest()
    if digest not in load_approved(approved_file).hashes():
        # the message travels to the vendor in the error reply: the hash only, no local path
        raise AppApprovalError(
            f"refused a Flower app with FAB sha256 {digest}: not approved by this hospital; "
            "none of its code was unpacked or run"
        )
    return digest


def executor_command(runtime_api_address: str, approved_file: Path) -> list[str]:
    """The hospital's executor for a SuperNode run with ``--isolation process``."""
    return [
        sys.executable, "-m", "federation.approval", "--approved-apps",
        str(Path(approved_file).resolve()), "--runtime-api-address", runtime_api_address,
        "--insecure",
    ]  # fmt: skip


def clientapp_command() -> str:
    """The ``sonofed-clientapp`` executable beside this interpreter."""
    candidate = Path(sys.executable).parent / "sonofed-clientapp"
    if not candidate.exists():
        raise AppApprovalError(
            f"{candidate}: missing; reinstall sonofed (`make setup`) so its scripts exist"
        )
    return str(candidate)


def clientapp_main() -> None:
    """``sonofed-clientapp``: Flower's ``flwr-clientapp`` that installs only approved FABs."""
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp
    from flwr.supernode.runtime import run_clientapp as runtime

    approved = os.environ.get(APPROVED_ENV)
    install = runtime.install_from_fab

    def install_approved(content: bytes, *args, **kwargs):
        if not approved:
            raise AppApprovalError(f"{APPROVED_ENV} is not set: no app is approved")
        try:
            digest = check_fab(content, Path(approved))
        except AppApprovalError as e:
            print(f"sonofed: {e} (approved list: {approved})", file=sys.stderr, flush=True)
            raise
        print(f"sonofed: running approved app FAB sha256 {digest}", file=sys.stderr, flush=True)
        return install(content, *args, **kwargs)

    runtime.install_from_fab = install_approved
    flwr_clientapp()


def executor_main(argv: list[str] | None = None) -> None:
    """The hospital's executor: Flower's ``flower-superexec`` launching ``sonofed-clientapp``.

    ``--approved-apps FILE`` is consumed here (exported as :data:`APPROVED_ENV`); the other
    arguments go to ``flower-superexec``.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if "--approved-apps" not in args or args.index("--approved-apps") + 1 >= len(args):
        sys.exit("--approved-apps FILE is required")
    at = args.index("--approved-apps")
    approved = Path(args[at + 1])
    del args[at : at + 2]
    try:
        load_approved(approved)
        command = clientapp_command()
    except AppApprovalError as e:
        sys.exit(f"error: {e}")
    os.environ[APPROVED_ENV] = str(approved.resolve())
    from flwr.supercore import constant
    from flwr.supercore.cli.flower_superexec import flower_superexec

    constant.TASK_TYPE_TO_COMMAND[constant.TaskType.CLIENT_APP] = command
    sys.argv = ["flower-superexec", *args]
    flower_superexec()


if __name__ == "__main__":
    executor_main()
