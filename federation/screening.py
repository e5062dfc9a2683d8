"""Update screening: drop hospital replies that cannot be honest before any aggregation.

Rules, in order:

1. the reply's weights have other names or shapes than the global model → ``structure``;
2. the aggregation weight (``num-examples``) is not a positive finite number → ``weight``;
3. any weight is NaN or infinite → ``non-finite``;
4. the update norm ``||w_site - w_global||`` exceeds ``factor ×`` the median update norm of the
   round's remaining replies → ``norm`` (judged only with at least 3 replies: with two, the
   median cannot tell which one is wrong).

The norm covers the trained parameters, not BatchNorm running statistics
(``*.running_mean``/``*.running_var``): those are averages of the site's activations, grow with
the amount of local data and dominated the norm of honest updates in the real-data benchmark
(a site with 12× more cases had a 12× larger norm, all of it from running statistics, while its
parameter update was in line with the others). Running statistics are still checked for
non-finite values; a poisoning of running statistics alone is left to Krum/Bulyan.

The norm is computed layer by layer in float64 without copying the updates, so screening costs
one pass over the replies and no more than one layer of extra memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Dropped",
    "ScreeningReport",
    "Update",
    "is_statistic",
    "screen_updates",
    "update_norm",
]

MIN_FOR_NORM_RULE = 3


@dataclass(frozen=True, eq=False)
class Update:
    """One hospital's reply, as screening sees it.

    Attributes:
        node_id: the SuperNode that sent it.
        site_id: the site it reports.
        arrays: its weights by name.
        weight: its aggregation weight (``num-examples``).
        shapes: the arrays' shapes when known without reading them (else taken from
            ``arrays``).
    """

    node_id: int
    site_id: str
    arrays: Mapping[str, np.ndarray]
    weight: float
    shapes: Mapping[str, tuple[int, ...]] | None = None

    def shape_of(self, name: str) -> tuple[int, ...]:
        if self.shapes is not None:
            return tuple(self.shapes[name])
        return tuple(np.shape(self.arrays[name]))


@dataclass(frozen=True)
class Dropped:
    """A reply screening refused, with the reason (logged and kept in the history)."""

    node_id: int
    site_id: str
    reason: str
    detail: str
    norm: float | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "site": self.site_id,
            "reason": self.reason,
            "detail": self.detail,
            "norm": self.norm,
        }


@dataclass(frozen=True)
class ScreeningReport:
    """Outcome of :func:`screen_updates`.

    Attributes:
        kept: indices of the accepted updates, in input order.
        dropped: the refused ones.
        norms: update norm per input (None where it could not be computed).
        median_norm: median norm of the updates that passed rules 1–3.
    """

    kept: list[int]
    dropped: list[Dropped] = field(default_factory=list)
    norms: list[float | None] = field(default_factory=list)
    median_norm: float | None = None


STATISTICS_SUFFIXES = ("running_mean", "running_var")
"""Names of normalisation statistics: checked for finite values, left out of the norm rule."""


def is_statistic(name: str) -> bool:
    """Whether a tensor is a running statistic (BatchNorm) rather than a trained parameter."""
    return name.endswith(STATISTICS_SUFFIXES)


def update_norm(arrays: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> float:
    """``||arrays - reference||_2`` over the trained parameters; NaN if any tensor (statistics
    included) holds a non-finite value."""
    total = 0.0
    finite = True
    for name, ref in reference.items():
        value = np.asarray(arrays[name])
        if is_statistic(name):
            finite = finite and bool(np.isfinite(value).all())
            continue
        diff = (value - np.asarray(ref)).ravel().astype(np.float64)
        total += float(np.einsum("i,i->", diff, diff))  # not BLAS: no thread oversubscription
    return math.sqrt(total) if finite and math.isfinite(total) else float("nan")


def _structure_problem(update: Update, reference: Mapping[str, np.ndarray]) -> str | None:
    names = set(update.arrays)
    if names != set(reference):
        missing = sorted(set(reference) - names)[:3]
        extra = sorted(names - set(reference))[:3]
        return f"names differ (missing {missing}, unexpected {extra})"
    for name, ref in reference.items():
        if update.shape_of(name) != tuple(np.shape(ref)):
            return f"{name}: shape {update.shape_of(name)} != {np.shape(ref)}"
    return None


def screen_updates(
    reference: Mapping[str, np.ndarray],
    updates: Sequence[Update],
    *,
    norm_factor: float,
) -> ScreeningReport:
    """Apply the screening rules (module docstring) to one round's replies.

    Args:
        reference: the global weights the round started from.
        updates: the replies.
        norm_factor: the ``factor`` of the norm rule.

    Returns:
        which replies to keep and why the others were dropped.
    """
    dropped: list[Dropped] = []
    norms: list[float | None] = [None] * len(updates)
    candidates: list[int] = []
    for index, update in enumerate(updates):
        problem = _structure_problem(update, reference)
        if problem:
            dropped.append(Dropped(update.node_id, update.site_id, "structure", problem))
            continue
        if not (math.isfinite(update.weight) and update.weight > 0):
            detail = f"num-examples = {update.weight}"
            dropped.append(Dropped(update.node_id, update.site_id, "weight", detail))
            continue
        norm = update_norm(update.arrays, reference)
        if not math.isfinite(norm):
            detail = "weights contain NaN or infinite values"
            dropped.append(Dropped(update.node_id, update.site_id, "non-finite", detail))
            continue
        norms[index] = norm
        candidates.append(index)
    median = float(np.median([norms[i] for i in candidates])) if candidates else None
    kept = []
    for index in candidates:
        norm = norms[index]
        assert norm is not None
        too_far = (
            len(candidates) >= MIN_FOR_NORM_RULE
            and median is not None
            and norm > norm_factor * max(median, 1e-12)
        )
        if too_far:
            update = updates[index]
            detail = f"update norm {norm:.4g} > {norm_factor:g} × median {median:.4g}"
            dropped.append(Dropped(update.node_id, update.site_id, "norm", detail, norm))
        else:
            kept.append(index)
    return ScreeningReport(kept=kept, dropped=dropped, norms=norms, median_norm=median)
