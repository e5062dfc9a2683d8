"""One federated cycle end to end: settings, rounds, federated calibration, the candidate bundle.

:func:`run_cycle` is what ``sonofed vendor federate`` does, in the one-machine simulation and on
a deployed SuperLink alike; the command only parses its arguments into a :class:`CycleRequest`
and prints the :class:`HistoryRow` of every round as it is scored and the :class:`CycleOutcome`.
The settings are the ``federate:`` block of the params file with the request's
:class:`RoundSettings` on top. The vendor never opens a hospital's registry: the rounds and the
calibration run at the hospitals, and only their replies reach it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from federation.config import (
    FederationConfig,
    RunPaths,
    SiteSpec,
    format_settings,
    load_federate_params,
)
from federation.exceptions import FederationConfigError, FederationRunError
from federation.server import HISTORY_FILE, OUTCOME_FILE, ServerOutcome, ServerPlan

__all__ = ["CycleOutcome", "CycleRequest", "HistoryRow", "RoundSettings", "run_cycle"]


class RoundSettings(BaseModel):
    """Settings of one cycle that override the params file's ``federate:`` block (None: keep)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rounds: int | None = Field(default=None, ge=1)
    cycle: int | None = Field(default=None, ge=0)
    strategy: str | None = None
    local_epochs: int | None = Field(default=None, ge=1)
    min_clients: int | None = Field(default=None, ge=1)
    rehearsal_size: int | None = Field(default=None, ge=0)
    proximal_mu: float | None = Field(default=None, ge=0.0)
    seed: int | None = None
    dp_epsilon: float | None = Field(default=None, ge=0.0)

    def apply(self, config: FederationConfig) -> FederationConfig:
        """``config`` with these settings changed.

        Raises:
            FederationConfigError: a value the federation refuses (e.g. an unknown strategy).
        """
        return config.replace(**self.model_dump())


class CycleRequest(BaseModel):
    """What one cycle needs.

    Attributes:
        testset: the vendor's locked test set.
        sites: the hospitals' registries (simulation only; a deployment's hospitals hold them).
        out: the candidate bundle folder.
        run_dir: checkpoints, audit, history, calibration (default: ``OUT-run``).
        history_file: where the bundle's history copy goes (default: ``OUT/../federate-history.json``).
        init: the released bundle a later cycle continues.
        params: the params file (``federate:`` settings, ``train:`` recipe).
        version: the bundle's version (default: the parent's next minor).
        restart: discard the run folder's checkpoints.
        package: write the candidate bundle.
        settings: overrides of the ``federate:`` block.
        superlink: ``HOST:PORT`` of a deployed SuperLink (None: simulation).
        ca: the SuperLink's CA certificate (with ``superlink``).
        client_cert: the vendor's client certificate for the SuperLink's proxy (default:
            ``operator.pem`` beside ``ca``); client_key: its key (``operator.key``).
        num_sites: hospitals to wait for (default: one per registry, else ``min_clients``).
        flwr_home: Flower CLI configuration folder (with ``superlink``).
        log_file: where ``flwr run`` streams the run's log (None: this process's stderr).
        verbose: keep Flower's own log lines (simulation).
        progress: progress bars while packaging.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    testset: Path
    sites: tuple[Path, ...] = ()
    out: Path = Path("runs/federation/candidate")
    run_dir: Path | None = None
    history_file: Path | None = None
    init: Path | None = None
    params: Path | None = Path("params.yaml")
    version: str | None = None
    restart: bool = False
    package: bool = True
    settings: RoundSettings = RoundSettings()
    superlink: str | None = None
    ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    num_sites: int | None = Field(default=None, ge=1)
    flwr_home: Path = Path("runs/federation/flwr-home")
    log_file: Path | None = None
    verbose: bool = False
    progress: bool = False

    def resolved_run_dir(self) -> Path:
        """The run folder (``OUT-run`` unless given)."""
        return Path(self.run_dir or self.out.with_name(self.out.name + "-run"))


class HistoryRow(BaseModel):
    """One scored round (round 0: the starting model) as the history file holds it.

    The headline fields are typed; the rest of a row (per-mode rates, per-site AUC, update
    norms, client metrics) is kept as it came.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    round: int
    auc: float | None = None
    auc_ci: list[float | None] | None = None
    sensitivity: float | None = None
    specificity: float | None = None
    dice: float | None = None
    ece: float | None = None
    sites: list[str] = []
    dropped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []


