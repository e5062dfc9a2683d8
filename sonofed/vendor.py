"""``sonofed vendor …``: what the vendor runs — the locked test set, training, releases."""

from __future__ import annotations

import argparse
from pathlib import Path

from sonofed._output import UserError, handler, print_json


@handler
def _lock_testset(args: argparse.Namespace) -> int:
    from data_registry.testset import SourceSpec, lock_testset

    specs = [SourceSpec.parse(text) for text in args.source]
    attest = dict(item.partition("=")[::2] for item in args.assume_reference)
    specs = [
        SourceSpec(s.kind, s.path, attest.get(s.kind)) if s.kind in attest else s for s in specs
    ]
    for spec in specs:
        if not spec.path.is_dir():
            raise UserError(f"--source {spec.kind}={spec.path}: not a folder")
    summary = lock_testset(
        specs, args.out, fraction=args.fraction, seed=args.seed, progress=not args.json
    )
    if args.json:
        print_json(summary)
    else:
        print(f"locked {summary['cases']} cases in {summary['out']}")
        for site, counts in summary["per_site"].items():
            print(f"  {site}: {counts}")
        print(f"  manifest hash {summary['manifest_hash']}")
        print(f"  hospitals ingest with --exclude {Path(summary['out']) / 'exclusion.json'}")
    return 0


@handler
def _verify_testset(args: argparse.Namespace) -> int:
    from data_registry.exceptions import TestSetIntegrityError
    from data_registry.testset import verify_pinned

    try:
        digest = verify_pinned(args.dir, args.expected_hash)
    except TestSetIntegrityError as e:
        raise UserError(f"locked test set is NOT intact: {e}", exit_code=1) from e
    print(f"{args.dir}: intact ({digest})")
    return 0


def _registries(text: str) -> list[Path]:
    paths = [Path(p) for p in text.split(",") if p]
    missing = [str(p) for p in paths if not (p / "HEAD").is_file()]
    if missing:
        raise UserError(f"--sites: not a registry: {', '.join(missing)}")
    return paths


@handler
def _train_central(args: argparse.Namespace) -> int:
    from data_registry.testset import verify_pinned
    from models.central import load_train_config, train_central
    from models.exceptions import ModelError
    from sonofed._output import add_user_errors

    add_user_errors(ModelError)
    if args.testset is not None:
        verify_pinned(args.testset, args.testset_seal)  # a rewrite of labels + SEAL is refused
    config = load_train_config(
        args.params, epochs=args.epochs, seed=args.seed, max_minutes=args.max_minutes
    )
    metadata = train_central(
        _registries(args.sites),
        args.out,
        config=config,
        testset=args.testset,
        version=args.version,
        progress=not args.json,
    )
    test = metadata.metrics.get("locked_test", {}).get("pooled", {})
    if args.json:
        print_json({"bundle": str(args.out), "version": metadata.version, "locked_test": test})
        return 0
    print(f"bundle {args.out} (version {metadata.version})")
    if test:
        auc = test["auc"]
        print(
            f"  locked test: AUC {auc['auc']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}], "
            f"Dice {test.get('dice_mean', float('nan')):.3f}, ECE {test['ece']:.3f}"
        )
        for mode, row in test["thresholds"].items():
            print(
                f"  {mode}: sensitivity {row['sensitivity']:.3f}, specificity {row['specificity']:.3f}"
            )
        print(f"  report: {args.out / 'evaluation.html'}")
    return 0


def register(roles: argparse._SubParsersAction) -> None:
    from sonofed import federation_cli
    from sonofed.release_cli import register_vendor

    role = roles.add_parser("vendor", help="the vendor's commands (test set, training, release)")
    commands = role.add_subparsers(dest="command", required=True, metavar="COMMAND")

    lock = commands.add_parser(
        "lock-testset",
        help="take and seal the vendor-held test set",
        description="Take a patient- and duplicate-disjoint, label-stratified slice of each "
        "source, seal it (manifest of sha256s and labels) and write exclusion.json for hospitals.",
    )
    lock.add_argument(
        "--source",
        action="append",
        required=True,
        metavar="KIND=PATH",
        help="a source, e.g. busi=../shared/data/busi (repeatable)",
    )
    lock.add_argument("--out", type=Path, required=True, help="folder for the locked set")
    lock.add_argument(
        "--fraction", type=float, default=0.2, help="share of each site (default 0.2)"
    )
    lock.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    lock.add_argument(
        "--assume-reference",
        action="append",
        default=[],
        metavar="KIND=REF",
        help="reference standard a source vouches for where it states none, e.g. busi=biopsy",
    )
    lock.add_argument("--json", action="store_true", help="print the summary as JSON")
    lock.set_defaults(handler=_lock_testset)

    verify = commands.add_parser(
        "verify-testset",
        help="check the locked test set against its seal",
        description="Exit 0 when every byte, label and member is as sealed; 1 with the reason.",
    )
    verify.add_argument("dir", type=Path, help="the locked set's folder")
    verify.add_argument("--expected-hash", help="manifest hash recorded elsewhere (e.g. dvc.lock)")
    verify.set_defaults(handler=_verify_testset)

    central = commands.add_parser(
        "train-central",
        help="train the centrally trained baseline and write a model bundle",
        description="Train on the eligible lesions of the given registries (patient-disjoint "
        "validation split for early stopping, calibration and the three modes), export to ONNX "
        "and score the bundle on the locked test set.",
    )
    central.add_argument("--sites", required=True, metavar="REG1,REG2,…", help="site registries")
    central.add_argument("--testset", type=Path, help="the locked test set folder")
    central.add_argument(
        "--testset-seal",
        help="manifest hash the locked set must have (default: pinned by dvc.lock)",
    )
    central.add_argument("--out", type=Path, default=Path("runs/central"), help="bundle folder")
    central.add_argument("--epochs", type=int, help="training epochs (default: params.yaml)")
    central.add_argument("--max-minutes", type=float, help="stop after this much training time")
    central.add_argument("--seed", type=int, help="random seed (default: params.yaml)")
    central.add_argument("--version", default="1.0.0", help="semantic version of the bundle")
    central.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="params file (its `train` block)"
    )
    central.add_argument("--json", action="store_true", help="print the result as JSON")
    central.set_defaults(handler=_train_central)

    register_vendor(commands)
    federation_cli.register_vendor(commands)
