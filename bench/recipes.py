"""Recipe comparison on the three real sites: group-disjoint cross-validation, side by side.

Each named recipe is scored by the same patient- and duplicate-group-disjoint folds of the
training part of BUSI, BUS-BRA and BrEaST (the locked slice of ``bench.model`` is excluded and
never looked at), with the same epoch budget; the recipes train at the same time, one process
and one thread each, so they share whatever load the machine has. Reported per recipe: fold AUC
(pooled and per site), Dice, epochs, training minutes, and the exported network's console cost
(ONNX milliseconds per crop, megabytes).

    python -m bench.recipes --data ../shared/data --recipes residual lite0 --epochs 5 --folds 1

Writes ``<out>/recipes.json`` and ``<out>/recipes.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from bench.model import prepare

RECIPES: dict[str, dict[str, Any]] = {
    "residual": {  # the real-data recipe before Lite0: a MONAI residual U-Net from scratch
        "encoder": "residual",
        "features": (16, 32, 64, 128, 192),
        "subunits": (1, 1, 2, 2, 2),
    },
    "lite0": {
        "encoder": "efficientnet-lite0",
        "features": (16, 24, 32, 64),
        "subunits": (1, 1, 1, 1, 1),
    },
    "lite0-ema": {  # the weights' exponential moving average is validated and kept instead
        # of the raw weights (measured in 4867e07: no gain; the real recipe has ema_decay 0)
        "encoder": "efficientnet-lite0",
        "features": (16, 24, 32, 64),
        "subunits": (1, 1, 1, 1, 1),
        "ema_decay": 0.99,
    },
    "lite0-mask2": {  # the mask loss weighted twice (the outline carries most of the signal)
        "encoder": "efficientnet-lite0",
        "features": (16, 24, 32, 64),
        "subunits": (1, 1, 1, 1, 1),
        "mask_weight": 2.0,
    },
    "lite0-boundary": {  # the mask BCE weighted 4x within 2 crop pixels of the true outline
        "encoder": "efficientnet-lite0",
        "features": (16, 24, 32, 64),
        "subunits": (1, 1, 1, 1, 1),
        "boundary_weight": 3.0,
    },
    "lite0-96": {
        "encoder": "efficientnet-lite0",
        "features": (16, 24, 32, 64),
        "subunits": (1, 1, 1, 1, 1),
        "spec": {"crop_size": 96},
    },
}
"""Named recipes: changes to :class:`models.train.TrainConfig`'s defaults."""


def recipe_config(name: str, epochs: int, threads: int):
    """The :class:`models.train.TrainConfig` of a named recipe."""
    from models.central import load_train_config

    return load_train_config(
        None, **RECIPES[name], epochs=epochs, num_threads=threads, patience=epochs
    )


def _onnx_cost(config) -> dict[str, float]:
    """Milliseconds per crop (batch of 3, 2 threads, best of 20) and size of the exported net."""
    import torch

    from models.export import export_onnx
    from models.inference import OnnxLesionModel
    from models.train import build_model

    torch.manual_seed(0)
    model = build_model(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, Path(tmp) / "net.onnx")
        onnx = OnnxLesionModel(path, num_threads=2)
        size = config.spec.crop_size
        x = np.random.default_rng(0).random((3, config.spec.in_channels, size, size), np.float32)
        times = []
        for _ in range(20):
            start = time.perf_counter()
            onnx.run(x)
            times.append((time.perf_counter() - start) * 1000.0 / 3)
        return {
            "onnx_ms_per_crop": round(min(times), 2),
            "onnx_mb": round(path.stat().st_size / 1e6, 2),
        }


def score_recipe(name: str, registries: list[Path], epochs: int, folds: int, k: int, seed: int):
    """Cross-validate one recipe (run in its own process)."""
    from models.samples import samples_from_registries
    from models.selection import cross_validate

    config = recipe_config(name, epochs, threads=1)
    start = time.perf_counter()
    cv = cross_validate(
        samples_from_registries(registries), config, k=k, seed=seed, max_folds=folds
    )
    return {
        "recipe": name,
        "changes": {k: list(v) if isinstance(v, tuple) else v for k, v in RECIPES[name].items()},
        "minutes": round((time.perf_counter() - start) / 60.0, 2),
        "summary": cv["summary"],
        "per_fold": cv["per_fold"],
    }


def _markdown(result: dict[str, Any]) -> str:
    lines = [
        "# Recipe comparison (group-disjoint CV of the training part; locked slice unused)",
        "",
        f"{result['folds']} of {result['k']} folds, {result['epochs']} epochs each, recipes "
        f"trained side by side (1 thread each); load average {result['load_average_1min']} "
        f"on {result['cpus']} CPUs.",
        "",
        "| recipe | AUC | Dice | per-site AUC | epochs | train+score min | ONNX ms/crop | ONNX MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["recipes"]:
        summary = row["summary"]
        sites = ", ".join(
            f"{key[4:]} {summary[key]['mean']:.3f}"
            for key in sorted(summary)
            if key.startswith("auc_") and isinstance(summary[key], dict)
        )
        lines.append(
            f"| {row['recipe']} | {summary['auc']['mean']:.3f} | {summary['dice']['mean']:.3f} | "
            f"{sites} | {summary['epochs_run']['mean']:.0f} | {row['minutes']} | "
            f"{row['onnx_ms_per_crop']} | {row['onnx_mb']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-model"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--recipes", nargs="+", default=["residual", "lite0"], choices=RECIPES)
    parser.add_argument("--epochs", type=int, default=5, help="epochs per training (same for all)")
    parser.add_argument("--folds", type=int, default=1, help="how many of the k folds to score")
    parser.add_argument(
        "--k", type=int, default=3, help="number of folds the training part is cut into"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"no real data at {args.data}; this benchmark needs the three sites")
    _, registries = prepare(args.data, args.work, 0.2, args.seed)
    load_before = os.getloadavg()[0]
    with ProcessPoolExecutor(max_workers=len(args.recipes)) as pool:
        futures = [
            pool.submit(score_recipe, name, registries, args.epochs, args.folds, args.k, args.seed)
            for name in args.recipes
        ]
        rows = [future.result() for future in futures]
    for row in rows:
        row.update(_onnx_cost(recipe_config(row["recipe"], args.epochs, threads=2)))
    result = {
        "k": args.k,
        "folds": args.folds,
        "epochs": args.epochs,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "recipes": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipes.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "recipes.md").write_text(_markdown(result))
    print(_markdown(result))


if __name__ == "__main__":
    main()
