"""Scoring lesion analyses against reference labels: malignancy, masks and descriptors.

Used on validation (to calibrate and choose descriptor sources), on the vendor's locked test set
(every release and every federated round), and in the benchmarks.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_registry.schema import Margin
from models import metrics
from models.analysis import combine_descriptors, descriptors_from_heads, descriptors_from_rules
from models.calibration import OperatingPoints, apply_temperature
from models.data import HEAD_VOCABULARIES, LesionSample
from models.inference import LesionOutput

SIMPLE_DESCRIPTORS = ("shape", "orientation", "echo_pattern", "posterior_features")
Analyse = Callable[[np.ndarray, tuple[int, int]], LesionOutput]


def analyse_all(
    samples: Sequence[LesionSample],
    analyse: Analyse,
    *,
    progress: bool = False,
    desc: str = "analyse",
) -> list[LesionOutput]:
    """Run ``analyse(image, seed)`` on every sample."""
    bar = tqdm(samples, desc=desc, unit="lesion", disable=not progress)
    return [analyse(s.image, s.seed) for s in bar]


def _reference(sample: LesionSample, name: str) -> str | None:
    if name == "margin":
        index = sample.descriptors.get("margin", -1)
        return None if index < 0 else HEAD_VOCABULARIES["margin"][index]
    index = sample.descriptors.get(name, -1)
    return None if index < 0 else HEAD_VOCABULARIES[name][index]


def _circumscribed(margin: Sequence[str] | None) -> str | None:
    if not margin:
        return None
    return "circumscribed" if Margin.CIRCUMSCRIBED.value in margin else "not circumscribed"


def _agreement(samples, predicted: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for name in (*SIMPLE_DESCRIPTORS, "margin"):
        reference = [_reference(s, name) for s in samples]
        if name == "margin":
            guess = [_circumscribed(p.get("margin")) for p in predicted]
        else:
            guess = [p.get(name) for p in predicted]
        if all(r is None for r in reference):
            continue
        out[name] = metrics.descriptor_agreement(reference, guess).to_dict()
    return out


def choose_descriptor_sources(
    samples: Sequence[LesionSample], outputs: Sequence[LesionOutput]
) -> tuple[dict[str, str], dict[str, Any]]:
    """Per descriptor, the source (learned head or mask rules) with the higher kappa.

    Without reference labels for a descriptor the rules are kept: they are defined by the
    lexicon itself (e.g. taller than wide is not parallel) and do not depend on training data.
    """
    heads = [descriptors_from_heads(o.descriptor_probs) for o in outputs]
    rules = [
        descriptors_from_rules(s.image, o.outline_mask)
        for s, o in zip(samples, outputs, strict=True)
    ]
    by_heads, by_rules = _agreement(samples, heads), _agreement(samples, rules)
    sources = {}
    for name in (*SIMPLE_DESCRIPTORS, "margin"):
        k_heads = (by_heads.get(name) or {}).get("kappa")
        k_rules = (by_rules.get(name) or {}).get("kappa")
        better = k_heads is not None and (k_rules is None or k_heads > k_rules)
        sources[name] = "heads" if better else "rules"
    return sources, {"heads": by_heads, "rules": by_rules}


def score(
    samples: Sequence[LesionSample],
    outputs: Sequence[LesionOutput],
    *,
    temperature: float = 1.0,
    points: OperatingPoints | None = None,
    sources: Mapping[str, str] | None = None,
    n_bootstrap: int = metrics.N_BOOTSTRAP,
) -> dict[str, Any]:
    """Metrics pooled, per site and per scanner, with the per-case values the reports plot."""
    y = np.array([s.label for s in samples])
    logits = np.array([o.malignancy_logit for o in outputs])
    prob = apply_temperature(logits, temperature)
    dice = metrics.dice_scores([o.mask for o in outputs], [s.mask for s in samples])
    groups = {
        "site": [s.site_id for s in samples],
        "scanner": [s.device or "unknown" for s in samples],
    }
    thresholds = points.thresholds() if points else metrics.DEFAULT_THRESHOLDS
    summary = metrics.summarize(
        y, prob, groups=groups, thresholds=thresholds, dice_per_case=dice, n_bootstrap=n_bootstrap
    )
    result: dict[str, Any] = {
        "summary": summary,
        "y_true": y.tolist(),
        "prob": prob.tolist(),
        "dice": [float(d) for d in dice],
        "groups": groups,
    }
    if sources is not None:
        chosen = [
            combine_descriptors(s.image, o, sources).model_dump(mode="json")
            for s, o in zip(samples, outputs, strict=True)
        ]
        result["descriptor_agreement"] = _agreement(samples, chosen)
    return result


def headline(result: Mapping[str, Any]) -> dict[str, Any]:
    """The few numbers a history row or a log line needs."""
    pooled = result["summary"]["pooled"]
    row = {"auc": pooled["auc"]["auc"], "dice": pooled.get("dice_mean"), "ece": pooled["ece"]}
    for mode, values in pooled["thresholds"].items():
        row[mode] = {"sensitivity": values["sensitivity"], "specificity": values["specificity"]}
    return row
