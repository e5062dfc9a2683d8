"""Outline-feature fusion: the network's malignancy logit combined with morphometry of its outline.

The network's predicted mask is described by the morphometric features of
:func:`models.descriptors.lesion_features` (convexity, solidity, angularity, ellipse aspect,
ring contrast, posterior shadowing, texture, ...). A ridge-penalised logistic regression on
those features plus the network's logit gives the fused logit.

The regression is fitted *cross-fitted*: a case's fused score, used to judge the fusion and to
calibrate and threshold it, always comes from a regression fitted without that case's group, so
it is never scored on its own training predictions. The shipped regression (fitted on all the
cases) is plain numpy coefficients in the bundle's ``metadata.json``; the console applies it
without scikit-learn.

Two places to fit it: the final network's validation cases (:func:`choose_fusion`, a few hundred
lesions), or, when the recipe was cross-validated, the folds' held-out lesions (stacking,
:func:`fit_stacked`): every training-part lesion scored by a fold network that never trained on
it, several times as many cases. A stacked fusion is then judged once on the final network's
validation cases, which neither it nor the network was fitted on (:func:`judge_fusion`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.descriptors import FEATURE_NAMES, lesion_features
from models.exceptions import MaskError, ModelError
from models.metrics import auc

__all__ = [
    "FUSION_FEATURES",
    "FusionModel",
    "choose_fusion",
    "cross_fitted_logits",
    "feature_vector",
    "fit_logistic",
    "fit_stacked",
    "group_folds",
    "judge_fusion",
]

SIZE_FEATURES = ("area", "perimeter")
FUSION_FEATURES: tuple[str, ...] = tuple(n for n in FEATURE_NAMES if n not in SIZE_FEATURES)
"""The outline's features that enter the fusion (size in pixels is left out: it depends on the
scanner's pixel spacing)."""
LOGIT = "network_logit"
PENALTIES = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
"""Ridge penalties tried (on standardised inputs); the one with the lowest cross-fitted log-loss
is kept."""
CLIP_SD = 5.0
"""Standardised inputs are clipped to ± this many standard deviations (outlines of failed
segmentations must not dominate)."""


def _as_vector(features: Mapping[str, float] | None) -> NDArray[np.float64]:
    if features is None:
        return np.full(len(FUSION_FEATURES), np.nan)
    return np.array([features[name] for name in FUSION_FEATURES], dtype=np.float64)


def _describe(
    image: NDArray[np.uint8], mask: NDArray[np.bool_], whole: bool = False
) -> dict[str, float] | None:
    try:
        return lesion_features(image, mask, whole=whole)
    except MaskError:
        return None


