"""Release benchmark: full release time, bundle size, console verify + install time, and the
update server's throughput with many consoles pulling at once on loopback.

Writes ``<out>/release.json``. Timings are measured here, never asserted by tests.

    python -m bench.release --out bench/results                      # production-size network
    python -m bench.release --candidate runs/pipeline/candidate --testset runs/pipeline/locked

Without ``--candidate`` it builds a small phantom world and an *untrained* network of the
production size (``TrainConfig()`` defaults): sizes and timings are those of a real release,
its accuracy is not. The gates then run under a benchmark protocol (the candidate compared with
itself, floors at zero), recorded in the JSON; the production protocol is never loosened.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from tuf.ngclient import Updater

REPO = Path(__file__).resolve().parents[1]


def _world(work: Path) -> tuple[Path, Path, list[Path]]:
    """A phantom world and an untrained production-size bundle: (bundle, locked, registries)."""
    from data_registry import Exclusion, LockedTestSet, SourceSpec, ingest, lock_testset
    from data_registry.importers import get_importer
    from data_registry.phantom import generate_sites
    from models.packaging import data_summary, package_bundle
    from models.samples import samples_from_registries
    from models.train import TrainConfig, build_model

    sites = ("site-a", "site-b", "site-c")
    generate_sites(work / "phantom", sites=3, cases=24, seed=5)
    locked = work / "locked"
    specs = [SourceSpec("phantom", work / "phantom" / s) for s in sites]
    lock_testset(specs, locked, fraction=0.25, seed=1)
    exclusion = Exclusion.load(locked / "exclusion.json")
    registries = []
    for site in sites:
        registry = work / "registries" / site
        ingest(
            get_importer("phantom")(work / "phantom" / site),
            registry,
            site_id=site,
            source=f"phantom:{site}",
            exclusion=exclusion,
        )
        registries.append(registry)
    samples = samples_from_registries(registries)
    config = TrainConfig()
    bundle = work / "candidate"
    package_bundle(
        build_model(config),
        config,
        samples[:40],
        bundle,
        version="1.0.0",
        training_data={"sites": data_summary(samples)},
        locked=LockedTestSet(locked),
    )
    return bundle, locked, registries


def _timed(function, *args, **kwargs) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _full_release(candidate: Path, locked: Path, registries: list[Path], work: Path, protocol):
    from release.bundle import build_release, write_archive
    from release.gates import validate, write_validation
    from release.keys import KeyStore
    from release.repository import UpdateRepository

    timings: dict[str, float] = {}
    validation, timings["gates_s"] = _timed(
        validate, candidate, locked, protocol, current=candidate
    )
    write_validation(validation, work / "gates")
    _, timings["bundle_s"] = _timed(
        build_release,
        candidate,
        work / "gates" / "gate-report.json",
        work / "release",
        version="1.1.0",
        registries=registries,
    )
    start = time.perf_counter()
    repo = UpdateRepository.init(work / "repo", work / "keys" / "offline", work / "keys" / "online")
    archive = write_archive(work / "release", work / "release-1.1.0.tar.gz")
    repo.publish(
        archive,
        channel="stable",
        rollout_percent=100,
        offline=KeyStore(work / "keys" / "offline", "offline"),
        online=KeyStore(work / "keys" / "online", "online"),
    )
    timings["sign_and_publish_s"] = time.perf_counter() - start
    timings["total_s"] = sum(timings.values())
    return {k: round(v, 3) for k, v in timings.items()}, validation.report.passed, archive


def _bundle_size(release: Path, archive: Path) -> dict[str, Any]:
    files = {
        p.relative_to(release).as_posix(): p.stat().st_size
        for p in release.rglob("*")
        if p.is_file()
    }
    return {
        "archive_bytes": archive.stat().st_size,
        "unpacked_bytes": sum(files.values()),
        "largest_files": dict(sorted(files.items(), key=lambda kv: -kv[1])[:5]),
    }


def _console_install(repo: Path, archive: Path, work: Path, repeats: int) -> dict[str, Any]:
    from release.console_client import provision, update
    from release.manifest import verify_release
    from release.selftest import run_self_test
    from release.server import UpdateServer, start_background
    from release.slots import unpack

    server = UpdateServer(repo, access_log=work / "install-access.log")
    start_background(server)
    try:
        totals = []
        for i in range(repeats):
            console = work / f"console-{i}"
            provision(repo / "metadata" / "root.json", f"bench-{i}", console)
            result, seconds = _timed(update, console, server.url)
            assert result.action == "installed", result
            totals.append(seconds)
        meta = work / "probe-meta"
        meta.mkdir()
        updater = Updater(
            str(meta),
            f"{server.url}/metadata/",
            str(work / "probe-dl"),
            f"{server.url}/targets/",
            bootstrap=(repo / "metadata" / "root.json").read_bytes(),
        )
        start = time.perf_counter()
        updater.refresh()
        path = next(iter(json.loads((meta / "targets.json").read_text())["signed"]["targets"]))
        updater.download_target(updater.get_targetinfo(path), str(work / "probe.tar.gz"))
        fetch = time.perf_counter() - start
    finally:
        server.shutdown()
        server.server_close()
    _, unpack_s = _timed(unpack, archive, work / "probe-unpacked")
    _, verify_s = _timed(verify_release, work / "probe-unpacked")
    _, selftest_s = _timed(run_self_test, work / "probe-unpacked")
    return {
        "repeats": repeats,
        "update_s_median": round(statistics.median(totals), 3),
        "update_s_all": [round(t, 3) for t in totals],
        "breakdown_s": {
            "tuf_refresh_and_download": round(fetch, 3),
            "unpack": round(unpack_s, 3),
            "verify_release": round(verify_s, 3),
            "self_test": round(selftest_s, 3),
        },
    }


def _throughput(repo: Path, work: Path, consoles: int) -> dict[str, Any]:
    """``consoles`` python-tuf clients (threads) refresh and download at once from a server
    running in its own process."""
    log = work / "throughput-access.log"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sonofed.cli",
            "vendor",
            "serve",
            "--repo",
            str(repo),
            "--port",
            "0",
            "--access-log",
            str(log),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = server.stdout.readline() if server.stdout else ""
        url = line.split(" at ")[1].split("/ ")[0]
        root = (repo / "metadata" / "root.json").read_bytes()
        barrier = threading.Barrier(consoles)
        results: list[tuple[float, int] | str] = [""] * consoles

        def pull(i: int) -> None:
            meta = work / "pull" / str(i)
            meta.mkdir(parents=True)
            try:
                updater = Updater(
                    str(meta), f"{url}/metadata/", str(meta), f"{url}/targets/", bootstrap=root
                )
                barrier.wait()
                start = time.perf_counter()
                updater.refresh()
                path = next(
                    iter(json.loads((meta / "targets.json").read_text())["signed"]["targets"])
                )
                info = updater.get_targetinfo(path)
                updater.download_target(info, str(meta / "release.tar.gz"))
                results[i] = (time.perf_counter() - start, info.length)
            except Exception as e:  # a failed pull is a result of the benchmark, not a crash
                results[i] = f"{type(e).__name__}: {e}"

        threads = [threading.Thread(target=pull, args=(i,)) for i in range(consoles)]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=10)
    done = [r for r in results if isinstance(r, tuple)]
    latencies = sorted(r[0] for r in done)
    total_bytes = sum(r[1] for r in done)
    requests = len(log.read_text().splitlines()) if log.exists() else 0
    return {
        "consoles": consoles,
        "succeeded": len(done),
        "errors": [r for r in results if isinstance(r, str)][:5],
        "wall_s": round(wall, 3),
        "requests": requests,
        "requests_per_s": round(requests / wall, 1),
        "target_megabytes_per_s": round(total_bytes / wall / 1e6, 1),
        "per_console_s": {
            "p50": round(latencies[len(latencies) // 2], 3) if latencies else None,
            "p95": round(latencies[int(len(latencies) * 0.95) - 1], 3) if latencies else None,
            "max": round(latencies[-1], 3) if latencies else None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidate", type=Path, help="a model bundle (default: build one)")
    parser.add_argument("--testset", type=Path, help="its locked test set")
    parser.add_argument("--consoles", type=int, default=50, help="consoles pulling at once")
    parser.add_argument("--installs", type=int, default=5, help="console installs to time")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    args = parser.parse_args()
    from release.protocol import FirstReleaseFloors, load_protocol

    production = load_protocol(REPO / "params.yaml")
    protocol = production.model_copy(
        update={
            "min_sensitivity_high_sensitivity": 0.0,
            "min_specificity_high_specificity": 0.0,
            "dice_floor": 0.0,
            "ece_ceiling": 1.0,
            "subgroup_min_per_class": 1,
            "first_release": FirstReleaseFloors(auc_floor=0.5, subgroup_auc_floor=0.5),
        }
    )
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        start = time.perf_counter()
        if args.candidate is None:
            candidate, locked, registries = _world(work / "world")
            source = "untrained production-size network (TrainConfig defaults), phantom world"
        else:
            candidate, locked, registries = args.candidate, args.testset, []
            source = str(args.candidate)
        setup_s = time.perf_counter() - start
        release, passed, archive = _full_release(candidate, locked, registries, work, protocol)
        results: dict[str, Any] = {
            "machine": {
                "platform": platform.platform(),
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            },
            "candidate": source,
            "setup_s": round(setup_s, 1),
            "gate_protocol": "params.yaml comparisons (candidate vs itself), floors at zero",
            "gates_passed": passed,
            "full_release": release,
            "bundle_size": _bundle_size(work / "release", archive),
            "console_install": _console_install(work / "repo", archive, work, args.installs),
            "server_throughput": _throughput(work / "repo", work, args.consoles),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "release.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
