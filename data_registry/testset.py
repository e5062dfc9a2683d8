"""The vendor's locked test set: a sealed, patient- and copy-disjoint slice of every source.

Layout of a locked set::

    DIR/manifest.json    every case: labels, descriptors, files and their sha256, a record hash
    DIR/SEAL             sha256 of the canonical manifest
    DIR/exclusion.json   hashes only, for hospital intake (``--exclude``)
    DIR/images/<site>/<case_id>.png, DIR/masks/<site>/<case_id>.png
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_registry import eligibility
from data_registry.clock import utc_now
from data_registry.exceptions import SourceError, TestSetIntegrityError
from data_registry.exclusion import Exclusion, patient_token
from data_registry.files import sha256_file, write_atomic
from data_registry.hashing import copy_poses
from data_registry.images import read_grey
from data_registry.importers import get_importer
from data_registry.ingest import _Item, decide
from data_registry.intake import Admitted, admit
from data_registry.registry import dumps_canonical

FORMAT_VERSION = 1
_TOP_FILES = ("manifest.json", "SEAL", "exclusion.json")
_TOP_FOLDERS = ("images", "masks")


@dataclass(frozen=True)
class SourceSpec:
    """One source of the test set: an importer kind and the export's folder."""

    kind: str
    path: Path
    assume_reference: str | None = None

    @classmethod
    def parse(cls, text: str) -> SourceSpec:
        """Parse ``KIND=PATH``."""
        kind, sep, path = text.partition("=")
        if not sep or not kind or not path:
            raise SourceError(
                f"--source {text!r}: expected KIND=PATH, e.g. busi=../shared/data/busi"
            )
        return cls(kind.strip(), Path(path.strip()))


def site_id_for(kind: str, root: Path) -> str:
    """The site a source belongs to: the importer's own rule, else its default."""
    importer = get_importer(kind)
    by_folder = getattr(importer, "site_id_for", None)
    return by_folder(root) if by_folder is not None else importer.default_site_id


def _record_hash(record: dict[str, object]) -> str:
    body = {k: v for k, v in record.items() if k != "record_sha256"}
    return hashlib.sha256(dumps_canonical(body).encode()).hexdigest()


def manifest_hash(manifest: dict[str, object]) -> str:
    return hashlib.sha256(dumps_canonical(manifest).encode()).hexdigest()


def _choose_groups(
    groups: dict[str, list[int]], labels: Sequence[int], fraction: float, rng: np.random.Generator
) -> set[str]:
    """Whole groups, label-stratified, until each stratum holds ``fraction`` of its cases."""
    chosen: set[str] = set()
    for stratum in (0, 1):
        names = sorted(
            g for g, members in groups.items() if max(labels[i] for i in members) == stratum
        )
        order = rng.permutation(len(names))
        total = sum(len(groups[g]) for g in names)
        target, taken = round(fraction * total), 0
        for position in order:
            if taken >= target:
                break
            chosen.add(names[position])
            taken += len(groups[names[position]])
    return chosen


def _admitted_lesions(
    spec: SourceSpec, site_id: str, now: datetime, progress: bool
) -> list[Admitted]:
    importer = get_importer(spec.kind)
    candidates = importer(spec.path, assume_reference=spec.assume_reference)
    admitted = []
    for candidate in tqdm(candidates, desc=f"read {site_id}", unit="img", disable=not progress):
        result = admit(candidate, site_id=site_id, ingested_at=now)
        if isinstance(result, Admitted) and result.case.is_lesion:
            admitted.append(result)
    return admitted


