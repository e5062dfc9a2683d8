"""Regression tests of the registry's hardening: races, leaks, traps and one-line errors."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from data_registry import Registry, ingest
from data_registry.exceptions import RegistryStateError
from data_registry.importers import get_importer
from tests._exports import Export, disk_mask, textured_image

FOLDER = get_importer("folder")


def _small_export(root: Path, prefix: str, count: int, seed0: int) -> Path:
    export = Export(root)
    for i in range(count):
        export.add(
            f"{prefix}{i:03d}",
            image=textured_image(seed0 + i, (48, 48)),
            mask=disk_mask((48, 48), (24, 24), 8),
        )
    return export.write()


def _racer(export: str, registry: str, barrier, results) -> None:
    barrier.wait()
    try:
        summary = ingest(FOLDER(Path(export)), Path(registry), site_id="site-t", source="race")
        results.put(("ok", summary.accepted))
    except RegistryStateError as e:
        results.put(("refused", str(e)))


def test_two_simultaneous_ingests_never_lose_a_case(tmp_path):
    """Two processes released by one barrier, many times: every accepted case is registered."""
    context = multiprocessing.get_context("fork")
    exports = [
        _small_export(tmp_path / "a", "a", 20, 0),
        _small_export(tmp_path / "b", "b", 20, 500),
    ]
    outcomes = []
    for trial in range(30):
        registry = tmp_path / f"reg{trial}"
        barrier, results = context.Barrier(2), context.Queue()
        racers = [
            context.Process(target=_racer, args=(str(e), str(registry), barrier, results))
            for e in exports
        ]
        for process in racers:
            process.start()
        for process in racers:
            process.join(60)
        reports = [results.get(timeout=5) for _ in racers]
        accepted = sum(count for kind, count in reports if kind == "ok")
        assert all(kind == "ok" or "another ingest" in str(count) for kind, count in reports)
        assert accepted >= 20, reports
        registered = len(Registry(registry).entries)
        assert registered == accepted, f"trial {trial}: {reports}, registry holds {registered}"
        outcomes.append(tuple(sorted(kind for kind, _ in reports)))


def test_registry_files_keep_the_umask_mode(tmp_path):
    """Files are created as open() would (0666 minus umask), not with mkstemp's 0600."""
    import os
    import stat

    export = _small_export(tmp_path / "export", "c", 2, 0)
    old = os.umask(0o022)
    try:
        ingest(FOLDER(export), tmp_path / "reg", site_id="site-t", source="t")
    finally:
        os.umask(old)
    files = [tmp_path / "reg" / "HEAD", *sorted((tmp_path / "reg").rglob("*.json"))]
    files += sorted((tmp_path / "reg" / "images").glob("*.png"))
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