class CycleOutcome(BaseModel):
    """What a finished cycle produced.

    Attributes:
        run_dir: the run folder.
        resumed_from: the checkpointed round it resumed from (None: a fresh start).
        final_round: the last round.
        history: every round's row.
        bundle: the candidate bundle (None when not packaged).
        version: its version.
        locked_test_auc: its AUC on the locked test set.
        history_file: the history copy beside the bundle.
        calibration: the federated calibration's headline (temperature, thresholds, cases,
            sites, ε).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_dir: Path
    resumed_from: int | None
    final_round: int
    history: list[HistoryRow]
    bundle: Path | None = None
    version: str | None = None
    locked_test_auc: float | None = None
    history_file: Path | None = None
    calibration: dict[str, Any] | None = None


RoundCallback = Callable[[HistoryRow], None]


def _check_sites(sites: tuple[Path, ...]) -> list[SiteSpec]:
    missing = [str(p) for p in sites if not (Path(p) / "HEAD").is_file()]
    if missing:
        raise FederationConfigError(f"--sites: not a registry: {', '.join(missing)}")
    return [SiteSpec(Path(p)) for p in sites]


def _plan(request: CycleRequest, config: FederationConfig, on_round: RoundCallback | None):
    sites = _check_sites(request.sites)
    if not sites and request.superlink is None:
        raise FederationConfigError("--sites: give at least one registry (or --superlink)")
    if config.cycle > 0 and request.init is None:
        raise FederationConfigError(
            f"--cycle {config.cycle} continues the released model: give --init BUNDLE"
        )
    paths = RunPaths(
        run_dir=request.resolved_run_dir(),
        testset=request.testset,
        init=request.init,
        params=request.params,
    )
    num_sites = request.num_sites or len(sites) or config.min_clients
    # what identifies the hospitals' data (for resuming): the registries named, not their
    # content, which only the hospitals read
    fingerprint = {"sites": [str(Path(s.registry).resolve()) for s in sites]}
    callback = None if on_round is None else (lambda row: on_round(HistoryRow(**row)))
    plan = ServerPlan(
        config, paths, num_sites, restart=request.restart, data_fingerprint=fingerprint,
        on_round=callback,
    )  # fmt: skip
    return plan, sites


class _HistoryWatcher:
    """Reports new rows of a run folder's ``history.json`` while a remote run writes it."""

    def __init__(self, path: Path, on_round: RoundCallback | None) -> None:
        self.path = path
        self.on_round = on_round
        self.seen: set[int] = set()
        self.start_mtime = path.stat().st_mtime_ns if path.is_file() else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> _HistoryWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            self.poll()

    def poll(self) -> None:
        if self.on_round is None or not self.path.is_file():
            return
        try:
            if self.path.stat().st_mtime_ns == self.start_mtime:
                return  # still the previous run's file
            rows = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return  # being replaced right now: the next poll reads it
        for row in sorted(rows, key=lambda r: r["round"]):
            if row["round"] not in self.seen:
                self.seen.add(row["round"])
                self.on_round(HistoryRow(**row))