def lock_testset(
    sources: Sequence[SourceSpec],
    out: Path,
    *,
    fraction: float,
    seed: int,
    progress: bool = False,
) -> dict[str, object]:
    """Take, seal and write the locked test set; returns a summary with the manifest hash.

    Raises:
        SourceError: a source cannot be read, or ``fraction`` is outside (0, 1).
        FileExistsError: ``out`` already holds a locked set (a lock is never overwritten).
    """
    if not 0.0 < fraction < 1.0:
        raise SourceError(f"--fraction {fraction}: expected a number between 0 and 1")
    out = Path(out)
    if (out / "SEAL").exists():
        raise FileExistsError(f"{out}: already holds a locked test set; choose another --out")
    now = utc_now()
    rng = np.random.default_rng(seed)
    records, exclusion_hashes, exclusion_phash, patients = [], set(), [], set()
    poses: list[str] = []
    per_site: dict[str, dict[str, int]] = {}
    for spec in sources:
        site_id = site_id_for(spec.kind, spec.path)
        admitted = _admitted_lesions(spec, site_id, now, progress)
        by_id = {a.case.case_id: a for a in admitted}
        decision = decide([_Item(a.case, a.phash, 1) for a in admitted], 1, None)
        entries = decision.entries
        usable = [
            not any(
                r.startswith((eligibility.CONFLICTING_DUPLICATE, eligibility.DUPLICATE_OF))
                for r in e.reasons
            )
            for e in entries
        ]
        groups: dict[str, list[int]] = {}
        for index, entry in enumerate(entries):
            groups.setdefault(entry.group, []).append(index)
        labels = [entry.case.label or 0 for entry in entries]
        chosen = _choose_groups(
            {g: m for g, m in groups.items() if any(usable[i] for i in m)}, labels, fraction, rng
        )
        counts = {"benign": 0, "malignant": 0}
        for index, entry in enumerate(entries):
            if entry.group not in chosen:
                continue
            case = entry.case
            exclusion_hashes.update((case.source_sha256, case.image_sha256))
            exclusion_phash.append(entry.phash)
            poses.extend(copy_poses(by_id[case.case_id].image))
            patients.add(patient_token(site_id, case.patient_id))
            if not usable[index]:
                continue
            records.append(_write_case(out, site_id, by_id[case.case_id]))
            counts[case.pathology.value] += 1
        per_site[site_id] = counts
    records.sort(key=lambda r: (r["site_id"], r["case_id"]))
    manifest = {
        "format": FORMAT_VERSION,
        "created": now.isoformat(),
        "fraction": fraction,
        "seed": seed,
        "sources": [{"kind": s.kind, "site_id": site_id_for(s.kind, s.path)} for s in sources],
        "counts": per_site,
        "cases": records,
    }
    digest = manifest_hash(manifest)
    exclusion = Exclusion(
        manifest_hash=digest,
        sha256=frozenset(exclusion_hashes),
        phash=tuple(sorted(exclusion_phash)),
        patients=frozenset(patients),
        poses=tuple(sorted(set(poses))),
    )
    os.sync()  # the images reach the disk before the manifest that seals them
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1).encode())
    write_atomic(out / "exclusion.json", exclusion.to_json().encode())
    write_atomic(out / "SEAL", f"{digest}\n".encode())
    return {"out": str(out), "manifest_hash": digest, "cases": len(records), "per_site": per_site}


def _write_case(out: Path, site_id: str, admitted: Admitted) -> dict[str, object]:
    case = admitted.case
    image = f"images/{site_id}/{case.case_id}.png"
    mask = f"masks/{site_id}/{case.case_id}.png"
    assert admitted.mask_png is not None  # lesion cases always have a mask
    write_atomic(out / image, admitted.image_png, durable=False)
    write_atomic(out / mask, admitted.mask_png, durable=False)
    record: dict[str, object] = {
        "case_id": case.case_id,
        "patient_id": case.patient_id,
        "site_id": site_id,
        "pathology": case.pathology.value,
        "label": case.label,
        "reference_standard": case.reference_standard.value,
        "birads": case.birads.value if case.birads else None,
        "device": case.device,
        "descriptors": case.descriptors.model_dump(mode="json"),
        "seed": case.seed.model_dump() if case.seed else None,
        "image": image,
        "image_sha256": case.image_sha256,
        "mask": mask,
        "mask_sha256": hashlib.sha256(admitted.mask_png).hexdigest(),
    }
    record["record_sha256"] = _record_hash(record)
    return record


RECORD_FIELDS = (
    "case_id",
    "patient_id",
    "site_id",
    "pathology",
    "label",
    "reference_standard",
    "birads",
    "device",
    "descriptors",
    "seed",
    "image",
    "image_sha256",
    "mask",
    "mask_sha256",
    "record_sha256",
)


