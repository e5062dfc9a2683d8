"""Continual-learning cycles: where a cycle starts, and how much it forgot.

A cycle ``N >= 1`` starts from the released bundle (``--init``): its weights, its network recipe
and, per site, the registry version it was trained on (``training_data.registries`` in its
metadata). Hospitals then train on the eligible cases added since that version plus a rehearsal
sample of earlier ones (:mod:`federation.site`).

:func:`forgetting_summary` turns an accuracy matrix ``R[t][k]`` (AUC after cycle ``t`` on the
data of cycle ``k``) into the usual continual-learning measures (Lopez-Paz & Ranzato 2017;
Chaudhry et al. 2018): backward transfer ``BWT = mean_k<T (R[T][k] - R[k][k])`` and forgetting
``F = mean_k<T max_t<T (R[t][k]) - R[T][k]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from federation.exceptions import FederationConfigError
from models.bundle import BundleError, load_metadata

__all__ = ["forgetting_summary", "next_version", "since_from_bundle"]


def since_from_bundle(bundle: Path) -> dict[str, int]:
    """Site id → registry version the bundle was trained on (empty if it does not say).

    Raises:
        FederationConfigError: not a readable, intact bundle.
    """
    try:
        metadata = load_metadata(bundle)
    except BundleError as e:
        raise FederationConfigError(f"--init {bundle}: {e}") from e
    registries = metadata.training_data.get("registries") or {}
    out = {}
    for site, info in registries.items():
        if isinstance(info, Mapping) and "version" in info:
            out[str(site)] = int(info["version"])
    return out


def next_version(parent: str | None, cycle: int) -> str:
    """Default version of a candidate: the parent's next minor, or ``0.<cycle+1>.0``."""
    if parent:
        core = parent.split("-")[0].split("+")[0]
        major, minor, _ = (int(x) for x in core.split("."))
        return f"{major}.{minor + 1}.0"
    return f"0.{cycle + 1}.0"


def forgetting_summary(matrix: Sequence[Sequence[float | None]]) -> dict[str, Any]:
    """Backward transfer and forgetting from ``R[t][k]`` (t = after cycle, k = cycle's data).

    Args:
        matrix: square lower-triangular matrix of scores; entries above the diagonal ignored.

    Returns:
        ``{"bwt": …, "forgetting": …, "per_cycle": [{"cycle", "just_learned", "final",
        "best_before_final", "forgetting"}]}``; None where undefined (a single cycle).
    """
    t_final = len(matrix) - 1
    rows = []
    for k in range(t_final):
        learned = matrix[k][k]
        final = matrix[t_final][k]
        earlier = [matrix[t][k] for t in range(k, t_final) if matrix[t][k] is not None]
        best = max(earlier) if earlier else None
        rows.append(
            {
                "cycle": k,
                "just_learned": learned,
                "final": final,
                "best_before_final": best,
                "forgetting": None if best is None or final is None else best - final,
                "transfer": None if learned is None or final is None else final - learned,
            }
        )
    transfers = [r["transfer"] for r in rows if r["transfer"] is not None]
    forgets = [r["forgetting"] for r in rows if r["forgetting"] is not None]
    return {
        "bwt": float(np.mean(transfers)) if transfers else None,
        "forgetting": float(np.mean(forgets)) if forgets else None,
        "per_cycle": rows,
    }