def _on_superlink(
    request: CycleRequest,
    plan: ServerPlan,
    on_round: RoundCallback | None,
    on_status: Callable[[str], None] | None = None,
):
    from federation.deployment import Pki, submit_run

    if request.ca is None:
        raise FederationConfigError("--superlink needs --ca (the vendor's ca.crt)")
    default = Pki.at(Path(request.ca).parent)
    client = (request.client_cert or default.client_cert, request.client_key or default.client_key)
    run_dir = Path(plan.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    run_config: dict[str, Any] = {
        "settings": format_settings(plan.config),
        "run-dir": str(run_dir),
        "testset": str(Path(plan.paths.testset).resolve()),
        "init": str(Path(plan.paths.init).resolve()) if plan.paths.init else "",
        "params": str(Path(plan.paths.params).resolve())
        if plan.paths.params and Path(plan.paths.params).is_file()
        else "",
        "num-sites": plan.num_sites,
        "sites": "",
        "out": "",  # this process packages (below), not the ServerApp
    }
    if plan.restart:
        from federation.checkpoint import CheckpointStore

        CheckpointStore(run_dir / "checkpoints").clear()
    with _HistoryWatcher(run_dir / HISTORY_FILE, on_round):
        code = submit_run(
            superlink=request.superlink, ca_cert=request.ca, client=client,
            flwr_home=request.flwr_home, run_config=run_config, log=request.log_file,
            wait_for=plan.num_sites, progress=on_status,
        )  # fmt: skip
    if code != 0 or not (run_dir / OUTCOME_FILE).is_file():
        raise FederationRunError(
            f"the run on {request.superlink} failed (flwr run exit code {code})"
        )
    outcome = json.loads((run_dir / OUTCOME_FILE).read_text())
    history = json.loads((run_dir / HISTORY_FILE).read_text())
    return ServerOutcome(run_dir, history, outcome["resumed_from"], outcome["final_round"])


def _calibration_headline(run_dir: Path) -> dict[str, Any] | None:
    from federation.calibrate import read_calibration

    try:
        calibration = read_calibration(run_dir)
    except FederationRunError:
        return None
    fitted = calibration.fitted
    return {
        "temperature": fitted.temperature,
        "thresholds": {m: p["threshold"] for m, p in fitted.operating_points.items()},
        "cases": fitted.cases,
        "sites": sorted(calibration.sites),
        "epsilon": fitted.epsilon,
        "descriptor_sources": fitted.descriptor_sources,
    }


def run_cycle(
    request: CycleRequest,
    *,
    on_round: RoundCallback | None = None,
    on_status: Callable[[str], None] | None = None,
) -> CycleOutcome:
    """Run (or resume) one federated cycle and package its candidate.

    Args:
        request: what to run (see :class:`CycleRequest`).
        on_round: called with every round's row as soon as it is scored (resumed rows first).
        on_status: called with the deployment's status lines (connected, hospitals online,
            app submitted); ``superlink`` only.

    Returns:
        the outcome, with the bundle when ``request.package``.

    Raises:
        FederationConfigError: a bad setting, a folder that is not a registry, a later cycle
            without ``init``, ``superlink`` without ``ca``.
        FederationRunError: the run or its calibration failed.
        data_registry.TestSetIntegrityError: the locked set is not intact.
    """
    config = request.settings.apply(load_federate_params(request.params))
    plan, sites = _plan(request, config, on_round)
    if request.superlink:
        outcome = _on_superlink(request, plan, on_round, on_status)
    else:
        from federation.simulation import run_federation

        outcome = run_federation(plan, sites, verbose=request.verbose)
    run_dir = Path(outcome.run_dir)
    result: dict[str, Any] = {
        "run_dir": run_dir,
        "resumed_from": outcome.resumed_from,
        "final_round": outcome.final_round,
        "history": [HistoryRow(**row) for row in outcome.history],
        "calibration": _calibration_headline(run_dir),
    }
    if request.package:
        from federation.candidate import package_candidate

        history_file = Path(request.history_file or request.out.parent / "federate-history.json")
        metadata = package_candidate(
            run_dir, request.out, testset=request.testset, version=request.version,
            history_path=history_file, progress=request.progress,
        )  # fmt: skip
        locked = metadata.metrics.get("locked_test", {}).get("pooled", {})
        result.update(
            bundle=request.out,
            version=metadata.version,
            locked_test_auc=(locked.get("auc") or {}).get("auc"),
            history_file=history_file,
        )
    return CycleOutcome(**result)
