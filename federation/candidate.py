"""Turn a finished federated run into a candidate model bundle with its lineage.

The temperature, the three operating modes and the descriptor sources come from the run's
federated calibration (``RUN/calibration.json``, :mod:`federation.calibrate`): fitted from the
hospitals' aggregate statistics of their local validation splits, the cases each hospital holds
out and never trains on. Packaging opens no registry, in the simulation as in a deployment. The
locked test set is verified and scored, never used to choose anything.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from data_registry import LockedTestSet
from federation.calibrate import read_calibration
from federation.checkpoint import CheckpointStore
from federation.continual import next_version
from federation.exceptions import FederationRunError
from federation.server import HISTORY_FILE, OUTCOME_FILE
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
        out: the bundle folder.
        testset: the locked test set (verified, then scored into the bundle's metrics).
        version: the bundle's version (default: the parent's next minor, or ``0.<cycle+1>.0``).
        history_path: where to copy the per-round history (default: ``out/../federate-history.json``).
        progress: show progress bars.

    Returns:
        the bundle's metadata.

    Raises:
        FederationRunError: the run folder holds no finished run, or no calibration of its
            final round.
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
    calibration = read_calibration(run_dir)
    if calibration.round != int(outcome["final_round"]):
        raise FederationRunError(
            f"{run_dir}: the calibration is of round {calibration.round}, the run ended at "
            f"round {outcome['final_round']}"
        )
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
        "calibration": {
            "round": calibration.round,
            "sites": calibration.sites,
            "dropped": calibration.dropped,
            "failed": calibration.failed,
            "epsilon": calibration.fitted.epsilon,
        },
        "history_file": history_path.name,
        "code_commit": code_commit(),
    }
    training_data = {
        "sites": {s: {k: v for k, v in i.items() if k != "rounds"} for s, i in contributed.items()},
        "registries": registries,
        "validation_cases": calibration.fitted.validation["n"],
        "validation": "the hospitals' local validation splits (never trained on), evaluated at "
        "the hospitals; only histograms and counts reached the vendor",
    }
    metadata = package_bundle(
        model,
        recipe,
        [],
        Path(out),
        version=version or next_version(parent.version if parent else None, cycle),
        training_data=training_data,
        parent_version=parent.version if parent else None,
        lineage=lineage,
        locked=LockedTestSet(testset),
        progress=progress,
        calibration=calibration.fitted,
    )
    history_path.parent.mkdir(parents=True, exist_ok=True)
    history_path.write_text(json.dumps(history, indent=1, default=str) + "\n")
    return metadata
