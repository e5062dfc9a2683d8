"""Ingest a site's export into its registry: validate, store, group copies, decide eligibility."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tqdm import tqdm

from data_registry import eligibility
from data_registry.clock import utc_now
from data_registry.exceptions import RegistryStateError
from data_registry.exclusion import Exclusion
from data_registry.files import write_atomic
from data_registry.hashing import connected_groups, copy_probes, near_pairs
from data_registry.importers.base import SourceCase
from data_registry.intake import Admitted, Quarantined, admit
from data_registry.registry import (
    SETTINGS_FILE,
    DuplicateSummary,
    Entry,
    IngestLock,
    IngestSummary,
    QuarantineRecord,
    Registry,
    RegistrySettings,
    VersionState,
    dumps_canonical,
    write_version,
)
from data_registry.schema import Case, check_site_id


@dataclass(frozen=True)
class _Item:
    case: Case
    phash: str
    added_in: int
    probes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    entries: list[Entry]
    duplicates: DuplicateSummary
    locked_matches: int


def _exact_pairs(items: Sequence[_Item]) -> set[tuple[int, int]]:
    first_seen: dict[str, int] = {}
    pairs: set[tuple[int, int]] = set()
    for index, item in enumerate(items):
        for digest in (item.case.source_sha256, item.case.image_sha256):
            if digest in first_seen and first_seen[digest] != index:
                pairs.add((first_seen[digest], index))
            first_seen.setdefault(digest, index)
    return pairs


def _patient_pairs(items: Sequence[_Item]) -> list[tuple[int, int]]:
    first: dict[str, int] = {}
    pairs = []
    for index, item in enumerate(items):
        if item.case.patient_id in first:
            pairs.append((first[item.case.patient_id], index))
        first.setdefault(item.case.patient_id, index)
    return pairs


def decide(items: Sequence[_Item], version: int, exclusion: Exclusion | None) -> Decision:
    """Group copies and patients, then decide each case's eligibility (see `eligibility`)."""
    items = sorted(items, key=lambda item: item.case.case_id)
    exact = _exact_pairs(items)
    copies = set(near_pairs([item.phash for item in items])) | exact
    copy_group = connected_groups(len(items), sorted(copies))
    split_group = connected_groups(len(items), sorted(copies) + _patient_pairs(items))
    locked = [False] * len(items)
    if exclusion is not None:
        locked = exclusion.locked(
            [item.case for item in items],
            [item.phash for item in items],
            [item.probes for item in items],
        )
    locked_groups = {split_group[i] for i, is_locked in enumerate(locked) if is_locked}

    members: dict[int, list[int]] = {}
    for index, group in enumerate(copy_group):
        members.setdefault(group, []).append(index)

    reasons: list[list[str]] = [eligibility.reference_reasons(item.case) for item in items]
    for group_members in members.values():
        if len(group_members) < 2:
            continue
        labels = {items[i].case.pathology for i in group_members}
        if len(labels) > 1:
            for i in group_members:
                reasons[i].append(eligibility.CONFLICTING_DUPLICATE)
            continue
        keeper = min(group_members, key=lambda i: (items[i].added_in, items[i].case.case_id))
        for i in group_members:
            if i != keeper:
                reasons[i].append(f"{eligibility.DUPLICATE_OF}:{items[keeper].case.case_id}")
    for index, group in enumerate(split_group):
        if group in locked_groups:
            reasons[index].append(eligibility.LOCKED_TEST)

    def is_new(*indices: int) -> bool:
        return any(items[i].added_in == version for i in indices)

    conflicting = [
        (items[a].case.case_id, items[b].case.case_id)
        for a, b in sorted(copies)
        if is_new(a, b) and items[a].case.pathology != items[b].case.pathology
    ]
    duplicates = DuplicateSummary(
        exact=sum(is_new(a, b) for a, b in exact),
        near=sum(is_new(a, b) for a, b in copies - exact),
        conflicting=conflicting,
    )
    entries = [
        Entry(
            case=item.case,
            phash=item.phash,
            probes=item.probes,
            added_in=item.added_in,
            group=f"g-{items[split_group[index]].case.case_id}",
            eligible=not reasons[index],
            reasons=tuple(reasons[index]),
        )
        for index, item in enumerate(items)
    ]
    locked_matches = sum(1 for i, is_locked in enumerate(locked) if is_locked and is_new(i))
    return Decision(entries, duplicates, locked_matches)


def _changed(registered: Case, exported: Case) -> bool:
    """Whether the export now states something else about a registered image."""
    ignore = {"ingested_at"}
    return registered.model_dump(exclude=ignore) != exported.model_dump(exclude=ignore)


def _hints(new_entries: Sequence[Entry]) -> list[str]:
    """How to fix an ingest whose new cases may not train, where the fix is the site's to make."""
    unconfirmed = sum(eligibility.UNCONFIRMED in e.reasons for e in new_entries)
    if not new_entries or any(e.eligible for e in new_entries) or unconfirmed == 0:
        return []
    return [
        f"{unconfirmed} of {len(new_entries)} new cases state no reference standard "
        "(unconfirmed-reference), so none may train; if the site vouches for one, ingest the "
        "same export again with --assume-reference biopsy|surgery|follow-up (it is applied to "
        "the cases already registered)"
    ]