def _check_layout(path: Path, manifest: object) -> None:
    """The manifest's shape, so that a damaged one is a one-line error, never a KeyError."""
    if not isinstance(manifest, dict):
        raise TestSetIntegrityError(
            f"{path}: expected a JSON object with 'cases', got a {type(manifest).__name__}"
        )
    cases = manifest.get("cases")
    if not isinstance(cases, list):
        raise TestSetIntegrityError(f"{path}: expected a list under 'cases', got {cases!r:.40}")
    for index, record in enumerate(cases):
        if not isinstance(record, dict):
            raise TestSetIntegrityError(f"{path}: cases[{index}] is not a JSON object")
        missing = [name for name in RECORD_FIELDS if name not in record]
        if missing:
            raise TestSetIntegrityError(
                f"{path}: cases[{index}] ({record.get('case_id', '?')}) lacks {', '.join(missing)}"
            )
        for name in ("image", "mask"):
            if not isinstance(record[name], str) or not _inside(record[name]):
                raise TestSetIntegrityError(
                    f"{path}: cases[{index}].{name}: expected a relative path inside the set, "
                    f"got {record[name]!r}"
                )


def _inside(relative: str) -> bool:
    parts = Path(relative).parts
    return bool(parts) and not Path(relative).is_absolute() and ".." not in parts


