"""Honest model selection: patient- and duplicate-group-disjoint k-fold cross-validation.

Recipes are compared on folds of the *training* part of the sites (never on the locked test
set, which scores a final recipe once). Every fold holds whole groups (a patient's images and a
duplicate cluster's copies share a ``group_id``), stratified by site and label, so no patient and
no near-copy of an image is ever on both sides of a fold.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from data_registry.files import write_atomic
from models.data import LesionSample
from models.exceptions import DataError

__all__ = ["cross_validate", "group_kfold", "summarise_folds"]


def group_kfold(
    samples: Sequence[LesionSample], k: int, seed: int
) -> list[tuple[list[LesionSample], list[LesionSample]]]:
    """Split into ``k`` (train, held-out) folds, whole groups at a time.

    Within every site × label stratum the groups are shuffled and dealt, largest first, to the
    fold that holds the fewest of that stratum's cases, so folds are balanced by site and label.
    A group's stratum is its site and its highest label.

    Args:
        samples: the lesions to split.
        k: number of folds (at least 2, at most the number of groups).
        seed: shuffling seed.

    Returns:
        ``k`` pairs; the held-out parts are disjoint and together hold every sample once.

    Raises:
        DataError: ``k`` is below 2 or above the number of groups.
    """
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(sample.group_id, []).append(index)
    if k < 2 or k > len(groups):
        raise DataError(f"k-fold needs 2 <= k <= {len(groups)} groups, got k={k}")
    rng = np.random.default_rng(seed)
    strata: dict[tuple[str, int], list[str]] = {}
    for group, members in sorted(groups.items()):
        label = max(samples[i].label for i in members)
        strata.setdefault((samples[members[0]].site_id, label), []).append(group)
    fold_of: dict[str, int] = {}
    totals = np.zeros(k)
    for names in strata.values():
        order = [names[i] for i in rng.permutation(len(names))]
        order.sort(key=lambda g: -len(groups[g]))  # stable: ties keep the shuffled order
        counts = np.zeros(k)
        for group in order:
            # fewest of this stratum; ties to the fold with fewest cases overall, then at random
            candidates = np.flatnonzero(counts == counts.min())
            candidates = candidates[totals[candidates] == totals[candidates].min()]
            fold = int(rng.choice(candidates))
            fold_of[group] = fold
            counts[fold] += len(groups[group])
            totals[fold] += len(groups[group])
    folds = []
    for fold in range(k):
        held = [s for s in samples if fold_of[s.group_id] == fold]
        rest = [s for s in samples if fold_of[s.group_id] != fold]
        folds.append((rest, held))
    return folds


def summarise_folds(rows: Sequence[dict[str, float | None]]) -> dict[str, Any]:
    """Mean and sample standard deviation of every numeric fold metric."""
    out: dict[str, Any] = {"folds": len(rows)}
    for key in rows[0]:
        values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
        if not values:
            continue
        a = np.asarray(values, dtype=np.float64)
        out[key] = {
            "mean": round(float(a.mean()), 4),
            "sd": round(float(a.std(ddof=1)) if len(a) > 1 else 0.0, 4),
            "values": [round(float(v), 4) for v in a],
        }
    return out


def cross_validate(
    samples: Sequence[LesionSample],
    config: Any,
    *,
    k: int = 3,
    seed: int = 0,
    val_fraction: float = 0.15,
    max_folds: int | None = None,
    progress: bool = False,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Score a training recipe by group-disjoint k-fold cross-validation.

    Each fold trains on the other folds (early stopping on a group-disjoint ``val_fraction`` of
    them, as the final model does), exports the network to ONNX and analyses the held-out fold
    with the console's own two-pass analysis. Reported per fold and as mean ± sd: AUC, Dice and,
    per site, AUC.

    Args:
        samples: the training part of the sites (the locked test set excluded).
        config: the :class:`models.train.TrainConfig` recipe.
        k: number of folds.
        seed: fold assignment seed.
        val_fraction: early-stopping share of each fold's training part.
        max_folds: score only the first this many of the ``k`` folds (a cheaper, noisier
            comparison; None: all).
        progress: show progress bars.
        keep: a directory to keep each fold's network in (``fold<i>.onnx``) beside
            ``folds.json``, each fold's held-out case ids: inference settings can then be
            compared paired, on lesions no fold network trained on, without training again.

    Returns:
        ``{"summary": summarise_folds(...), "per_fold": [...], "out_of_fold": {...}}``; the
        out-of-fold part holds each held-out lesion's case id, label, site, group, logit, mask
        and the fusion features of that mask (:func:`models.fusion.feature_vector`), what a
        stacked fusion is fitted on (:func:`models.fusion.fit_stacked`).
    """
    import tempfile

    from models import metrics
    from models.evaluation import analyse_all
    from models.export import export_onnx
    from models.fusion import feature_vector
    from models.inference import OnnxLesionModel
    from models.samples import split_by_group
    from models.train import train_model

    keys = ("case_id", "label", "site_id", "group_id", "logit", "mask", "features")
    rows: list[dict[str, float | None]] = []
    oof: dict[str, list[Any]] = {key: [] for key in keys}
    held_out: list[list[str]] = []
    if keep is not None:
        Path(keep).mkdir(parents=True, exist_ok=True)
    for fold, (rest, held) in enumerate(group_kfold(samples, k, seed)[:max_folds]):
        train, val = split_by_group(rest, val_fraction, config.seed + 1 + fold)
        result = train_model(train, val, dataclasses.replace(config), progress=progress)
        with tempfile.TemporaryDirectory() as tmp:
            path = export_onnx(result.model, Path(keep or tmp) / f"fold{fold}.onnx")
            model = OnnxLesionModel(path, num_threads=config.num_threads)
            outputs = analyse_all(held, model.analyze, progress=progress, desc=f"fold {fold}")
        held_out.append([s.case_id for s in held])
        y = np.array([s.label for s in held])
        logits = np.array([o.malignancy_logit for o in outputs])
        dice = metrics.dice_scores([o.mask for o in outputs], [s.mask for s in held])
        row: dict[str, float | None] = {
            "auc": metrics.auc_with_ci(y, logits, n_bootstrap=100).auc,
            "dice": float(np.mean(dice)),
            "epochs_run": float(len(result.history)),
        }
        sites = np.array([s.site_id for s in held])
        for site in sorted(set(sites.tolist())):
            chosen = sites == site
            row[f"auc_{site}"] = metrics.auc_with_ci(y[chosen], logits[chosen], n_bootstrap=100).auc
        rows.append(row)
        oof["case_id"] += [s.case_id for s in held]
        oof["label"] += y.tolist()
        oof["site_id"] += sites.tolist()
        oof["group_id"] += [s.group_id for s in held]
        oof["logit"] += logits.tolist()
        oof["mask"] += [o.mask for o in outputs]
        oof["features"] += [
            feature_vector(s.image, o.outline_mask) for s, o in zip(held, outputs, strict=True)
        ]
    if keep is not None:
        folds = {"k": k, "seed": seed, "held_out": held_out}
        write_atomic(Path(keep) / "folds.json", (json.dumps(folds, indent=1) + "\n").encode())
    return {"summary": summarise_folds(rows), "per_fold": rows, "out_of_fold": oof}
