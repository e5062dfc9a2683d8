"""The vendor's side of a cycle: start or resume, run the rounds, score, checkpoint, record.

:func:`run_server` is what the ServerApp's ``main`` does, in the simulation and in a deployment
alike. It writes into the run folder:

- ``checkpoints/`` after every round (:mod:`federation.checkpoint`);
- ``audit.jsonl``, the structure of every received message (:mod:`federation.audit`);
- ``history.json``, one row per round (round 0 = the starting model);
- ``calibration.json``, after the last round: what the hospitals' validation statistics of the
  final model gave (:mod:`federation.calibrate`; the vendor never reads a validation case);
- ``outcome.json``, what packaging needs: the recipe, the sites and registry versions used,
  the locked set's manifest hash, the final checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, MetricRecord
from flwr.serverapp import Grid

from data_registry.files import write_atomic
from federation.audit import AuditingGrid
from federation.calibrate import run_calibration
from federation.checkpoint import CheckpointStore
from federation.config import FederationConfig, RunPaths
from federation.continual import since_from_bundle
from federation.exceptions import FederationConfigError, FederationRunError
from federation.scoring import LockedScorer, metric_record_values
from federation.strategy import build_strategy
from federation.task import (
    encode_train_config,
    exchanged_state,
    pack,
    recipe_layout,
    train_config_from_params,
    unpack,
)
from models.bundle import WEIGHTS_FILE
from models.packaging import load_weights
from models.train import TrainConfig, build_model

__all__ = ["ServerOutcome", "ServerPlan", "run_server"]

log = logging.getLogger("sonofed.federation")
HISTORY_FILE = "history.json"
OUTCOME_FILE = "outcome.json"
AUDIT_FILE = "audit.jsonl"


@dataclass(frozen=True)
class ServerPlan:
    """Everything the vendor needs to run one cycle.

    Args:
        config: the federation settings.
        paths: run folder, locked set, starting bundle, params file.
        num_sites: hospitals expected (rounds wait until this many are connected).
        recipe: the network recipe when training from scratch (default: the params file's
            ``train`` block); ignored with a starting bundle, whose recipe is kept.
        restart: discard the run folder's checkpoints instead of resuming.
        data_fingerprint: what identifies the hospitals' data when the vendor can see it (the
            simulation: registry versions and content hashes); part of the run's identity.
        scorer_threads: torch threads for scoring on the locked set (1 by default: on a
            shared two-core machine more threads oversubscribe it and run several times slower).
        require_all_sites: before round 1, wait up to ``join_timeout`` for ``num_sites``
            hospitals and fail when fewer connect (``flwr run .``: its simulation starts as
            many SuperNodes as it is told, 2 by default); otherwise go on with whoever came.
        join_timeout: seconds to wait for the hospitals before round 1 (None: 30 s with
            ``require_all_sites``, else the round timeout up to 5 minutes).
        calibrate: after the last round, collect the hospitals' validation statistics of the
            final model and fit calibration, modes and descriptor sources from them.
        on_round: called with every new history row (the CLI prints one line per round).
    """

    config: FederationConfig
    paths: RunPaths
    num_sites: int
    recipe: TrainConfig | None = None
    restart: bool = False
    data_fingerprint: dict[str, Any] = field(default_factory=dict)
    scorer_threads: int = 1
    require_all_sites: bool = False
    join_timeout: float | None = None
    calibrate: bool = True
    on_round: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ServerOutcome:
    """What a finished cycle left in its run folder."""

    run_dir: Path
    history: list[dict[str, Any]]
    resumed_from: int | None
    final_round: int


def _starting_point(plan: ServerPlan) -> tuple[TrainConfig, dict[str, np.ndarray], str | None]:
    """Recipe, weights and the weights' sha256 to start from."""
    init = plan.paths.init
    if init is None:
        if plan.config.cycle > 0:
            raise FederationConfigError(
                f"cycle {plan.config.cycle} continues the released model: give --init BUNDLE"
            )
        recipe = plan.recipe or train_config_from_params(plan.paths.params)
        torch.manual_seed(recipe.seed)
        return recipe, exchanged_state(build_model(recipe, pretrained=True)), None
    model, recipe = load_weights(init)
    digest = hashlib.sha256((Path(init) / WEIGHTS_FILE).read_bytes()).hexdigest()
    return recipe, exchanged_state(model), digest


def _round_config(plan: ServerPlan, recipe: TrainConfig, since: dict[str, int]) -> ConfigRecord:
    c = plan.config
    return ConfigRecord(
        {
            "local-epochs": c.local_epochs,
            "lr": float(c.lr or (recipe.lr if c.cycle == 0 else recipe.lr / 3.0)),
            "batch-size": c.batch_size,
            "train-config": encode_train_config(recipe),
            "since": json.dumps(since, sort_keys=True),
            "rehearsal-size": c.rehearsal_size,
            "keep-optimizer": c.keep_optimizer,
            "val-fraction": c.val_fraction,
            "seed": c.seed,
            "cycle": c.cycle,
        }
    )


