"""``sonofed console …``: what an ultrasound console runs. Never imports torch."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path
from typing import Any

from sonofed._output import UserError, add_user_errors, handler

MODES = ("high-sensitivity", "high-accuracy", "high-specificity")


def _parse_seed(text: str) -> tuple[int, int]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y in pixels, got {text!r}") from None
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(
            f"expected X,Y in pixels as two finite numbers, got {text!r}"
        )
    return round(values[0]), round(values[1])


def _analyser(args: argparse.Namespace):
    from models.analysis import LesionAnalyser
    from models.exceptions import ModelError

    add_user_errors(ModelError)
    if (args.model is None) == (args.dir is None):
        raise UserError("give --model BUNDLE, or --dir CONSOLE_DIR to use its active model")
    release = None
    if args.model is None:  # the console's installed, signed release, verified just now
        from sonofed.release_cli import active_model_path

        args.model, release = active_model_path(args.dir)
    if not args.model.is_dir():
        raise UserError(f"--model {args.model}: no such bundle folder")
    return LesionAnalyser(args.model, num_threads=args.threads, release_version=release)


def _analyse_one(analyser, image_path: Path, seed, mode: str, case_id: str):
    """(report dict, image, mask) or raise a user-facing error naming the problem."""
    from data_registry.exceptions import ImageError
    from data_registry.images import read_grey
    from models.exceptions import InferenceInputError

    try:
        image = read_grey(image_path)
    except ImageError as e:
        raise UserError(f"{image_path}: {e.reason}: {e.detail}") from e
    try:
        analysis = analyser.analyze(image, seed, mode=mode, case_id=case_id)
    except InferenceInputError as e:
        raise UserError(f"{image_path}: {e}") from e
    return analysis, image


@handler
def _analyze(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.manifest is None):
        raise UserError("give either --image with --seed, or --manifest")
    analyser = _analyser(args)
    if args.manifest is not None:
        return _batch(analyser, args)
    if args.seed is None:
        raise UserError("--image needs --seed X,Y")
    from models.report import write_lesion_report

    analysis, image = _analyse_one(analyser, args.image, args.seed, args.mode, args.case_id)
    out = args.out or Path("runs/console") / args.case_id
    paths = write_lesion_report(
        out, image=image, mask=analysis.mask, seed=args.seed, result=analysis.report
    )
    report = json.loads(paths["json"].read_text())
    print(json.dumps(report, indent=2))
    print(f"report: {paths['html']}", file=sys.stderr)
    return 0


def _batch(analyser, args: argparse.Namespace) -> int:
    from models.report import write_lesion_report

    if args.out is None:
        raise UserError("--manifest needs --out RESULTS.jsonl")
    rows = _read_manifest(args.manifest)
    reports_dir = args.out.with_suffix("")
    failures = 0
    first_line: dict[str, int] = {}
    with open(args.out, "w") as sink:
        for line_no, row in rows:
            line: dict[str, Any] = {"case_id": row.get("case_id") or f"line{line_no}"}
            try:
                seen = first_line.setdefault(line["case_id"], line_no)
                if seen != line_no:  # never overwrite the first case's report
                    raise UserError(
                        f"duplicate case_id {line['case_id']!r} (first on line {seen}); "
                        "not analysed"
                    )
                seed = _parse_seed(f"{row['seed_x']},{row['seed_y']}")
                image_path = (args.manifest.parent / row["image"]).resolve()
                analysis, image = _analyse_one(
                    analyser, image_path, seed, args.mode, line["case_id"]
                )
                paths = write_lesion_report(
                    reports_dir / line["case_id"],
                    image=image,
                    mask=analysis.mask,
                    seed=seed,
                    result=analysis.report,
                )
                line = json.loads(paths["json"].read_text())
                line["mask_png"] = str(paths["mask"])
            except (UserError, argparse.ArgumentTypeError, ValueError) as e:
                failures += 1
                line["error"] = f"{args.manifest.name} line {line_no}: {e}"
            sink.write(json.dumps(line) + "\n")
            sink.flush()
    print(f"{len(rows)} cases, {failures} with errors → {args.out}", file=sys.stderr)
    return 0


def _read_manifest(path: Path) -> list[tuple[int, dict[str, str]]]:
    required = ("case_id", "image", "seed_x", "seed_y")
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in required if c not in (reader.fieldnames or ())]
            if missing:
                raise UserError(
                    f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(required)}"
                )
            return [(i + 2, row) for i, row in enumerate(reader)]
    except FileNotFoundError as e:
        raise UserError(f"{path}: no such manifest") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{path}: not a CSV file ({e})") from e


def register(roles: argparse._SubParsersAction) -> None:
    from sonofed.release_cli import register_console

    role = roles.add_parser("console", help="the ultrasound console's commands (analysis, updates)")
    commands = role.add_subparsers(dest="command", required=True, metavar="COMMAND")
    analyze = commands.add_parser(
        "analyze",
        help="segment, describe and classify a clicked lesion",
        description="One image with --image/--seed (writes report.json, report.html, overlay and "
        "mask PNGs) or a batch with --manifest CASES.csv (case_id,image,seed_x,seed_y) and "
        "--out RESULTS.jsonl (one JSON line per case; a bad case gets an `error` field).",
    )
    analyze.add_argument("--model", type=Path, help="model bundle folder (or use --dir)")
    analyze.add_argument("--dir", type=Path, help="console folder: use its active model")
    analyze.add_argument("--image", type=Path, help="the B-mode image (PNG)")
    analyze.add_argument("--seed", type=_parse_seed, help="the click X,Y in pixels")
    analyze.add_argument("--manifest", type=Path, help="CSV of cases for a batch")
    analyze.add_argument("--mode", choices=MODES, default="high-accuracy", help="operating mode")
    analyze.add_argument("--case-id", default="case1", help="pseudonymous case id for the report")
    analyze.add_argument("--out", type=Path, help="report folder, or RESULTS.jsonl for a batch")
    analyze.add_argument("--threads", type=int, default=2, help="inference threads (default 2)")
    analyze.set_defaults(handler=_analyze)

    register_console(commands)
