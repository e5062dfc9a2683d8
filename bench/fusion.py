"""Evidence for the outline-feature fusion, on validation only (the locked slice is not read).

For a bundle trained by ``bench.model`` (same registries, same validation split), analyses the
validation lesions with the bundle's ONNX network and reports cross-fitted AUCs
(:func:`models.fusion.choose_fusion`): the network alone, the network fused with the features of
its predicted outline, those features alone, and the network fused with the features of the
reference (radiologist's) outline, which bounds what better segmentation could give.

    python -m bench.fusion --work runs/bench-model [--repackage runs/bench-model/central-fused]

With ``--repackage DIR`` it also packages the same network again into ``DIR`` (where the
packaging fits and chooses the fusion on validation by itself) and scores that bundle on the
locked slice, once, beside the network-only bundle's locked score.

Writes ``<out>/fusion.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from models.packaging import load_weights
    from models.samples import samples_from_registries, split_by_group

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-model"))
    parser.add_argument("--bundle", type=Path, help="default: WORK/central")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--val-fraction", type=float, default=0.15)
    parser.add_argument("--repackage", type=Path, help="package the network again, with fusion")
    parser.add_argument("--skip-evidence", action="store_true", help="only --repackage")
    args = parser.parse_args()
    bundle = args.bundle or args.work / "central"
    registries = [args.work / "registries" / n for n in ("busi", "bus-bra", "breast")]
    network, config = load_weights(bundle)
    samples = samples_from_registries([r for r in registries if r.is_dir()])
    _, val = split_by_group(samples, args.val_fraction, config.seed)
    result: dict = {"bundle": str(bundle), "validation_cases": len(val)}
    if not args.skip_evidence:
        result.update(_evidence(bundle, val))
    if args.repackage:
        result["repackaged"] = _repackage(network, config, val, samples, args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def _repackage(network, config, val, samples, args) -> dict:
    from data_registry import LockedTestSet
    from models.bundle import load_metadata
    from models.packaging import data_summary, package_bundle

    bundle = args.bundle or args.work / "central"
    before = load_metadata(bundle).metrics["locked_test"]
    metadata = package_bundle(
        network, config, val, args.repackage, version="1.0.0",
        training_data={"sites": data_summary(samples)},
        locked=LockedTestSet(args.work / "locked"),
    )  # fmt: skip
    after = metadata.metrics["locked_test"]

    def headline(test: dict) -> dict:
        return {
            "auc": test["pooled"]["auc"]["auc"],
            "ci": [test["pooled"]["auc"]["ci_low"], test["pooled"]["auc"]["ci_high"]],
            "sites": {k: v["auc"]["auc"] for k, v in test["groups"]["site"].items()},
            "dice": test["pooled"].get("dice_mean"),
            "modes": {
                m: {"sensitivity": v["sensitivity"], "specificity": v["specificity"]}
                for m, v in test["pooled"]["thresholds"].items()
            },
        }

    return {
        "fusion": metadata.metrics["fusion"],
        "locked_network_only": headline(before),
        "locked_with_fusion": headline(after),
    }


def _evidence(bundle: Path, val) -> dict:
    from models import fusion
    from models.evaluation import analyse_all
    from models.inference import OnnxLesionModel

    start = time.perf_counter()
    model = OnnxLesionModel(bundle / "model.onnx", num_threads=2)
    outputs = analyse_all(val, model.analyze, progress=True, desc="validation")
    y = np.array([s.label for s in val])
    groups = [s.group_id for s in val]
    logits = np.array([o.malignancy_logit for o in outputs])
    predicted = np.array(
        [fusion.feature_vector(s.image, o.outline_mask) for s, o in zip(val, outputs, strict=True)]
    )
    reference = np.array([fusion.feature_vector(s.image, s.mask) for s in val])
    result: dict = {}
    _, _, result["predicted_outline_and_network"] = fusion.choose_fusion(
        predicted, logits, y, groups
    )
    _, _, result["predicted_outline_alone"] = fusion.choose_fusion(
        predicted, np.zeros_like(logits), y, groups
    )
    _, _, result["reference_outline_and_network"] = fusion.choose_fusion(
        reference, logits, y, groups
    )
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


if __name__ == "__main__":
    main()
