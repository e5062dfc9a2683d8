"""Release and update commands: ``sonofed vendor validate|release|repo-init|publish|
rotate-key|refresh-timestamp|repo-status|serve`` and ``sonofed console provision|update|
rollback|status``.

Heavy modules are imported inside the handlers; the console's handlers never import torch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from sonofed._output import UserError, add_user_errors, handler, print_json

DEFAULT_PARAMS = Path("params.yaml")


def _release_errors() -> None:
    from models.exceptions import ModelError
    from release.exceptions import ReleaseError

    add_user_errors(ReleaseError, ModelError)


def _release_params(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the params file ({e})") from e
    return data.get("release") or {}


def active_model_path(console_dir: Path) -> tuple[Path, str]:
    """The model bundle of a console folder's active slot (for ``console analyze --dir``),
    after checking the slot against its ``release.json``.

    Args:
        console_dir: a provisioned console folder.

    Returns:
        The active release's model bundle folder, and the release's version.

    Raises:
        UserError: the folder is not a console, has no model yet, or its active model's files
            differ from the release manifest (a changed model is never run).
    """
    from release.exceptions import ConsoleError, ReleaseError
    from release.manifest import verify_release
    from release.slots import ConsoleFolder

    try:
        folder = ConsoleFolder(console_dir)
        release = folder.active_release()
        manifest = verify_release(release)
    except ConsoleError as e:
        raise UserError(str(e)) from e
    except ReleaseError as e:
        raise UserError(
            f"{release}: the active model does not match its release.json, so it is not run "
            f"({e}); run `sonofed console rollback --dir {console_dir}` or update again"
        ) from e
    return folder.active_model(), manifest.version


# --- vendor ----------------------------------------------------------------------------------


@handler
def _validate(args: argparse.Namespace) -> int:
    from data_registry.testset import verify_pinned
    from release.gate_report import summary_text
    from release.gates import validate, write_validation
    from release.protocol import load_protocol

    _release_errors()
    verify_pinned(args.testset, args.testset_seal, seal=False)  # a re-sealed rewrite is refused
    protocol = load_protocol(args.params)
    result = validate(
        args.candidate, args.testset, protocol, current=args.current, num_threads=args.threads
    )
    paths = write_validation(result, args.out)
    report = result.report
    if args.json:
        print_json(
            {
                "passed": report.passed,
                "failed": [g.name for g in report.failed],
                "report": str(paths["report"]),
                "gates": [g.model_dump() for g in report.gates],
            }
        )
    else:
        print(summary_text(report), end="")
        print(f"report: {paths['report']}", file=sys.stderr)
    return 0 if report.passed else 1


def _paths(text: str | None) -> list[Path]:
    return [Path(p) for p in (text or "").split(",") if p]


@handler
def _release(args: argparse.Namespace) -> int:
    from release.bundle import build_release

    _release_errors()
    params = _release_params(args.params)
    manifest = build_release(
        args.candidate,
        args.gate_report,
        args.out,
        version=args.version,
        min_console_version=args.min_console_version or params.get("min_console_version", "0.1.0"),
        console_models=args.console_model or params.get("console_models") or ["sonofed-us"],
        registries=_paths(args.registries),
        dvc_lock=args.dvc_lock,
        reference_cases=args.reference_cases or int(params.get("reference_cases", 3)),
    )
    if args.json:
        print_json(
            {"release": str(args.out), **manifest.model_dump(mode="json", exclude={"files"})}
        )
    else:
        parent = manifest.parent_version or "none (first release)"
        print(f"release {manifest.version} (parent {parent}) in {args.out}")
        print(f"  model card: {Path(args.out) / 'model-card.html'}")
        print(
            f"  for console models {', '.join(manifest.console_models)}, software >= "
            f"{manifest.min_console_version}"
        )
    return 0


def _expiry(params_path: Path):
    from release.repository import Expiry

    return Expiry.from_params(_release_params(params_path).get("expiry"))


@handler
def _repo_init(args: argparse.Namespace) -> int:
    from release.repository import UpdateRepository

    _release_errors()
    repo = UpdateRepository.init(
        args.repo, args.offline_keys, args.online_keys, _expiry(args.params)
    )
    root = repo.metadata_dir / "root.json"
    print(f"repository {args.repo}: root v1 (2 of 3 root keys), targets, snapshot, timestamp")
    print(f"  offline keys (root, targets): {args.offline_keys}")
    print(f"  online keys (snapshot, timestamp): {args.online_keys}")
    print(f"  provision consoles with {root}")
    return 0


@handler
def _publish(args: argparse.Namespace) -> int:
    import tempfile

    from release.bundle import write_archive
    from release.layout import archive_name
    from release.manifest import verify_release
    from release.repository import UpdateRepository, load_stores

    _release_errors()
    params = _release_params(args.params)
    expiry = _expiry(args.params)
    if args.init and not (Path(args.repo) / "metadata" / "timestamp.json").exists():
        UpdateRepository.init(args.repo, args.offline_keys, args.online_keys, expiry)
    repo = UpdateRepository(args.repo)
    offline, online = load_stores(args.offline_keys, args.online_keys)
    assert offline is not None
    manifest = verify_release(args.release)
    channel = args.channel or params.get("channel", "stable")
    rollout = args.rollout if args.rollout is not None else int(params.get("rollout_percent", 100))
    with tempfile.TemporaryDirectory() as scratch:
        archive = write_archive(args.release, Path(scratch) / archive_name(manifest.version))
        size = archive.stat().st_size
        target = repo.publish(
            archive,
            channel=channel,
            rollout_percent=rollout,
            offline=offline,
            online=online,
            expiry=expiry,
        )
    summary = {
        "target": target.path,
        "version": manifest.version,
        "channel": channel,
        "rollout_percent": rollout,
        "bytes": size,
        "sha256": target.hashes["sha256"],
        "timestamp_version": repo.timestamp().signed.version,
    }
    if args.json:
        print_json(summary)
    else:
        print(f"published {target.path} ({size} bytes) to channel {channel} at {rollout} %")
        print(
            f"  timestamp v{summary['timestamp_version']}; root: {repo.metadata_dir / 'root.json'}"
        )
    return 0


@handler
def _rotate_key(args: argparse.Namespace) -> int:
    from release.repository import UpdateRepository, load_stores

    _release_errors()
    offline, online = load_stores(args.offline_keys, args.online_keys)
    assert offline is not None
    result = UpdateRepository(args.repo).rotate_key(
        args.role, offline=offline, online=online, keyid=args.keyid, expiry=_expiry(args.params)
    )
    if args.json:
        print_json(result)
    else:
        print(
            f"{result['role']} key {result['old_keyid'][:12]}… replaced by "
            f"{result['new_keyid'][:12]}…; root is now v{result['root_version']}"
        )
    return 0


@handler
def _refresh_timestamp(args: argparse.Namespace) -> int:
    from datetime import timedelta

    from release.repository import UpdateRepository, load_stores

    _release_errors()
    _, online = load_stores(None, args.online_keys)
    expiry = _expiry(args.params)
    if args.hours is not None:
        expiry = type(expiry)(
            expiry.root, expiry.targets, expiry.snapshot, timedelta(hours=args.hours)
        )
    result = UpdateRepository(args.repo).refresh_timestamp(online, expiry)
    if args.json:
        print_json(result)
    else:
        print(
            f"timestamp v{result['timestamp_version']} valid until {result['timestamp_expires']} "
            f"(snapshot v{result['snapshot_version']} until {result['snapshot_expires']})"
        )
    return 0


@handler
def _repo_status(args: argparse.Namespace) -> int:
    from release.repository import UpdateRepository

    _release_errors()
    repo = UpdateRepository(args.repo)
    root, timestamp = repo.root().signed, repo.timestamp().signed
    summary = {
        "root_version": root.version,
        "root_expires": root.expires.isoformat(),
        "timestamp_version": timestamp.version,
        "timestamp_expires": timestamp.expires.isoformat(),
        "releases": repo.releases(),
    }
    if args.json:
        print_json(summary)
        return 0
    print(
        f"root v{root.version} (until {summary['root_expires']}), timestamp v{timestamp.version} "
        f"(until {summary['timestamp_expires']})"
    )
    for row in summary["releases"]:
        print(
            f"  {row.get('model_version')}  {row.get('channel')}  {row.get('rollout_percent')} %  "
            f"console >= {row.get('min_console_version')}  {row['path']}"
        )
    return 0


@handler
def _serve(args: argparse.Namespace) -> int:
    from release.server import UpdateServer

    _release_errors()
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UserError("give both --tls-cert and --tls-key, or neither")
    server = UpdateServer(
        args.repo,
        args.host,
        args.port,
        access_log=args.access_log,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    print(
        f"serving {args.repo} at {server.url}/ (access log: {args.access_log or 'stderr'})",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


# --- console ---------------------------------------------------------------------------------


@handler
def _provision(args: argparse.Namespace) -> int:
    from release.console_client import provision

    _release_errors()
    identity = provision(
        args.root, args.console_id, args.dir, console_model=args.console_model, channel=args.channel
    )
    print(
        f"console {identity.console_id} ({identity.console_model}, channel {identity.channel}, "
        f"rollout bucket {identity.rollout_bucket}) provisioned in {args.dir}"
    )
    return 0


@handler
def _update(args: argparse.Namespace) -> int:
    from release.console_client import Deadlines, update

    _release_errors()
    if min(args.metadata_deadline, args.download_deadline) <= 0:
        raise UserError("--metadata-deadline and --download-deadline must be positive seconds")
    deadlines = Deadlines(metadata_s=args.metadata_deadline, target_s=args.download_deadline)
    result = update(args.dir, args.server, deadlines=deadlines)
    if args.json:
        fields = ("previous", "installed", "action", "reason", "check", "target", "skipped")
        print_json({k: getattr(result, k) for k in fields})
    else:
        print(f"{result.action}: {result.reason}")
        if result.check:
            print(f"  refused by check: {result.check}")
    return 1 if result.action == "refused" else 0


@handler
def _rollback(args: argparse.Namespace) -> int:
    from release.console_client import rollback

    _release_errors()
    result = rollback(args.dir)
    if args.json:
        print_json(result)
    else:
        print(
            f"rolled back from {result['previous']} to {result['active']} (slot {result['slot']})"
        )
    return 0


@handler
def _status(args: argparse.Namespace) -> int:
    from release.console_client import status

    _release_errors()
    report = status(args.dir)
    if args.json:
        print_json(report)
        return 0 if report.get("active_ok", True) else 1
    print(
        f"console {report['console_id']} ({report['console_model']}), channel "
        f"{report['channel']}, bucket {report['rollout_bucket']}, software "
        f"{report['software_version']}, trusted root v{report['trusted_root_version']}"
    )
    active = report["active_version"] or "none"
    print(
        f"  active: {active} (slot {report['active_slot']})"
        + ("" if report.get("active_ok", True) else f" DAMAGED: {report.get('active_problem')}")
    )
    print(
        f"  previous: {report['previous_version'] or 'none'}; highest installed: "
        f"{report['highest_version'] or 'none'}"
    )
    last = report.get("last_update")
    if last:
        print(f"  last update {last['at']}: {last['action']} ({last['reason']})")
    return 0 if report.get("active_ok", True) else 1


# --- registration ----------------------------------------------------------------------------


def _keys(parser: argparse.ArgumentParser, *, offline: bool = True) -> None:
    if offline:
        parser.add_argument(
            "--offline-keys",
            type=Path,
            required=True,
            help="folder of the root and targets keys (kept offline)",
        )
    parser.add_argument(
        "--online-keys", type=Path, required=True, help="folder of the snapshot and timestamp keys"
    )


def register_vendor(commands: argparse._SubParsersAction) -> None:
    """Add the vendor's release commands to ``sonofed vendor``.

    Args:
        commands: the vendor role's sub-command parsers.
    """
    params = {"type": Path, "default": DEFAULT_PARAMS, "help": "params file (default params.yaml)"}

    p = commands.add_parser(
        "validate",
        help="apply the release gates to a candidate on the locked test set",
        description="Score the candidate (and the current release, if given) on the verified "
        "locked test set and apply the declared change protocol (`gates` in params.yaml). "
        "Writes gate-report.json/.md and evaluation.json; exit 1 when a gate fails.",
    )
    p.add_argument("--candidate", type=Path, required=True, help="candidate model bundle")
    p.add_argument("--testset", type=Path, required=True, help="the locked test set folder")
    p.add_argument(
        "--testset-seal",
        help="manifest hash the locked set must have (default: pinned by dvc.lock)",
    )
    p.add_argument("--current", type=Path, help="the current release (none: first release)")
    p.add_argument("--out", type=Path, required=True, help="folder for the gate report")
    p.add_argument("--params", **params)
    p.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    p.add_argument("--json", action="store_true", help="print the verdict as JSON")
    p.set_defaults(handler=_validate)

    p = commands.add_parser(
        "release",
        help="build a release bundle from a candidate that passed the gates",
        description="Model bundle with version and parent, lineage, model card, gate report "
        "and self-test reference cases, sealed by release.json.",
    )
    p.add_argument("--candidate", type=Path, required=True, help="candidate model bundle")
    p.add_argument("--gate-report", type=Path, required=True, help="its passing gate-report.json")
    p.add_argument("--out", type=Path, required=True, help="release folder to create")
    p.add_argument("--version", help="semantic version (default: the candidate's)")
    p.add_argument("--min-console-version", help="oldest console software (default: params)")
    p.add_argument("--console-model", action="append", help="console model (repeatable)")
    p.add_argument("--registries", metavar="REG1,REG2,…", help="site registries, for lineage")
    p.add_argument("--dvc-lock", type=Path, default=Path("dvc.lock"), help="for registry hashes")
    p.add_argument("--reference-cases", type=int, help="self-test cases (default: params)")
    p.add_argument("--params", **params)
    p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    p.set_defaults(handler=_release)

    p = commands.add_parser("repo-init", help="create the TUF repository and its keys")
    p.add_argument("--repo", type=Path, required=True, help="repository folder (served)")
    _keys(p)
    p.add_argument("--params", **params)
    p.set_defaults(handler=_repo_init)

    p = commands.add_parser(
        "publish",
        help="sign a release into the TUF repository (or change its rollout)",
        description="Pack the release folder, add it as a target with its custom fields, and "
        "sign new targets (offline key), snapshot and timestamp (online keys).",
    )
    p.add_argument("--release", type=Path, required=True, help="release folder")
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    _keys(p)
    p.add_argument("--channel", help="release channel (default: params)")
    p.add_argument("--rollout", type=int, help="rollout percentage 0-100 (default: params)")
    p.add_argument("--init", action="store_true", help="create the repository if absent")
    p.add_argument("--params", **params)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_publish)

    p = commands.add_parser("rotate-key", help="replace a role's signing key (new root version)")
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    _keys(p)
    p.add_argument("--role", required=True, choices=("root", "targets", "snapshot", "timestamp"))
    p.add_argument("--keyid", help="which root key (a key id prefix; root has three)")
    p.add_argument("--params", **params)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_rotate_key)

    p = commands.add_parser("refresh-timestamp", help="re-sign the timestamp (online key only)")
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    _keys(p, offline=False)
    p.add_argument("--hours", type=float, help="validity in hours (default: params)")
    p.add_argument("--params", **params)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_refresh_timestamp)

    p = commands.add_parser("repo-status", help="list the repository's releases and expiries")
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=_repo_status)

    p = commands.add_parser("serve", help="serve the repository over HTTP with an access log")
    p.add_argument("--repo", type=Path, required=True, help="repository folder")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free)")
    p.add_argument("--host", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--access-log", type=Path, help="append the access log here (default stderr)")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve HTTPS")
    p.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    p.set_defaults(handler=_serve)


def register_console(commands: argparse._SubParsersAction) -> None:
    """Add the console's update commands to ``sonofed console``.

    Args:
        commands: the console role's sub-command parsers.
    """
    p = commands.add_parser("provision", help="install the trusted TUF root and this console's id")
    p.add_argument("--root", type=Path, required=True, help="the repository's root.json")
    p.add_argument("--console-id", required=True, help="this console's unique id")
    p.add_argument("--dir", type=Path, required=True, help="console folder to create")
    p.add_argument(
        "--console-model", default="sonofed-us", help="hardware model (default sonofed-us)"
    )
    p.add_argument("--channel", default="stable", help="release channel (default stable)")
    p.set_defaults(handler=_provision)

    p = commands.add_parser(
        "update",
        help="pull, verify, self-test and install the newest release for this console",
        description="Exit 0 when installed or up to date, 1 when an update was refused (the "
        "console keeps its model). --json prints previous, installed, action, reason, check.",
    )
    p.add_argument("--server", required=True, help="update server URL, e.g. http://127.0.0.1:8765")
    p.add_argument("--dir", type=Path, required=True, help="console folder")
    p.add_argument(
        "--metadata-deadline",
        type=float,
        default=60.0,
        metavar="S",
        help="total seconds allowed per metadata file (default 60)",
    )
    p.add_argument(
        "--download-deadline",
        type=float,
        default=900.0,
        metavar="S",
        help="total seconds allowed for the release download (default 900)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_update)

    p = commands.add_parser("rollback", help="switch back to the previous model")
    p.add_argument("--dir", type=Path, required=True, help="console folder")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(handler=_rollback)

    p = commands.add_parser("status", help="identity, installed models, trust and last update")
    p.add_argument("--dir", type=Path, required=True, help="console folder")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(handler=_status)
