"""A hospital's data for one federated cycle: new cases, a rehearsal sample, local validation.

Within a cycle a hospital trains on the eligible cases added to its registry after the version
the current release was trained on (``since``), plus ``rehearsal_size`` earlier eligible cases
drawn once per cycle; at cycle 0 (or for a site new to the federation) it trains on all of
them. Local validation holds out whole patient groups chosen by a hash of the group id, so a
case never moves between training and validation as the registry grows.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from data_registry import Registry, RegistryError
from federation.exceptions import SiteDataError
from models.data import LesionSample
from models.samples import samples_from_registry

__all__ = ["SiteData", "load_site", "site_seed", "validation_split"]


@dataclass(frozen=True, eq=False)
class SiteData:
    """What one hospital trains and validates on in a cycle.

    Attributes:
        site_id: the registry's site id.
        since: the registry version new cases are counted from (None: all are new).
        registry_version: the registry version read.
        content_hash: that version's content hash (lineage).
        train: training samples (new cases, then the rehearsal sample).
        val: local validation samples (never trained on, any cycle).
        new_cases: training cases added after ``since``.
        rehearsal_cases: earlier training cases mixed in.
        eligible_cases: all eligible lesions in the registry version.
    """

    site_id: str
    since: int | None
    registry_version: int
    content_hash: str
    train: list[LesionSample]
    val: list[LesionSample]
    new_cases: int
    rehearsal_cases: int
    eligible_cases: int


def site_seed(site_id: str, seed: int) -> int:
    """A per-site seed derived from the run's seed (stable across processes)."""
    return (seed * 1_000_003 + zlib.crc32(site_id.encode())) % (2**31)


def _in_validation(group_id: str, fraction: float, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}:{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def validation_split(
    samples: Sequence[LesionSample], fraction: float, seed: int
) -> tuple[list[LesionSample], list[LesionSample]]:
    """Split by patient group with a hash: stable as cases are added.

    Returns:
        (train, val)
    """
    train = [s for s in samples if not _in_validation(s.group_id, fraction, seed)]
    val = [s for s in samples if _in_validation(s.group_id, fraction, seed)]
    return train, val


def load_site(
    registry: Path,
    *,
    since: Mapping[str, int] | None,
    rehearsal_size: int,
    val_fraction: float,
    seed: int,
    cycle: int,
) -> SiteData:
    """Read a hospital's current registry version and choose this cycle's cases.

    Args:
        registry: the registry folder.
        since: site id → registry version the current release was trained on; a site not
            listed (or None) trains on every eligible case.
        rehearsal_size: earlier training cases to mix in (when ``since`` is given).
        val_fraction: share of patient groups held out for local validation.
        seed: the run's seed.
        cycle: the cycle number (varies the rehearsal draw between cycles).

    Returns:
        the site's data (cached per registry version and settings within a process).

    Raises:
        SiteDataError: not a registry, or ``since`` is newer than the registry.
    """
    try:
        head = Registry(registry).version
    except RegistryError as e:
        raise SiteDataError(f"{registry}: {e}") from e
    since_items = tuple(sorted((since or {}).items()))
    return _load_site(
        Path(registry).resolve(), head, since_items, rehearsal_size, val_fraction, seed, cycle
    )


@lru_cache(maxsize=4)
def _load_site(
    root: Path,
    version: int,
    since_items: tuple[tuple[str, int], ...],
    rehearsal_size: int,
    val_fraction: float,
    seed: int,
    cycle: int,
) -> SiteData:
    registry = Registry(root, version)
    since = dict(since_items).get(registry.site_id)
    if since is not None and since > version:
        raise SiteDataError(
            f"{root}: the release was trained on version {since}, newer than this registry "
            f"({version}); is this the right registry?"
        )
    everything = samples_from_registry(registry)
    if not everything:
        raise SiteDataError(f"{root}: no eligible benign or malignant case")
    train_all, val = validation_split(everything, val_fraction, seed)
    if since is None or since == 0:
        new, rehearsal = train_all, []
    else:
        new_ids = {e.case.case_id for e in registry.eligible(since=since)}
        new = [s for s in train_all if s.case_id in new_ids]
        earlier = [s for s in train_all if s.case_id not in new_ids]
        rng = np.random.default_rng(site_seed(registry.site_id, seed * 1000 + cycle))
        take = min(rehearsal_size, len(earlier))
        rehearsal = [earlier[i] for i in sorted(rng.choice(len(earlier), take, replace=False))]
    return SiteData(
        site_id=registry.site_id,
        since=since,
        registry_version=version,
        content_hash=registry.state.summary.content_hash,
        train=[*new, *rehearsal],
        val=val,
        new_cases=len(new),
        rehearsal_cases=len(rehearsal),
        eligible_cases=len(everything),
    )
