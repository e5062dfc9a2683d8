"""Registry benchmark: ingest throughput per real site and phantom generation throughput.

Writes ``<out>/registry.json``. Timings are measured here, never asserted by tests.

    python -m bench.registry --data ../shared/data --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from data_registry.importers import get_importer
from data_registry.ingest import ingest
from data_registry.phantom import generate_sites

REAL_SITES = (
    ("busi", "busi", "biopsy"),
    ("bus_bra", "bus_bra", None),
    ("breast_lesions_usg", "breast_lesions_usg", None),
)


def _ingest_rate(kind: str, path: Path, assume: str | None, work: Path) -> dict[str, object]:
    importer = get_importer(kind)
    start = time.perf_counter()
    summary = ingest(
        importer(path, assume_reference=assume),
        work / kind,
        site_id=importer.default_site_id,
        source=kind,
    )
    seconds = time.perf_counter() - start
    return {
        "site": kind,
        "images": summary.received,
        "accepted": summary.accepted,
        "eligible": summary.eligible,
        "seconds": round(seconds, 2),
        "images_per_s": round(summary.received / seconds, 1),
    }


def _phantom_rate(work: Path, cases: int) -> dict[str, object]:
    start = time.perf_counter()
    generate_sites(work / "phantom", sites=1, cases=cases, seed=0)
    seconds = time.perf_counter() - start
    return {"cases": cases, "seconds": round(seconds, 2), "images_per_s": round(cases / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="real data root")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    parser.add_argument("--phantom-cases", type=int, default=200)
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["phantom_generation"] = _phantom_rate(work, args.phantom_cases)
        if args.data.is_dir():
            results["ingest"] = [
                _ingest_rate(kind, args.data / folder, assume, work)
                for kind, folder, assume in REAL_SITES
            ]
        else:
            results["ingest"] = f"skipped: no real data at {args.data}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registry.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
