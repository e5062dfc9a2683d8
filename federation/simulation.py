"""One-machine federation: the ServerApp and one ClientApp per site in Flower's simulation.

The simulation runtime runs each hospital's ClientApp in a Ray worker process (one torch thread
each, and one CPU, or an equal share when there are more hospitals than CPUs) and the ServerApp
in a thread of this process, so a hospital that dies takes only its worker with it.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from flwr.simulation import run_simulation

from data_registry import RegistryError
from federation.client_app import build_client_app
from federation.config import SiteSpec
from federation.exceptions import FederationError, FederationRunError
from federation.server import HISTORY_FILE, OUTCOME_FILE, ServerOutcome, ServerPlan
from federation.server_app import build_server_app
from models.exceptions import ModelError

__all__ = ["run_federation"]


def _quiet_flower(verbose: bool) -> None:
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)


def run_federation(
    plan: ServerPlan,
    sites: Sequence[SiteSpec],
    *,
    cpus: int | None = None,
    verbose: bool = False,
) -> ServerOutcome:
    """Run one cycle over ``sites`` in Flower's simulation and return what it recorded.

    Args:
        plan: the vendor's plan (``num_sites`` should equal ``len(sites)``).
        sites: one hospital per entry (registry, reported name, optional fault).
        cpus: CPUs Ray may use (default: all, at most one per site); each ClientApp gets one,
            or ``cpus / len(sites)`` when the sites outnumber them.
        verbose: keep Flower's INFO log lines.

    Returns:
        the outcome (history and the run folder with checkpoints and ``outcome.json``).

    Raises:
        FederationRunError: the simulation or the ServerApp failed.
    """
    if not sites:
        raise FederationRunError("no site to federate")
    cpus = cpus or max(1, min(len(sites), os.cpu_count() or 1))
    # More hospitals than CPUs: share the CPUs so every hospital trains at once, rather than
    # leaving a core idle while the last one trains alone (Ray takes 4 decimals).
    per_client = math.floor(min(1.0, cpus / len(sites)) * 10_000) / 10_000
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    _quiet_flower(verbose)
    backend = {
        "client_resources": {"num_cpus": per_client, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": cpus,
            "num_gpus": 0,
            "object_store_memory": 256 * 1024 * 1024,
            "logging_level": "ERROR",
            "log_to_driver": verbose,
        },
    }
    try:
        run_simulation(
            server_app=build_server_app(plan),
            client_app=build_client_app(sites),
            num_supernodes=len(sites),
            backend_config=backend,
            verbose_logging=verbose,
        )
    except (FederationError, RegistryError, ModelError):
        raise  # the vendor's own checks (locked set, checkpoints, settings) keep their type
    except Exception as e:
        raise FederationRunError(f"the federated run failed: {e}") from e
    run_dir = Path(plan.paths.run_dir)
    try:
        history = json.loads((run_dir / HISTORY_FILE).read_text())
        outcome = json.loads((run_dir / OUTCOME_FILE).read_text())
    except (OSError, ValueError) as e:
        raise FederationRunError(f"{run_dir}: the run left no history ({e})") from e
    return ServerOutcome(run_dir, history, outcome["resumed_from"], outcome["final_round"])
