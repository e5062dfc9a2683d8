"""Evidence for the outline-feature fusion, on validation only (the locked slice is not read).

For a bundle trained by ``bench.model`` (same registries, same validation split), analyses the
validation lesions with the bundle's ONNX network and reports cross-fitted AUCs
(:func:`models.fusion.choose_fusion`): the network alone, the network fused with the features of
its predicted outline, those features alone, and the network fused with the features of the
reference (radiologist's) outline, which bounds what better segmentation could give.

    python -m bench.fusion --work runs/bench-model

Writes ``<out>/fusion.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main() -> None:
    from models import fusion
    from models.evaluation import analyse_all
    from models.inference import OnnxLesionModel
    from models.packaging import load_weights
    from models.samples import samples_from_registries, split_by_group

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("runs/bench-model"))
    parser.add_argument("--bundle", type=Path, help="default: WORK/central")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--val-fraction", type=float, default=0.15)
    args = parser.parse_args()
    bundle = args.bundle or args.work / "central"
    registries = [args.work / "registries" / n for n in ("busi", "bus-bra", "breast")]
    _, config = load_weights(bundle)
    samples = samples_from_registries([r for r in registries if r.is_dir()])
    _, val = split_by_group(samples, args.val_fraction, config.seed)
    start = time.perf_counter()
    model = OnnxLesionModel(bundle / "model.onnx", num_threads=2)
    outputs = analyse_all(val, model.analyze, progress=True, desc="validation")
    y = np.array([s.label for s in val])
    groups = [s.group_id for s in val]
    logits = np.array([o.malignancy_logit for o in outputs])
    predicted = np.array(
        [fusion.feature_vector(s.image, o.mask) for s, o in zip(val, outputs, strict=True)]
    )
    reference = np.array([fusion.feature_vector(s.image, s.mask) for s in val])
    result = {"bundle": str(bundle), "validation_cases": len(val)}
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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
