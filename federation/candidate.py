"""Turn a finished federated run into a candidate model bundle with its lineage.

Calibration and the three operating modes are chosen by :func:`models.packaging.package_bundle`
on validation cases: here, the union of the hospitals' local validation splits — the cases each
hospital holds out and never trains on (:func:`federation.site.validation_split`). In the
one-machine simulation the vendor process can read them; in a real deployment that step would
run at the hospitals, and the vendor packages only when it is given registries it may read
(``--sites``). The locked test set is verified and scored, never used to choose anything.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from data_registry import LockedTestSet
from federation.checkpoint import CheckpointStore
from federation.config import SiteSpec
from federation.continual import next_version
from federation.exceptions import FederationRunError
from federation.server import HISTORY_FILE, OUTCOME_FILE
from federation.site import load_site
from federation.task import decode_train_config, model_from_arrays
from models.bundle import BundleMetadata, load_metadata
from models.packaging import package_bundle

__all__ = ["code_commit", "package_candidate"]


def code_commit() -> str | None:
    """``git rev-parse HEAD`` of the source tree, when it is a git checkout."""
    root = Path(__file__).resolve().parents[1]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def _sites_summary(history: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site, what it last contributed (counts and registry version; no case data)."""
    sites: dict[str, dict[str, Any]] = {}
    for row in history:
        for site, info in (row.get("site_info") or {}).items():
            entry = sites.setdefault(site, {"rounds": 0})
            entry.update({k: v for k, v in info.items() if v is not None})
            entry["rounds"] += 1
    return sites


def package_candidate(
    run_dir: Path,
    sites: Sequence[SiteSpec],
    out: Path,
    *,
    testset: Path,
    version: str | None = None,
    history_path: Path | None = None,
    progress: bool = False,
) -> BundleMetadata:
    """Write the candidate bundle of a finished run, and its history next to it.

    Args:
        run_dir: the run folder (``outcome.json``, ``history.json``, ``checkpoints/``).
        sites: the hospitals' registries (their local validation splits calibrate the bundle).
        out: the bundle folder.
        testset: the locked test set (verified, then scored into the bundle's metrics).
        version: the bundle's version (default: the parent's next minor, or ``0.<cycle+1>.0``).
        history_path: where to copy the per-round history (default: ``out/../federate-history.json``).
        progress: show progress bars.

    Returns:
        the bundle's metadata.

    Raises:
        FederationRunError: the run folder holds no finished run.
        data_registry.TestSetIntegrityError: the locked set is not intact.
    """
    run_dir = Path(run_dir)
    try:
        outcome = json.loads((run_dir / OUTCOME_FILE).read_text())
        history = json.loads((run_dir / HISTORY_FILE).read_text())
    except (OSError, ValueError) as e:
        raise FederationRunError(f"{run_dir}: no finished federated run ({e})") from e
    recipe = decode_train_config(outcome["recipe"])
    checkpoint = CheckpointStore(run_dir / "checkpoints").load(int(outcome["final_round"]))
    model = model_from_arrays(recipe, checkpoint.arrays)
    config = outcome["config"]
    val = []
    for spec in sites:
        site = load_site(
            spec.registry,
            since=None,
            rehearsal_size=0,
            val_fraction=float(config["val-fraction"]),
            seed=int(config["seed"]),
            cycle=int(config["cycle"]),
        )
        val.extend(site.val)
    contributed = _sites_summary(history)
    parent = load_metadata(Path(outcome["init"])) if outcome.get("init") else None
    # A site that sent nothing this cycle keeps the registry version of the parent release.
    registries = dict(parent.training_data.get("registries") or {}) if parent else {}
    registries.update(
        {
            str(info["registry_site"]): {
                "version": info.get("registry_version"),
                "content_hash": info.get("registry_hash"),
            }
            for info in contributed.values()
            if info.get("registry_site")
        }
    )
    cycle = int(config["cycle"])
    dropped = [dict(d, round=row["round"]) for row in history for d in row.get("dropped", [])]
    failed = [dict(f, round=row["round"]) for row in history for f in row.get("failed", [])]
    history_path = Path(history_path or Path(out).parent / "federate-history.json")
    lineage = {
        "kind": "federated",
        "cycle": cycle,
        "rounds": int(outcome["final_round"]),
        "planned_rounds": int(outcome["planned_rounds"]),
        "resumed_from": outcome.get("resumed_from"),
        "strategy": config["strategy"],
        "proximal_mu": config["proximal-mu"],
        "local_epochs": config["local-epochs"],
        "rehearsal_size": config["rehearsal-size"],
        "sites": contributed,
        "registries": registries,
        "since": outcome.get("since") or {},
        "locked_test_manifest": outcome["locked_manifest"],
        "parent": None
        if parent is None
        else {"version": parent.version, "weights_sha256": outcome.get("init_weights_sha256")},
        "dropped_updates": dropped,
        "failed_clients": failed,
        "history_file": history_path.name,
        "code_commit": code_commit(),
    }
    training_data = {
        "sites": {s: {k: v for k, v in i.items() if k != "rounds"} for s, i in contributed.items()},
        "registries": registries,
        "validation_cases": len(val),
        "validation": "union of the hospitals' local validation splits (never trained on)",
    }
    metadata = package_bundle(
        model,
        recipe,
        val,
        Path(out),
        version=version or next_version(parent.version if parent else None, cycle),
        training_data=training_data,
        parent_version=parent.version if parent else None,
        lineage=lineage,
        locked=LockedTestSet(testset),
        progress=progress,
    )
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_path.write_text(json.dumps(history, indent=1, default=str) + "\n")
    return metadata
