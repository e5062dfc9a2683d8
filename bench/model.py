"""Lesion-model benchmark on the three real sites: accuracy, latency, training time.

Locks a patient- and copy-disjoint test slice of BUSI, BUS-BRA and BrEaST, ingests the rest
into one registry per site, trains the central model with the ``train`` block of params.yaml,
scores the shipped ONNX bundle on the locked slice, and times the console analysis (image decode
to report JSON) with onnxruntime and with PyTorch eager, 2 threads each, side by side.

    python -m bench.model --data ../shared/data --out bench/results

Writes ``<out>/model.json`` and ``<out>/model.md``; keeps the bundle in ``<work>/central`` and
the cross-validation's fold networks in ``<work>/cv`` (``fold<i>.onnx`` and ``folds.json``, each
fold's held-out case ids), so inference settings can be compared paired without training again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench import console
from data_registry import Exclusion, Registry, SourceSpec, ingest, lock_testset
from data_registry.importers import get_importer

RESERVE_MINUTES = 8.0
"""Part of the budget kept for export, calibration, scoring and the latency benchmark."""
SITES = (
    ("busi", "busi", "biopsy"),
    ("bus_bra", "bus_bra", None),
    ("breast_lesions_usg", "breast_lesions_usg", None),
)


def prepare(data: Path, work: Path, fraction: float, seed: int) -> tuple[Path, list[Path]]:
    """Lock the test slice and ingest each site once (reused by later runs)."""
    locked = work / "locked"
    if not (locked / "SEAL").exists():
        specs = [SourceSpec(kind, data / folder, assume) for kind, folder, assume in SITES]
        lock_testset(specs, locked, fraction=fraction, seed=seed, progress=True)
    exclusion = Exclusion.load(locked / "exclusion.json")
    registries = []
    for kind, folder, assume in SITES:
        importer = get_importer(kind)
        registry = work / "registries" / importer.default_site_id
        if not Registry.exists(registry):
            ingest(
                importer(data / folder, assume_reference=assume),
                registry,
                site_id=importer.default_site_id,
                source=kind,
                exclusion=exclusion,
                progress=True,
            )
        registries.append(registry)
    return locked, registries


def _fusion_lines(fusion: dict[str, Any]) -> list[str]:
    """How the outline fusion was fitted and why it ships or not."""
    if "auc_fused" not in fusion and "auc_fused_cross_fitted" not in fusion:
        return ["", f"Outline fusion: not used ({fusion.get('reason', 'no report')})."]
    verdict = "shipped" if fusion.get("used") else "not shipped"
    if fusion.get("fitted_on") != "out-of-fold":
        return [
            "",
            f"Outline fusion, fitted cross-fitted on validation: AUC {fusion['auc_fused_cross_fitted']:.3f} "
            f"against the network's {fusion['auc_network']:.3f}, {verdict}.",
        ]
    lines = [
        "",
        f"Outline fusion, stacked: fitted on {fusion['cases']} held-out CV lesions (the final "
        f"network's validation split left out), judged on that split ({fusion['validation_cases']} "
        f"lesions): AUC {fusion['auc_fused']:.3f} against the network's {fusion['auc_network']:.3f}, "
        f"{verdict}. Cross-fitted on the held-out CV lesions:",
        "",
        "| CV lesions | n | network AUC | fused AUC |",
        "|---|---|---|---|",
        f"| pooled | {fusion['cases']} | {fusion['cv_auc_network']:.3f} | {fusion['cv_auc_fused_cross_fitted']:.3f} |",
    ]
    for site, row in fusion.get("per_site", {}).items():
        lines.append(
            f"| {site} | {row['cases']} | {row['auc_network']:.3f} | {row['auc_fused_cross_fitted']:.3f} |"
        )
    return lines


def _markdown(result: dict[str, Any]) -> str:
    test = result["locked_test"]
    pooled = test["pooled"]
    lines = [
        "# Lesion model benchmark (real data, locked patient-disjoint test slice)",
        "",
        f"Machine: {result['machine']}. Training: {result['train_minutes']:.1f} min.",
        "",
        "| subset | n | AUC [95% CI] | Dice | ECE |",
        "|---|---|---|---|---|",
    ]

    def row(name: str, block: dict[str, Any]) -> str:
        auc = block["auc"]
        value = (
            "n/a"
            if auc["auc"] is None
            else f"{auc['auc']:.3f} [{auc['ci_low']:.3f}, {auc['ci_high']:.3f}]"
        )
        return f"| {name} | {block['n']} | {value} | {block.get('dice_mean', float('nan')):.3f} | {block['ece']:.3f} |"

    lines.append(row("pooled", pooled))
    for grouping, blocks in test["groups"].items():
        for name, block in blocks.items():
            lines.append(row(f"{grouping} {name}", block))
    cv = result.get("cross_validation")
    if cv:
        lines += [
            "",
            f"Recipe scored by {cv['folds']}-fold patient- and duplicate-group-disjoint "
            f"cross-validation of the training part ({cv['minutes']:.1f} min), beside the locked "
            "slice scored once:",
            "",
            "| measure | CV mean ± sd | locked slice |",
            "|---|---|---|",
        ]
        sites = test["groups"].get("site", {})
        measures = [
            ("AUC pooled", "auc", pooled["auc"]["auc"]),
            ("Dice", "dice", pooled.get("dice_mean")),
        ]
        measures += [(f"AUC {site}", f"auc_{site}", b["auc"]["auc"]) for site, b in sites.items()]
        for label, key, locked_value in measures:
            if key in cv:
                locked_text = "n/a" if locked_value is None else f"{locked_value:.3f}"
                lines.append(
                    f"| {label} | {cv[key]['mean']:.3f} ± {cv[key]['sd']:.3f} | {locked_text} |"
                )
    lines += _fusion_lines(result.get("fusion") or {})
    lines += ["", "| mode | threshold | sensitivity | specificity |", "|---|---|---|---|"]
    for mode, values in pooled["thresholds"].items():
        lines.append(
            f"| {mode} | {values['threshold']:.3f} | {values['sensitivity']:.3f} | {values['specificity']:.3f} |"
        )
    lines += ["", "| descriptor | n | accuracy | kappa |", "|---|---|---|---|"]
    for name, agreement in result["descriptors"].items():
        kappa = agreement["kappa"]
        lines.append(
            f"| {name} | {agreement['n']} | {agreement['accuracy']:.3f} | {'n/a' if kappa is None else f'{kappa:.3f}'} |"
        )
    lines += ["", "## Console latency (image decode to report JSON)", ""]
    lines.append(console.markdown(result["latency"]).rstrip("\n"))
    return "\n".join(lines) + "\n"


def main() -> None:
    from models.central import load_train_config, train_central

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-model"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--params",
        type=Path,
        help="a params file whose `train` block sets the recipe (default: the code's validated "
        "real-data recipe; params.yaml holds the phantom pipeline's compact one)",
    )
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-cases", type=int, default=100)
    parser.add_argument("--epochs", type=int, help="epoch budget (default: params.yaml `train`)")
    parser.add_argument(
        "--cv-folds",
        type=int,
        default=3,
        help="group-disjoint folds of the training part that score the recipe before the locked "
        "slice scores the final model once (0: skip)",
    )
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=45.0,
        help="wall-time budget of the whole run; when the recipe sets no max_minutes, each of "
        "the cv-folds + 1 trainings gets an equal share of it, less a reserve for scoring",
    )
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no real data at {args.data}; this benchmark needs the three sites")
    locked, registries = prepare(args.data, args.work, args.fraction, args.seed)
    config = load_train_config(args.params)
    if args.epochs:
        config = dataclasses.replace(config, epochs=args.epochs)
    if config.max_minutes is None and args.budget_minutes:
        share = (args.budget_minutes - RESERVE_MINUTES) / (args.cv_folds + 1)
        config = dataclasses.replace(config, max_minutes=max(share, 1.0))
    cross_validation, out_of_fold = None, None
    if args.cv_folds:
        from models.samples import samples_from_registries
        from models.selection import cross_validate

        start = time.perf_counter()
        cv = cross_validate(
            samples_from_registries(registries), config, k=args.cv_folds, seed=args.seed,
            progress=True, keep=args.work / "cv",
        )  # fmt: skip
        cross_validation = {
            **cv["summary"],
            "per_fold": cv["per_fold"],
            "minutes": round((time.perf_counter() - start) / 60.0, 2),
        }
        out_of_fold = cv["out_of_fold"]
    start = time.perf_counter()
    metadata = train_central(
        registries, args.work / "central", config=config, testset=locked, out_of_fold=out_of_fold
    )
    minutes = (time.perf_counter() - start) / 60.0
    result = {
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
        "train_minutes": round(minutes, 2),
        "cross_validation": cross_validation,
        "epochs": config.epochs,
        "max_minutes_per_training": config.max_minutes,
        "train_seconds_network": metadata.lineage.get("train_seconds"),
        "training_data": metadata.training_data,
        "locked_test": metadata.metrics["locked_test"],
        "descriptors": metadata.metrics["locked_test_descriptors"],
        "descriptor_sources": metadata.descriptor_sources,
        "fusion": metadata.metrics.get("fusion"),
        "operating_points": metadata.operating_points,
        "temperature": metadata.temperature,
        "latency": console.measure_in_fresh_process(
            args.work / "central", locked, args.latency_cases
        ),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "model.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
