"""``sonofed phantom``: synthetic B-mode sites to run and test on without real data."""

from __future__ import annotations

import argparse
from pathlib import Path

from sonofed._output import UserError, handler


@handler
def _run(args: argparse.Namespace) -> int:
    from data_registry.phantom import generate_sites

    try:
        folders = generate_sites(
            args.out,
            sites=args.sites,
            cases=args.cases,
            seed=args.seed,
            sharpness=args.sharpness,
            progress=not args.quiet,
            batch=args.batch,
        )
    except ValueError as e:
        raise UserError(str(e)) from e
    for folder in folders:
        print(folder)
    return 0


def register(roles: argparse._SubParsersAction) -> None:
    parser = roles.add_parser(
        "phantom",
        help="generate synthetic ultrasound sites (a phantom)",
        description="Render K site folders of N synthetic B-mode cases each, importable with "
        "`sonofed hospital ingest --source phantom`.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the sites into")
    parser.add_argument("--sites", type=int, default=3, help="number of sites (default 3)")
    parser.add_argument("--cases", type=int, default=60, help="cases per site (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--sharpness",
        type=float,
        default=1.0,
        help="multiplier of the malignancy log-odds: 1 (default) keeps the BI-RADS lexicon's "
        "positive predictive values; above 1 pathology follows the visible terms more closely",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="1 (default): a first export; 2 or more: a later export of newly confirmed cases "
        "of new patients of the same sites (patient ids from (batch - 1) x 10000)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=_run)
