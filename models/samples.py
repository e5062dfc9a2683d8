"""Turn registry cases and locked test cases into :class:`LesionSample`, and split them fairly.

This is the one place where ``models`` reads ``data_registry``: only eligible lesion cases train,
and every split keeps a patient's images and a duplicate group's copies on one side.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from data_registry import LockedTestSet, Registry
from data_registry.schema import Descriptors
from models.data import LesionSample, encode_descriptors
from models.exceptions import DataError


def samples_from_registry(registry: Registry, *, since: int | None = None) -> list[LesionSample]:
    """The registry's eligible benign and malignant cases (added after ``since``, if given)."""
    samples = []
    for entry in registry.eligible(since=since):
        case = entry.case
        if not case.is_lesion or case.seed is None:
            continue
        mask = registry.mask(entry)
        assert mask is not None  # lesion cases always carry a mask (schema rule)
        samples.append(
            LesionSample(
                case_id=case.case_id,
                site_id=case.site_id,
                group_id=f"{case.site_id}/{entry.group}",
                image=registry.image(entry),
                mask=mask,
                seed=(case.seed.x, case.seed.y),
                label=int(case.label or 0),
                descriptors=encode_descriptors(case.descriptors),
                device=case.device,
            )
        )
    return samples


def samples_from_registries(paths: Iterable[Path]) -> list[LesionSample]:
    """Eligible lesions of several site registries, in site order."""
    samples: list[LesionSample] = []
    for path in paths:
        samples.extend(samples_from_registry(Registry(path)))
    if not samples:
        raise DataError("the given registries hold no eligible benign or malignant case")
    return samples


def samples_from_testset(locked: LockedTestSet) -> list[LesionSample]:
    """The locked set's lesions; verify the set before calling this."""
    samples = []
    for record in locked.cases:
        seed = record["seed"]
        samples.append(
            LesionSample(
                case_id=str(record["case_id"]),
                site_id=str(record["site_id"]),
                group_id=f"{record['site_id']}/{record['patient_id']}",
                image=locked.image(record),
                mask=locked.mask(record),
                seed=(int(seed["x"]), int(seed["y"])),
                label=int(record["label"]),
                descriptors=encode_descriptors(Descriptors(**record["descriptors"])),
                device=record.get("device"),
            )
        )
    return samples


def split_by_group(
    samples: Sequence[LesionSample], fraction: float, seed: int
) -> tuple[list[LesionSample], list[LesionSample]]:
    """Split off about ``fraction`` of every site × label stratum, whole groups at a time.

    Returns:
        (rest, held_out)
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction {fraction}: expected a number between 0 and 1")
    rng = np.random.default_rng(seed)
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(sample.group_id, []).append(index)
    strata: dict[tuple[str, int], list[str]] = {}
    for group, members in sorted(groups.items()):
        label = max(samples[i].label for i in members)
        strata.setdefault((samples[members[0]].site_id, label), []).append(group)
    held: set[str] = set()
    for names in strata.values():
        target = fraction * sum(len(groups[g]) for g in names)
        taken = 0
        for position in rng.permutation(len(names)):
            if taken >= target - 0.5:
                break
            held.add(names[position])
            taken += len(groups[names[position]])
    rest = [s for s in samples if s.group_id not in held]
    held_out = [s for s in samples if s.group_id in held]
    return rest, held_out
