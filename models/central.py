"""The centrally trained baseline: the same eligible cases federated and single-site runs use."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data_registry import LockedTestSet, Registry
from models.bundle import BundleMetadata
from models.exceptions import ConfigError
from models.fusion import FusionModel, fit_stacked
from models.packaging import config_from_dict, data_summary, package_bundle
from models.samples import samples_from_registries, split_by_group
from models.train import TrainConfig, train_model


def load_train_config(params: Path | None, **overrides: Any) -> TrainConfig:
    """``TrainConfig`` from the ``train`` block of ``params.yaml`` plus explicit overrides.

    ``spec`` and ``augmentation`` may be nested mappings holding only the keys to change.

    Raises:
        ConfigError: an unknown key in the block.
    """
    values: dict[str, Any] = {}
    if params is not None and Path(params).is_file():
        values = dict((yaml.safe_load(Path(params).read_text()) or {}).get("train") or {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    defaults = dataclasses.asdict(TrainConfig())
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise ConfigError(
            f"train: unknown setting(s) {', '.join(unknown)}; known: {', '.join(defaults)}"
        )
    for nested in ("spec", "augmentation"):
        if isinstance(values.get(nested), Mapping):
            values[nested] = {**defaults[nested], **values[nested]}
    return config_from_dict({**defaults, **values})


def registry_versions(paths: Sequence[Path]) -> dict[str, dict[str, Any]]:
    """Site → the registry version and content hash a model was trained on (lineage)."""
    out = {}
    for path in paths:
        registry = Registry(path)
        out[registry.site_id] = {
            "version": registry.version,
            "content_hash": registry.state.summary.content_hash,
        }
    return out


def train_central(
    registries: Sequence[Path],
    out: Path,
    *,
    config: TrainConfig,
    testset: Path | None = None,
    val_fraction: float = 0.15,
    version: str = "1.0.0",
    lineage: Mapping[str, Any] | None = None,
    progress: bool = True,
    out_of_fold: Mapping[str, Sequence[Any]] | None = None,
) -> BundleMetadata:
    """Train on the registries' eligible lesions and write a bundle scored on the locked set.

    With ``out_of_fold`` (the held-out lesions of a cross-validation of this recipe on the same
    lesions, :func:`models.selection.cross_validate`), the outline fusion is stacked: fitted on
    those lesions less this network's validation split, then judged on that split.

    Raises:
        TestSetIntegrityError: the locked set is not intact (checked before training).
        DataError: no eligible lesions.
    """
    locked = LockedTestSet(testset) if testset is not None else None
    if locked is not None:
        locked.verify()
    samples = samples_from_registries(registries)
    train, val = split_by_group(samples, val_fraction, config.seed)
    stacked = None
    if out_of_fold is not None and config.fusion:
        stacked = stacked_fusion(out_of_fold, exclude={(s.site_id, s.case_id) for s in val})
    result = train_model(train, val, config, progress=progress)
    training_data = {
        "sites": data_summary(samples),
        "train_cases": len(train),
        "validation_cases": len(val),
        "registries": registry_versions(registries),
    }
    return package_bundle(
        result.model,
        config,
        val,
        out,
        version=version,
        training_data=training_data,
        lineage={
            "kind": "central",
            "epochs_run": len(result.history),
            "best_epoch": result.best_epoch,
            "train_seconds": round(result.seconds, 1),
            **(lineage or {}),
        },
        locked=locked,
        progress=progress,
        stacked_fusion=stacked,
    )


def stacked_fusion(
    out_of_fold: Mapping[str, Sequence[Any]], exclude: set[tuple[str, str]]
) -> tuple[FusionModel | None, dict[str, Any]]:
    """:func:`models.fusion.fit_stacked` on a cross-validation's held-out lesions, less the
    ``(site, case)`` pairs in ``exclude`` (the validation split the fusion is judged on)."""
    keep = [
        i
        for i, key in enumerate(zip(out_of_fold["site_id"], out_of_fold["case_id"], strict=True))
        if key not in exclude
    ]

    def column(name: str) -> list[Any]:
        return [out_of_fold[name][i] for i in keep]

    return fit_stacked(
        np.array(column("features"), dtype=np.float64).reshape(len(keep), -1),
        np.array(column("logit"), dtype=np.float64),
        np.array(column("label"), dtype=np.float64),
        column("group_id"),
        column("site_id"),
    )
