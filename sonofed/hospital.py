"""``sonofed hospital …``: what a hospital runs — register confirmed cases, see its registry."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sonofed._output import UserError, handler, print_json

SOURCES = ("busi", "bus_bra", "breast_lesions_usg", "phantom", "folder")
REFERENCES = ("biopsy", "surgery", "follow-up")


@handler
def _ingest(args: argparse.Namespace) -> int:
    from data_registry.exclusion import Exclusion
    from data_registry.importers import get_importer
    from data_registry.ingest import ingest
    from data_registry.registry import RegistrySettings
    from data_registry.schema import check_site_id
    from data_registry.testset import site_id_for

    if args.site_id is not None:
        check_site_id(args.site_id)  # before a single file of the export is read
    if not args.path.is_dir():
        raise UserError(f"--path {args.path}: not a folder")
    importer = get_importer(args.source)
    site_id = args.site_id or site_id_for(args.source, args.path)
    exclusion = Exclusion.load(args.exclude) if args.exclude else None
    candidates = importer(args.path, assume_reference=args.assume_reference)
    settings = None
    if args.patient_id_pattern or args.case_id_pattern:  # saved in the registry's settings.json
        settings = RegistrySettings.load(args.registry).updated(
            patient_id_pattern=args.patient_id_pattern, case_id_pattern=args.case_id_pattern
        )
    summary = ingest(
        candidates,
        args.registry,
        site_id=site_id,
        source=f"{args.source}:{args.path.name}",
        exclusion=exclusion,
        settings=settings,
        progress=not args.json and not args.quiet,
    )
    if exclusion is None:
        print(
            "warning: --no-exclude: the vendor's locked test cases (and their copies) were not "
            "kept out of training; any score on that test set would be inflated",
            file=sys.stderr,
        )
    if args.json:
        print_json(summary.model_dump(mode="json"))
        return 0
    dup = summary.duplicates
    print(f"site {summary.site_id}: version {summary.version}")
    print(
        f"  received {summary.received}, accepted {summary.accepted}, eligible {summary.eligible}"
    )
    print(
        f"  already present {summary.already_present} (updated {summary.updated}), "
        f"locked-test matches {summary.locked_test_matches}"
    )
    print(f"  duplicates: {dup.exact} exact, {dup.near} near, {len(dup.conflicting)} conflicting")
    for reason, count in sorted(summary.quarantined.items()):
        print(f"  quarantined {count}: {reason}")
    print(f"  eligible in registry: {summary.eligible_total}")
    for hint in summary.hints:
        print(f"  hint: {hint}")
    return 0


@handler
def _status(args: argparse.Namespace) -> int:
    from data_registry.registry import Registry

    status = Registry(args.registry).status()
    if args.json:
        print_json(status)
        return 0
    print(f"site {status['site_id']}: version {status['version']}, {status['cases']} cases")
    print(f"  by pathology: {status['by_pathology']}")
    print(f"  eligible: {status['eligible']} {status['eligible_by_pathology']}")
    print(f"  not eligible because: {status['ineligible_reasons']}")
    print(f"  quarantined: {status['quarantined']}")
    for row in status["history"]:
        print(
            f"  v{row['version']}: received {row['received']}, accepted {row['accepted']}, "
            f"eligible total {row['eligible_total']} ({row['content_hash'][:12]})"
        )
    return 0


def register(roles: argparse._SubParsersAction) -> None:
    from sonofed import federation_cli

    role = roles.add_parser("hospital", help="a hospital's commands (registry, training)")
    commands = role.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        help="validate a site's export and add it to the registry as a new version",
        description="Validate every case of an export: bad files are quarantined with a reason, "
        "duplicates grouped, locked test cases excluded, and a new registry version written.",
    )
    ingest.add_argument("--source", choices=SOURCES, required=True, help="kind of export")
    ingest.add_argument("--path", type=Path, required=True, help="folder of the export")
    ingest.add_argument("--registry", type=Path, required=True, help="the site's registry folder")
    ingest.add_argument("--site-id", help="site id (default: from the source)")
    exclude = ingest.add_mutually_exclusive_group(required=True)
    exclude.add_argument(
        "--exclude", type=Path, help="the vendor's exclusion.json of the locked test set"
    )
    exclude.add_argument(
        "--no-exclude",
        action="store_true",
        help="ingest without the exclusion list (warns: locked test cases could then train)",
    )
    ingest.add_argument(
        "--assume-reference",
        choices=REFERENCES,
        help="reference standard the site vouches for where the export states none",
    )
    for kind in ("patient", "case"):
        ingest.add_argument(
            f"--{kind}-id-pattern",
            metavar="REGEX",
            help=f"the site's {kind} pseudonym pattern (full match, e.g. 'P\\d{{6}}'); saved "
            "in the registry's settings.json and applied to every later ingest",
        )
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")
    ingest.add_argument("--quiet", action="store_true", help="no progress bar")
    ingest.set_defaults(handler=_ingest)

    status = commands.add_parser("status", help="counts, eligibility and version history")
    status.add_argument("--registry", type=Path, required=True, help="the site's registry folder")
    status.add_argument("--json", action="store_true", help="print as JSON")
    status.set_defaults(handler=_status)

    federation_cli.register_hospital(commands)
