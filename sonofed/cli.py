"""Entry point of the ``sonofed`` command.

Each role's sub-commands live in their own module and import their heavy dependencies lazily,
so ``sonofed console …`` never loads torch and ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sonofed import console, hospital, phantom, vendor
from sonofed._output import UserError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sonofed",
        description=(
            "Breast-ultrasound lesion analysis kept improving by federated learning. "
            "Research software, not a medical device."
        ),
    )
    roles = parser.add_subparsers(dest="role", required=True, metavar="ROLE")
    hospital.register(roles)
    vendor.register(roles)
    console.register(roles)
    phantom.register(roles)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UserError as e:
        print(f"sonofed: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("sonofed: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