class LockedTestSet:
    """Read access to a locked set; every use should start with :meth:`verify`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        path = self.root / "manifest.json"
        try:
            self.manifest = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise TestSetIntegrityError(f"{self.root}: no manifest.json (not a locked set)") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TestSetIntegrityError(f"{path}: not valid JSON ({e})") from e
        except OSError as e:
            raise TestSetIntegrityError(f"{path}: cannot be read ({e.strerror})") from e
        _check_layout(path, self.manifest)

    @property
    def cases(self) -> list[dict[str, object]]:
        return self.manifest["cases"]

    @property
    def manifest_hash(self) -> str:
        return manifest_hash(self.manifest)

    def image(self, record: dict[str, object]) -> np.ndarray:
        return read_grey(self.root / str(record["image"]))

    def mask(self, record: dict[str, object]) -> np.ndarray:
        return read_grey(self.root / str(record["mask"])) > 127

    def verify(self, expected_hash: str | None = None) -> str:
        """Check every byte, label and member against the seal; returns the manifest hash.

        Raises:
            TestSetIntegrityError: listing every difference found.
        """
        problems: list[str] = []
        listed: set[str] = set()
        for record in self.cases:
            name = record.get("case_id", "?")
            if record.get("record_sha256") != _record_hash(record):
                problems.append(f"case {name}: label or metadata changed since sealing")
            for key in ("image", "mask"):
                relative = str(record[key])
                listed.add(relative)
                path = self.root / relative
                if path.is_symlink():
                    problems.append(f"case {name}: {key} file {relative} is a symbolic link")
                elif not path.is_file():
                    problems.append(f"case {name}: {key} file {relative} is missing")
                elif sha256_file(path) != record[f"{key}_sha256"]:
                    problems.append(f"case {name}: {key} file {relative} bytes changed")
        problems += self._layout_problems(listed)
        seal_path = self.root / "SEAL"
        sealed = seal_path.read_text().strip() if seal_path.is_file() else None
        actual = self.manifest_hash
        if sealed is None:
            problems.append("SEAL file is missing")
        elif sealed != actual:
            problems.append(f"manifest hash {actual[:12]}… differs from the seal {sealed[:12]}…")
        if expected_hash is not None and actual != expected_hash:
            problems.append(
                f"manifest hash {actual[:12]}… is not the expected {expected_hash[:12]}…"
            )
        if problems:
            raise TestSetIntegrityError(f"{self.root}: " + "; ".join(problems))
        return actual

    def _layout_problems(self, listed: set[str]) -> list[str]:
        """Anything in the folder that the seal does not cover: extra files, links, odd types."""
        problems = []
        for folder, subdirs, files in os.walk(self.root):
            base = Path(folder)
            for name in sorted(subdirs + files):
                path = base / name
                relative = path.relative_to(self.root).as_posix()
                top = "/" not in relative
                if path.is_symlink():
                    problems.append(f"{relative} is a symbolic link: a locked set holds none")
                elif path.is_dir():
                    if top and name not in _TOP_FOLDERS:
                        problems.append(f"unexpected folder {relative}: not part of a locked set")
                elif top and name not in _TOP_FILES:
                    problems.append(f"unexpected file {relative}: not part of a locked set")
                elif not top and relative not in listed:
                    problems.append(f"unexpected file {relative}: membership changed")
            subdirs[:] = [d for d in subdirs if not (base / d).is_symlink()]
        return problems


def _dvc_dir_md5(folder: Path) -> str:
    """DVC 3's ``md5`` of a folder output: md5 of the sorted JSON list of its files' md5s."""
    entries = []
    for base, _, files in os.walk(folder):
        for name in files:
            path = Path(base) / name
            digest = hashlib.md5(usedforsecurity=False)
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(1 << 20), b""):
                    digest.update(block)
            entries.append(
                {"md5": digest.hexdigest(), "relpath": path.relative_to(folder).as_posix()}
            )
    entries.sort(key=lambda entry: entry["relpath"])
    listing = json.dumps(entries, sort_keys=True).encode()
    return hashlib.md5(listing, usedforsecurity=False).hexdigest() + ".dir"


def dvc_lock_record(testset: Path, dvc_lock: Path) -> str | None:
    """The md5 that ``dvc_lock`` records for the folder ``testset`` (None when it records none).

    Raises:
        TestSetIntegrityError: ``dvc_lock`` exists but cannot be read as a DVC lock file.
    """
    import yaml

    if not dvc_lock.is_file():
        return None
    try:
        stages = (yaml.safe_load(dvc_lock.read_text()) or {}).get("stages", {})
        outs = [out for stage in stages.values() for out in stage.get("outs", [])]
    except (OSError, yaml.YAMLError, AttributeError, TypeError) as e:
        raise TestSetIntegrityError(f"{dvc_lock}: not a readable DVC lock file ({e})") from e
    target = Path(testset).resolve()
    for out in outs:
        if not isinstance(out, dict) or "path" not in out:
            continue
        if (dvc_lock.parent / str(out["path"])).resolve() == target:
            md5 = str(out.get("md5", ""))
            return md5 if out.get("hash") == "md5" and md5.endswith(".dir") else None
    return None


def verify_pinned(
    testset: Path,
    expected_hash: str | None = None,
    *,
    dvc_lock: Path = Path("dvc.lock"),
    seal: bool = True,
) -> str | None:
    """Verify a locked set against its seal and against a record the set cannot rewrite.

    The seal alone only shows the folder is self-consistent: whoever rewrites labels can rewrite
    ``SEAL`` too. So the manifest hash must also equal ``expected_hash`` (``--testset-seal``) and,
    when ``dvc_lock`` records the folder, the folder must be exactly what DVC recorded. With
    neither, a warning on stderr says the set is unpinned.

    Args:
        testset: the locked set's folder.
        expected_hash: the manifest hash it must have (``--testset-seal``), if known.
        dvc_lock: the pipeline's lock file.
        seal: False leaves a set that differs from its own seal to the caller (the release
            gates report it as a failed gate); only a self-consistent set is then held to the
            expected hash and ``dvc.lock``.

    Returns:
        The manifest hash (None when ``seal`` is False and the set is not self-consistent).

    Raises:
        TestSetIntegrityError: the set differs from its seal, the expected hash or ``dvc.lock``.
    """
    import sys

    if seal:
        digest = LockedTestSet(testset).verify(expected_hash)
    else:
        try:
            digest = LockedTestSet(testset).verify()
        except TestSetIntegrityError:
            return None
        if expected_hash is not None and digest != expected_hash:
            raise TestSetIntegrityError(
                f"{testset}: manifest hash {digest[:12]}… is not the expected {expected_hash[:12]}…"
            )
    recorded = dvc_lock_record(testset, Path(dvc_lock))
    if recorded is not None:
        actual = _dvc_dir_md5(Path(testset))
        if actual != recorded:
            raise TestSetIntegrityError(
                f"{testset}: differs from the copy {dvc_lock} records (md5 {actual[:12]}… "
                f"instead of {recorded[:12]}…): rerun `dvc repro` or restore the locked set"
            )
    elif expected_hash is None:
        print(
            f"warning: {testset} is checked against its own SEAL only (not pinned by dvc.lock "
            "or --testset-seal), so a consistent rewrite of labels and SEAL would pass",
            file=sys.stderr,
        )
    return digest