def _wait_for_sites(grid: Grid, plan: ServerPlan) -> int:
    """Wait until ``plan.num_sites`` hospitals are connected (or the join timeout passes).

    Raises:
        FederationRunError: fewer connected and ``require_all_sites`` is set.
    """
    timeout = plan.join_timeout
    if timeout is None:  # a simulation's nodes are there at once; deployed hospitals may lag
        timeout = 30.0 if plan.require_all_sites else min(plan.config.round_timeout, 300.0)
    deadline = time.monotonic() + timeout
    connected = len(list(grid.get_node_ids()))
    while connected < plan.num_sites and time.monotonic() < deadline:
        time.sleep(0.5)
        connected = len(list(grid.get_node_ids()))
    if connected < plan.num_sites:
        message = (
            f"{connected} hospital(s) connected, {plan.num_sites} expected, after {timeout:g} s"
        )
        if plan.require_all_sites:
            raise FederationRunError(
                message + ": in Flower's simulation start as many SuperNodes as sites "
                f"(flwr run . --federation-config 'num-supernodes={plan.num_sites}')"
            )
        log.warning("%s: starting with those", message)
    return connected


def _write_json(path: Path, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=1, default=str) + "\n").encode())


def run_server(grid: Grid, plan: ServerPlan) -> ServerOutcome:
    """Run (or resume) one federated cycle; see the module docstring for what it writes.

    Raises:
        data_registry.TestSetIntegrityError: the locked set is not intact (at the start or
            before any round's scoring).
        FederationConfigError: cycle >= 1 without a starting bundle.
        CheckpointError: the latest checkpoint is unreadable (rerun with ``restart``).
    """
    run_dir = Path(plan.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipe, arrays, init_hash = _starting_point(plan)
    since = since_from_bundle(plan.paths.init) if plan.paths.init else {}
    scorer = LockedScorer(plan.paths.testset, recipe, num_threads=plan.scorer_threads)
    fingerprint = {
        **plan.config.fingerprint(),
        "init_weights_sha256": init_hash,
        "recipe_sha256": hashlib.sha256(encode_train_config(recipe).encode()).hexdigest(),
        "locked_manifest": scorer.manifest_hash,
        "data": json.loads(json.dumps(plan.data_fingerprint)),
    }
    store = CheckpointStore(run_dir / "checkpoints")
    if plan.restart:
        store.clear()
    checkpoint = store.latest()
    history: list[dict[str, Any]] = []
    offset, resumed_from, discarded = 0, None, None
    if checkpoint is not None and checkpoint.fingerprint != fingerprint:
        changed = sorted(k for k in fingerprint if checkpoint.fingerprint.get(k) != fingerprint[k])
        log.warning(
            "%s holds checkpoints of another run (differs in %s): starting afresh",
            store.directory, ", ".join(changed),
        )  # fmt: skip
        discarded = {"round": checkpoint.round, "differs_in": changed}
        store.clear()
        checkpoint = None
    if checkpoint is not None:
        arrays, history, offset = checkpoint.arrays, checkpoint.history, checkpoint.round
        resumed_from = offset
        log.warning("resuming from the checkpoint of round %d", offset)
        for row in history if plan.on_round is not None else ():
            plan.on_round(row)
    layout = recipe_layout(recipe)  # the hospitals' order
    strategy = build_strategy(plan.config, num_sites=plan.num_sites, layout=layout,
                              round_offset=offset)  # fmt: skip

    def evaluate_fn(server_round: int, record) -> MetricRecord:
        actual = server_round + offset
        done = {row["round"]: row for row in history}
        if actual in done:  # the resumed starting point was scored before the crash
            return MetricRecord(metric_record_values(done[actual]))
        current = unpack(record, layout)
        row: dict[str, Any] = {"round": actual, **scorer(current)}
        info = strategy.records.get(actual)
        row.update(info.to_dict() if info else {"sites": [], "dropped": [], "failed": []})
        row["time"] = time.time()
        history.append(row)
        store.save(actual, current, history, fingerprint)
        _write_json(run_dir / HISTORY_FILE, history)
        log.info("round %d: locked-test AUC %s, Dice %s", actual, row.get("auc"), row.get("dice"))
        if plan.on_round is not None:
            plan.on_round(row)
        return MetricRecord(metric_record_values(row))

    audited = AuditingGrid(grid, run_dir / AUDIT_FILE)
    remaining = plan.config.rounds - offset
    if remaining > 0 or plan.calibrate:
        _wait_for_sites(grid, plan)
    if remaining > 0:
        round_config = _round_config(plan, recipe, since)
        strategy.start(
            grid=audited,
            initial_arrays=pack(arrays, layout),
            num_rounds=remaining,
            timeout=plan.config.round_timeout,
            train_config=round_config,
            evaluate_config=ConfigRecord(dict(round_config.items())),
            evaluate_fn=evaluate_fn,
        )
    final_round = max(row["round"] for row in history)
    _write_json(run_dir / HISTORY_FILE, history)
    if plan.calibrate:
        last = next(row for row in history if row["round"] == final_round)
        run_calibration(
            audited, store.load(final_round).arrays, config=plan.config, recipe=recipe,
            final_round=final_round, run_dir=run_dir,
            skip_nodes=[f["node_id"] for f in last.get("failed", []) if "node_id" in f],
        )  # fmt: skip
    _write_json(
        run_dir / OUTCOME_FILE,
        {
            "final_round": final_round,
            "planned_rounds": plan.config.rounds,
            "resumed_from": resumed_from,
            "discarded_checkpoint": discarded,
            "checkpoint": str(store.directory / f"round-{final_round:04d}.npz"),
            "recipe": encode_train_config(recipe),
            "since": since,
            "init": str(plan.paths.init) if plan.paths.init else None,
            "init_weights_sha256": init_hash,
            "locked_manifest": scorer.manifest_hash,
            "config": plan.config.to_run_config(),
        },
    )
    return ServerOutcome(run_dir, history, resumed_from, final_round)
