"""The vendor scores every global model on its locked test set (the ``evaluate_fn``).

The set is verified against its seal when the run starts and again before every scoring, and
must keep the manifest hash it had at the start. Metrics per round: AUC (with a bootstrap
interval), sensitivity and specificity at the fixed mode thresholds of
:data:`federation.config.MODE_THRESHOLDS`, mean Dice, calibration error, and AUC/Dice per site.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data_registry import LockedTestSet
from federation.config import MODE_THRESHOLDS
from federation.task import model_from_arrays
from models import metrics
from models.samples import samples_from_testset
from models.train import TrainConfig, predict

__all__ = ["LockedScorer"]

HEADLINE_MODE = "high-accuracy"


def _finite(arrays: Mapping[str, np.ndarray]) -> bool:
    return all(np.isfinite(v).all() for v in arrays.values())


class LockedScorer:
    """Scores weights of one network recipe on the locked test set.

    Args:
        testset: the locked set's folder.
        recipe: the network recipe the weights belong to.
        thresholds: mode → probability threshold.
        n_bootstrap: resamples of the AUC interval.
        num_threads: torch threads for the forward passes.

    Raises:
        data_registry.TestSetIntegrityError: the set is not intact.
    """

    def __init__(
        self,
        testset: Path,
        recipe: TrainConfig,
        *,
        thresholds: Mapping[str, float] = MODE_THRESHOLDS,
        n_bootstrap: int = 200,
        num_threads: int | None = None,
    ) -> None:
        self.locked = LockedTestSet(testset)
        self.manifest_hash = self.locked.verify()
        self.samples = samples_from_testset(self.locked)
        self.recipe = recipe
        self.thresholds = dict(thresholds)
        self.n_bootstrap = n_bootstrap
        self.num_threads = num_threads

    def __call__(self, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Verify the set again, then score ``arrays``.

        Returns:
            the history fields (``auc``, ``sensitivity``, ``specificity``, ``dice``, ``modes``,
            ``per_site``, …); with non-finite weights, ``auc`` etc. are None and
            ``non_finite`` is True.
        """
        start = time.perf_counter()
        self.locked.verify(self.manifest_hash)
        if not _finite(arrays):
            return {"auc": None, "sensitivity": None, "specificity": None, "dice": None,
                    "non_finite": True}  # fmt: skip
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        model = model_from_arrays(self.recipe, arrays)
        predictions = predict(model, self.samples, engine="onnx")
        y = np.array([s.label for s in self.samples])
        logits = np.array([p.malignancy_logit for p in predictions], dtype=np.float64)
        if not np.isfinite(logits).all():
            return {"auc": None, "sensitivity": None, "specificity": None, "dice": None,
                    "non_finite": True}  # fmt: skip
        prob = 1.0 / (1.0 + np.exp(-np.clip(logits, -60, 60)))
        dice = metrics.dice_scores([p.mask for p in predictions], [s.mask for s in self.samples])
        summary = metrics.summarize(
            y,
            prob,
            groups={"site": [s.site_id for s in self.samples]},
            thresholds=self.thresholds,
            dice_per_case=dice,
            n_bootstrap=self.n_bootstrap,
        )
        pooled = summary["pooled"]
        modes = {
            mode: {
                "threshold": self.thresholds[mode],
                "sensitivity": row["sensitivity"],
                "specificity": row["specificity"],
            }
            for mode, row in pooled["thresholds"].items()
        }
        headline = modes.get(HEADLINE_MODE) or next(iter(modes.values()))
        return {
            "auc": pooled["auc"]["auc"],
            "auc_ci": [pooled["auc"]["ci_low"], pooled["auc"]["ci_high"]],
            "sensitivity": headline["sensitivity"],
            "specificity": headline["specificity"],
            "dice": pooled.get("dice_mean"),
            "ece": pooled["ece"],
            "modes": modes,
            "per_site": {
                site: {"n": block["n"], "auc": block["auc"]["auc"], "dice": block.get("dice_mean")}
                for site, block in summary["groups"]["site"].items()
            },
            "test_cases": len(self.samples),
            "score_seconds": round(time.perf_counter() - start, 3),
        }


def metric_record_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric headline of a history row (None → NaN), for Flower's MetricRecord."""
    out = {}
    for key in ("auc", "sensitivity", "specificity", "dice"):
        value = row.get(key)
        out[key] = float("nan") if value is None else float(value)
    return {k: v for k, v in out.items() if not math.isnan(v)} or {"auc": float("nan")}
