"""What travels between the vendor and the hospitals: record names and the allowed keys.

Server → hospital (train and evaluate): ``arrays`` (the global weights) and ``config``
(:data:`ROUND_CONFIG_KEYS`). Hospital → server: ``arrays`` (its weights, train only),
``metrics`` (:data:`TRAIN_METRIC_KEYS` / :data:`EVALUATE_METRIC_KEYS`: counts and averages,
never a per-case value) and ``site`` (:data:`SITE_KEYS`: which registry version was used).
Nothing else is sent; the audit (:mod:`federation.audit`) records every reply's structure.

Calibration (``evaluate.calibrate``, once after the last round): server → hospital ``arrays``
(the candidate) and ``config`` (:data:`CALIBRATE_CONFIG_KEYS`: the recipe, the validation split
and the shared logit bins); hospital → server ``calibration`` (exactly the arrays of
:func:`calibration_array_shapes`: two class histograms and one confusion table per descriptor
and source, all of fixed shapes that do not depend on the number of cases), ``metrics``
(:data:`CALIBRATE_METRIC_KEYS`: counts and the Dice sum) and ``site``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from flwr.app import MetricRecord, RecordDict

from models.calibration import LogitBins
from models.validation_stats import DESCRIPTORS, SOURCES, confusion_shape

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
SITE = "site"
WEIGHT = "num-examples"

ROUND_CONFIG_KEYS = frozenset(
    {
        "server-round",
        "proximal-mu",
        "local-epochs",
        "lr",
        "lr-schedule",
        "progress-start",
        "progress-end",
        "batch-size",
        "train-config",
        "since",
        "rehearsal-size",
        "keep-optimizer",
        "local-validation",
        "val-fraction",
        "seed",
        "cycle",
    }
)
TRAIN_METRIC_KEYS = frozenset(
    {
        WEIGHT,
        "train-loss",
        "val-auc",
        "val-dice",
        "val-cases",
        "new-cases",
        "rehearsal-cases",
        "train-seconds",
        "optimizer-steps",
    }
)
EVALUATE_METRIC_KEYS = frozenset({WEIGHT, "val-auc", "val-dice"})
SITE_KEYS = frozenset({"site-id", "registry-site", "registry-version", "registry-hash"})

CALIBRATE = "evaluate.calibrate"
"""Message type of the calibration request (``@app.evaluate("calibrate")``)."""
CALIBRATION = "calibration"
"""Array record of a calibration reply."""
CALIBRATE_CONFIG_KEYS = frozenset(
    {"train-config", "val-fraction", "seed", "cycle", "logit-low", "logit-high", "logit-bins",
     "dp-epsilon"}
)  # fmt: skip
CALIBRATE_METRIC_KEYS = frozenset({WEIGHT, "benign-cases", "malignant-cases", "dice-sum"})
HISTOGRAMS = ("hist-benign", "hist-malignant")


def confusion_key(source: str, descriptor: str) -> str:
    """Array name of one confusion table in a calibration reply."""
    return f"confusion-{source}-{descriptor}"


def calibration_array_shapes(bins: LogitBins) -> dict[str, tuple[int, ...]]:
    """Every array a calibration reply holds, with its one allowed shape."""
    shapes: dict[str, tuple[int, ...]] = {name: (bins.size,) for name in HISTOGRAMS}
    for source in SOURCES:
        for name in DESCRIPTORS:
            shapes[confusion_key(source, name)] = confusion_shape(name)
    return shapes


def bins_from_config(config) -> LogitBins:
    """The shared logit bins named in a calibration request's config."""
    return LogitBins(
        low=float(config["logit-low"]),
        high=float(config["logit-high"]),
        count=int(config["logit-bins"]),
    )


COUNT_KEYS = frozenset({"val-cases", "new-cases", "rehearsal-cases"})
"""Metrics that are summed over hospitals rather than averaged."""


def aggregate_metrics(records: Sequence[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Weighted mean of every metric, skipping NaN values (e.g. AUC of a one-class split).

    Counts (:data:`COUNT_KEYS`) and the weight itself are summed. Used as
    ``train_metrics_aggr_fn``/``evaluate_metrics_aggr_fn`` of every strategy; adds ``clients``
    (how many replies were aggregated).
    """
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    counts: dict[str, int] = {}
    total = 0.0
    for record in records:
        metrics = (
            record[METRICS] if METRICS in record else next(iter(record.metric_records.values()))
        )
        w = float(metrics[weighted_by_key])
        total += w
        for key, value in metrics.items():
            if key == weighted_by_key or isinstance(value, list):
                continue
            v = float(value)
            if key in COUNT_KEYS:
                counts[key] = counts.get(key, 0) + int(v)
                continue
            if math.isnan(v) or w <= 0:
                continue
            sums[key] = sums.get(key, 0.0) + w * v
            weights[key] = weights.get(key, 0.0) + w
    out = MetricRecord({k: sums[k] / weights[k] for k in sums})
    for key, value in counts.items():
        out[key] = value
    out["clients"] = len(records)
    out[weighted_by_key] = total
    return out