def feature_vector(image: NDArray[np.uint8], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """The fusion features of one predicted outline (NaN where the mask cannot be described)."""
    return _as_vector(_describe(image, mask))


def _sigmoid(z: NDArray) -> NDArray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def fit_logistic(x: NDArray, y: NDArray, penalty: float) -> tuple[NDArray, float]:
    """Ridge logistic regression by Newton's method (intercept not penalised).

    Args:
        x: standardised inputs (n, d).
        y: labels 0/1 (n,).
        penalty: L2 penalty on the coefficients (sum of losses + penalty/2 * |w|^2).

    Returns:
        ``(coefficients, intercept)``.
    """
    n, d = x.shape
    design = np.hstack([np.ones((n, 1)), x])
    w = np.zeros(d + 1)
    ridge = np.full(d + 1, penalty)
    ridge[0] = 0.0
    for _ in range(100):
        p = _sigmoid(design @ w)
        gradient = design.T @ (p - y) + ridge * w
        hessian = (design * (p * (1 - p))[:, None]).T @ design + np.diag(ridge + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.max(np.abs(step)) < 1e-9:
            break
    return w[1:], float(w[0])


@dataclass(frozen=True)
class FusionModel:
    """A fitted fusion: standardisation, coefficients and intercept over named inputs."""

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    penalty: float

    @classmethod
    def fit(cls, x: NDArray, y: NDArray, penalty: float) -> FusionModel:
        """Fit on raw inputs ``x`` (n, features + 1: the network logit last)."""
        mean, scale = _standardiser(x)
        coef, intercept = fit_logistic(_standardise(x, mean, scale), y, penalty)
        return cls(
            inputs=(*FUSION_FEATURES, LOGIT),
            mean=tuple(map(float, mean)),
            scale=tuple(map(float, scale)),
            coef=tuple(map(float, coef)),
            intercept=intercept,
            penalty=float(penalty),
        )

    def logits(self, x: NDArray) -> NDArray[np.float64]:
        """Fused logits of raw input rows (n, features + 1)."""
        z = _standardise(np.asarray(x, dtype=np.float64), np.array(self.mean), np.array(self.scale))
        return z @ np.array(self.coef) + self.intercept

    def fused_logit(self, features: Mapping[str, float] | None, network_logit: float) -> float:
        """The fused logit of one lesion from its outline's features (None: not describable)."""
        row = np.append(_as_vector(features), network_logit)[None]
        return float(self.logits(row)[0])

    def apply(self, image: NDArray[np.uint8], output: Any) -> Any:
        """A :class:`models.inference.LesionOutput` whose logit is the fused one (and which
        carries the outline's features for the descriptor rules)."""
        features = _describe(image, output.outline_mask, whole=True)  # analyser masks are whole
        fused = self.fused_logit(features, output.malignancy_logit)
        return dataclasses.replace(output, malignancy_logit=fused, features=features)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON for the bundle metadata."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FusionModel:
        """Inverse of :meth:`to_dict`.

        Raises:
            ModelError: the inputs are not this module's features, or lengths differ.
        """
        try:
            model = cls(
                inputs=tuple(data["inputs"]),
                mean=tuple(map(float, data["mean"])),
                scale=tuple(map(float, data["scale"])),
                coef=tuple(map(float, data["coef"])),
                intercept=float(data["intercept"]),
                penalty=float(data["penalty"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelError(f"malformed fusion in the bundle metadata: {e}") from e
        expected = (*FUSION_FEATURES, LOGIT)
        if model.inputs != expected or not (
            len(model.mean) == len(model.scale) == len(model.coef) == len(expected)
        ):
            raise ModelError("the bundle's fusion was fitted on other features than this console's")
        return model


def _standardiser(x: NDArray) -> tuple[NDArray, NDArray]:
    valid = np.isfinite(x)
    count = np.maximum(valid.sum(axis=0), 1)
    mean = np.where(valid, x, 0.0).sum(axis=0) / count
    scale = np.sqrt(np.where(valid, (x - mean) ** 2, 0.0).sum(axis=0) / count)
    return mean, np.where(scale > 1e-12, scale, 1.0)


def _standardise(x: NDArray, mean: NDArray, scale: NDArray) -> NDArray:
    z = (x - mean) / scale
    z = np.where(np.isfinite(z), z, 0.0)  # an outline that could not be described: the mean
    return np.clip(z, -CLIP_SD, CLIP_SD)


def group_folds(groups: Sequence[str], y: NDArray, k: int, seed: int) -> NDArray[np.int64]:
    """Fold index per case: whole groups, dealt per label so both classes reach every fold."""
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    label_of = {g: 0 for g in names}
    for g, label in zip(groups, y, strict=True):
        label_of[g] = max(label_of[g], int(label))
    fold_of: dict[str, int] = {}
    for label in (0, 1):
        chosen = [g for g in names if label_of[g] == label]
        for i, position in enumerate(rng.permutation(len(chosen))):
            fold_of[chosen[position]] = i % k
    return np.array([fold_of[g] for g in groups])


def cross_fitted_logits(
    x: NDArray,
    y: NDArray,
    groups: Sequence[str],
    penalty: float,
    *,
    k: int = 5,
    seed: int = 0,
    folds: NDArray | None = None,
) -> NDArray[np.float64]:
    """Out-of-fold fused logits: each case scored by a fit on the other groups' cases only.

    Args:
        x: raw inputs (n, features + 1).
        y: labels.
        groups: group per case; a group never straddles folds.
        penalty: ridge penalty.
        k: folds.
        seed: fold seed.
        folds: fold index per case (default: groups dealt per label, :func:`group_folds`).
    """
    folds = group_folds(groups, y, k, seed) if folds is None else np.asarray(folds)
    out = np.empty(len(y))
    for fold in range(k):
        held = folds == fold
        if not held.any():
            continue
        model = FusionModel.fit(x[~held], y[~held], penalty)
        out[held] = model.logits(x[held])
    return out


def _log_loss(y: NDArray, z: NDArray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def _best_penalty(x: NDArray, y: NDArray, groups: Sequence[str], k: int, seed: int) -> float:
    """The ridge penalty with the lowest cross-fitted log-loss."""
    losses = {
        p: _log_loss(y, cross_fitted_logits(x, y, groups, p, k=k, seed=seed)) for p in PENALTIES
    }
    return min(losses, key=losses.get)


def choose_fusion(
    features: NDArray,
    network_logits: NDArray,
    y: NDArray,
    groups: Sequence[str],
    *,
    k: int = 5,
    seed: int = 0,
) -> tuple[FusionModel | None, NDArray[np.float64], dict[str, Any]]:
    """Fit the fusion cross-fitted and keep it only if it beats the network alone out of fold.

    Args:
        features: :func:`feature_vector` rows of the cases (n, features).
        network_logits: the network's logits for the same cases (never its training cases).
        y: labels.
        groups: patient/duplicate group per case (folds keep groups whole).
        k: cross-fitting folds.
        seed: fold seed.

    Returns:
        ``(model, logits, report)``: the fusion fitted on all cases (None when the network
        alone is as good out of fold), the logits to calibrate and threshold with (cross-fitted
        fused logits, or the network's), and the out-of-fold AUCs and penalty that decided it.
    """
    y = np.asarray(y, dtype=np.float64)
    logits = np.asarray(network_logits, dtype=np.float64)
    x = np.column_stack([np.asarray(features, dtype=np.float64), logits])
    if len(np.unique(y)) < 2 or len(set(groups)) < 2 * k:
        return None, logits, {"used": False, "reason": "too few cases or one class"}
    penalty = _best_penalty(x, y, groups, k, seed)
    fused = cross_fitted_logits(x, y, groups, penalty, k=k, seed=seed)
    report = {
        "auc_network": round(auc(y, logits), 4),
        "auc_fused_cross_fitted": round(auc(y, fused), 4),
        "penalty": penalty,
        "cases": len(y),
        "folds": k,
    }
    if not report["auc_fused_cross_fitted"] > report["auc_network"]:
        return None, logits, {**report, "used": False}
    return FusionModel.fit(x, y, penalty), fused, {**report, "used": True}


def fit_stacked(
    features: NDArray,
    network_logits: NDArray,
    y: NDArray,
    groups: Sequence[str],
    sites: Sequence[str],
    *,
    k: int = 5,
    seed: int = 0,
) -> tuple[FusionModel | None, dict[str, Any]]:
    """Fit the fusion on cross-validation's held-out lesions (stacking).

    Each row must come from a network that never trained on that lesion (a fold network on its
    held-out fold). The penalty is chosen by cross-fitted log-loss over these rows, and the
    report gives their cross-fitted AUCs, fused and network alone, pooled and per site: the
    cross-validated evidence for the fusion. Whether the final network ships it is decided on
    its own validation cases (:func:`judge_fusion`).

    Args:
        features: :func:`feature_vector` rows (n, features).
        network_logits: the fold networks' logits for the same lesions.
        y: labels.
        groups: patient/duplicate group per lesion.
        sites: site per lesion (for the report).
        k: cross-fitting folds.
        seed: fold seed.

    Returns:
        ``(model, report)``: the fusion fitted on every row (None when there are too few cases or
        one class), and the report.
    """
    y = np.asarray(y, dtype=np.float64)
    logits = np.asarray(network_logits, dtype=np.float64)
    x = np.column_stack([np.asarray(features, dtype=np.float64), logits])
    if len(np.unique(y)) < 2 or len(set(groups)) < 2 * k:
        return None, {"fitted_on": "out-of-fold", "reason": "too few cases or one class"}
    penalty = _best_penalty(x, y, groups, k, seed)
    fused = cross_fitted_logits(x, y, groups, penalty, k=k, seed=seed)
    report: dict[str, Any] = {
        "fitted_on": "out-of-fold",
        "cases": len(y),
        "penalty": penalty,
        "cv_auc_network": round(auc(y, logits), 4),
        "cv_auc_fused_cross_fitted": round(auc(y, fused), 4),
        "per_site": {},
    }
    site_of = np.asarray(sites)
    for site in sorted(set(site_of.tolist())):
        chosen = site_of == site
        if len(np.unique(y[chosen])) == 2:
            report["per_site"][site] = {
                "cases": int(chosen.sum()),
                "auc_network": round(auc(y[chosen], logits[chosen]), 4),
                "auc_fused_cross_fitted": round(auc(y[chosen], fused[chosen]), 4),
            }
    return FusionModel.fit(x, y, penalty), report


def judge_fusion(
    model: FusionModel, features: NDArray, network_logits: NDArray, y: NDArray
) -> tuple[bool, NDArray[np.float64], dict[str, Any]]:
    """Judge a fusion fitted elsewhere on cases it never saw (the final network's validation).

    Returns:
        ``(used, logits, report)``: whether it beats the network alone there, the logits to
        calibrate and threshold with (fused when used, else the network's), and both AUCs.
    """
    y = np.asarray(y, dtype=np.float64)
    logits = np.asarray(network_logits, dtype=np.float64)
    if len(np.unique(y)) < 2:
        return False, logits, {"used": False, "reason": "validation holds one class"}
    fused = model.logits(np.column_stack([np.asarray(features, dtype=np.float64), logits]))
    report = {
        "validation_cases": len(y),
        "auc_network": round(auc(y, logits), 4),
        "auc_fused": round(auc(y, fused), 4),
    }
    used = report["auc_fused"] > report["auc_network"]
    return used, (fused if used else logits), {**report, "used": used}