def _previous_item(registry: Registry, entry: Entry, exclusion: Exclusion | None) -> _Item:
    """A registered case; one registered before probes existed gets them from its stored image."""
    probes = entry.probes
    if not probes and exclusion is not None and exclusion.poses:
        probes = copy_probes(registry.image(entry))
    return _Item(entry.case, entry.phash, entry.added_in, probes)


def _store(root: Path, admitted: Admitted) -> None:
    write_atomic(root / admitted.case.image, admitted.image_png, durable=False)
    if admitted.mask_png is not None:
        write_atomic(root / admitted.case.masks[0], admitted.mask_png, durable=False)


def ingest(
    candidates: Iterable[SourceCase],
    registry_dir: Path,
    *,
    site_id: str,
    source: str,
    exclusion: Exclusion | None = None,
    settings: RegistrySettings | None = None,
    progress: bool = False,
    now: datetime | None = None,
) -> IngestSummary:
    """Add a site's export to its registry as a new version.

    Args:
        candidates: what the site's importer found.
        registry_dir: the site's registry (created on first ingest).
        site_id: the site; must match an existing registry's.
        source: a short description of the export (importer kind and folder name).
        exclusion: the vendor's locked-test exclusion list.
        settings: the site's rules; given, they replace ``settings.json`` of the registry,
            else that file's are used.
        progress: show a progress bar.
        now: the ingest time (defaults to the current UTC time).

    Returns:
        The summary of the new version.

    Raises:
        SettingsError: ``site_id`` is not a valid site id.
        RegistryStateError: the registry belongs to another site or is being ingested.
    """
    check_site_id(site_id)
    registry_dir = Path(registry_dir)
    now = now or utc_now()
    with IngestLock(registry_dir):
        previous = Registry(registry_dir) if Registry.exists(registry_dir) else None
        if previous is not None and previous.site_id != site_id:
            raise RegistryStateError(
                f"{registry_dir}: registry of site {previous.site_id!r}, not {site_id!r}"
            )
        version = (previous.version if previous else 0) + 1
        if settings is not None:
            payload = settings.model_dump_json(indent=1, exclude_none=True)
            write_atomic(registry_dir / SETTINGS_FILE, payload.encode())
        else:
            settings = RegistrySettings.load(registry_dir)
        items = (
            [_previous_item(previous, e, exclusion) for e in previous.entries] if previous else []
        )
        known = {item.case.case_id: item.case.source_sha256 for item in items}
        position = {item.case.case_id: index for index, item in enumerate(items)}
        quarantine: list[QuarantineRecord] = []
        received = already_present = 0
        updated: set[str] = set()
        for candidate in tqdm(
            candidates, desc=f"ingest {site_id}", unit="img", disable=not progress
        ):
            received += 1
            result = admit(candidate, site_id=site_id, ingested_at=now)
            if isinstance(result, Admitted) and (problems := settings.problems(result.case)):
                result = Quarantined(
                    candidate.source_key, result.case.case_id, "invalid-field", problems[0]
                )
            if isinstance(result, Admitted) and result.case.case_id in known:
                if known[result.case.case_id] == result.case.source_sha256:
                    already_present += 1
                    index = position[result.case.case_id]
                    if _changed(items[index].case, result.case):  # e.g. a new attestation
                        items[index] = _Item(result.case, result.phash, version, result.probes)
                        updated.add(result.case.case_id)
                    continue
                result = Quarantined(
                    candidate.source_key,
                    result.case.case_id,
                    "case-id-conflict",
                    f"case_id {result.case.case_id} is already registered with another image",
                )
            if isinstance(result, Quarantined):
                quarantine.append(QuarantineRecord(**result.to_dict(), version=version))
                continue
            _store(registry_dir, result)
            known[result.case.case_id] = result.case.source_sha256
            items.append(_Item(result.case, result.phash, version, result.probes))

        decision = decide(items, version, exclusion)
        accepted_ids = {e.case.case_id for e in decision.entries}
        carried = [
            q
            for q in (previous.state.quarantine if previous else [])
            if q.case_id not in accepted_ids
        ]
        changed = [e for e in decision.entries if e.added_in == version]
        new_entries = [e for e in changed if e.case.case_id not in updated]
        content_hash = hashlib.sha256(
            dumps_canonical([e.model_dump(mode="json") for e in decision.entries]).encode()
        ).hexdigest()
        reasons: dict[str, int] = {}
        for record in quarantine:
            reasons[record.reason] = reasons.get(record.reason, 0) + 1
        summary = IngestSummary(
            site_id=site_id,
            version=version,
            received=received,
            accepted=len(new_entries),
            already_present=already_present,
            updated=len(updated),
            eligible=sum(e.eligible for e in new_entries),
            quarantined=reasons,
            duplicates=decision.duplicates,
            locked_test_matches=decision.locked_matches,
            eligible_total=sum(e.eligible for e in decision.entries),
            content_hash=content_hash,
            hints=_hints(changed),
        )
        os.sync()  # every stored image reaches the disk before the version that names it
        write_version(
            registry_dir,
            VersionState(
                site_id=site_id,
                version=version,
                created=now,
                source=source,
                summary=summary,
                entries=decision.entries,
                quarantine=carried + quarantine,
            ),
        )
    return summary
