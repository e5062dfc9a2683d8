"""Federation settings: one frozen record, read from ``params.yaml`` or the Flower run config.

The same settings travel three ways, always under the same names:

- ``params.yaml`` block ``federate:`` with snake_case keys (read by ``sonofed vendor federate``);
- ``flwr run .`` reads the same ``params.yaml`` block (``[tool.flwr.app.config]`` names the
  file, ``params``), and kebab-case overrides in the run config's ``settings`` JSON;
- the per-round ``ConfigRecord`` the server sends to the hospitals (kebab-case).

Run-level paths (site registries, the locked test set, the run folder, the starting bundle) are
in :class:`RunPaths`, kept apart because they differ between machines.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from federation.exceptions import FederationConfigError

STRATEGIES = ("fedprox", "fedavg", "fedtrimmedavg", "krum", "multikrum", "bulyan")
"""Aggregation strategies that can be chosen by name (all from ``flwr.serverapp.strategy``)."""

MODE_THRESHOLDS: dict[str, float] = {
    "high-sensitivity": 0.25,
    "high-accuracy": 0.5,
    "high-specificity": 0.75,
}
"""Fixed probability thresholds (sigmoid of the raw logit) for the per-round history.

The server holds no validation cases, so the rounds are tracked at fixed, validation-free
thresholds; the candidate bundle's own operating points are chosen on validation cases by
:func:`models.packaging.package_bundle`. ``sensitivity``/``specificity`` in a history row are the
``high-accuracy`` mode's."""


LR_SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass(frozen=True)
class FederationConfig:
    """How a federated cycle runs.

    Args:
        rounds: planned server rounds of this cycle.
        local_epochs: epochs each hospital trains per round.
        lr: peak local learning rate; 0 uses the network recipe's rate from scratch (cycle 0)
            and its fine-tuning rate (``lr / 3``) when a cycle continues a release.
        lr_schedule: the rate over the whole cycle, step by step, each round running its share
            ``((round - 1) / rounds, round / rounds)``: ``onecycle`` (the recipe's warm-up, then
            cosine decay: what central training does), ``cosine`` (decay only) or ``constant``.
        batch_size: local batch size; 0 keeps the network recipe's.
        proximal_mu: FedProx ``mu`` (sent by the FedProx strategy; 0 disables the term).
        strategy: one of :data:`STRATEGIES`.
        min_clients: fewest hospitals a round needs (sampling waits for them; a round with
            fewer usable updates after screening keeps the previous global model).
        keep_optimizer: each hospital keeps its AdamW moments from round to round (they never
            leave it), instead of starting every round with fresh moments and their large
            first steps.
        rehearsal_size: earlier eligible cases each hospital mixes into a cycle's new cases
            (0 = naive fine-tuning on new cases only).
        cycle: continual-learning cycle (0 trains from scratch; later cycles start from the
            released bundle and train on the cases added since it).
        seed: seed of local training, rehearsal sampling and the local validation split.
        val_fraction: share of each hospital's patients kept for local validation (by a hash
            of the patient group, so the split is stable across registry versions).
        screen_norm_factor: an update whose norm exceeds this many times the round's median
            update norm is dropped (needs at least 3 updates to judge).
        num_malicious: number of Byzantine clients Krum, MultiKrum and Bulyan tolerate.
        trim_beta: fraction cut at each end by FedTrimmedAvg.
        fraction_evaluate: share of hospitals asked for local validation metrics each round
            (0 disables the client-side evaluation).
        round_timeout: seconds the server waits for replies in a round (and, before round
            1, for every expected hospital to connect).
        calibration_bins: bins of the malignancy-logit histograms the hospitals return for
            federated calibration (equal bins over ``±calibration_logit_limit``, plus one open
            bin at each end; every hospital gets the same edges).
        calibration_logit_limit: half-width of the binned logit range.
        dp_epsilon: ε of the Laplace noise each hospital adds to its calibration histograms
            (ε-differential privacy for them; 0 = exact counts). Use coarse bins with it.
    """

    rounds: int = 3
    local_epochs: int = 1
    lr: float = 0.0
    lr_schedule: str = "onecycle"
    batch_size: int = 0
    proximal_mu: float = 0.01
    strategy: str = "fedprox"
    min_clients: int = 2
    keep_optimizer: bool = True
    rehearsal_size: int = 64
    cycle: int = 0
    seed: int = 0
    val_fraction: float = 0.15
    screen_norm_factor: float = 5.0
    num_malicious: int = 1
    trim_beta: float = 0.2
    fraction_evaluate: float = 1.0
    round_timeout: float = 3600.0
    calibration_bins: int = 4000
    calibration_logit_limit: float = 20.0
    dp_epsilon: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.rounds < 1 or self.local_epochs < 1 or self.min_clients < 1:
            problems.append("rounds, local_epochs and min_clients must be at least 1")
        if self.strategy not in STRATEGIES:
            problems.append(f"strategy {self.strategy!r} is not one of {', '.join(STRATEGIES)}")
        if self.lr < 0 or self.batch_size < 0 or self.proximal_mu < 0 or self.rehearsal_size < 0:
            problems.append("lr, batch_size, proximal_mu and rehearsal_size must be >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(
                f"lr_schedule {self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}"
            )
        if self.batch_size == 1:
            problems.append("batch_size must be 0 (recipe default) or at least 2")
        if self.cycle < 0 or self.num_malicious < 0:
            problems.append("cycle and num_malicious must be >= 0")
        if not 0.0 < self.val_fraction < 1.0:
            problems.append(f"val_fraction {self.val_fraction} must lie in (0, 1)")
        if self.screen_norm_factor <= 1.0:
            problems.append("screen_norm_factor must exceed 1")
        if not 0.0 <= self.trim_beta < 0.5:
            problems.append("trim_beta must lie in [0, 0.5)")
        if not 0.0 <= self.fraction_evaluate <= 1.0:
            problems.append("fraction_evaluate must lie in [0, 1]")
        if self.round_timeout <= 0:
            problems.append("round_timeout must be positive")
        if not 1 <= self.calibration_bins <= 100_000 or self.calibration_logit_limit <= 0:
            problems.append("calibration_bins must lie in 1..100000, calibration_logit_limit > 0")
        if self.dp_epsilon < 0:
            problems.append("dp_epsilon must be >= 0 (0: no noise)")
        if problems:
            raise FederationConfigError("federate: " + "; ".join(problems))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FederationConfig:
        """Settings from snake_case or kebab-case keys; unknown keys are refused.

        Raises:
            FederationConfigError: an unknown key or a bad value.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        out: dict[str, Any] = {}
        unknown = []
        for key, value in values.items():
            name = str(key).replace("-", "_")
            if name not in known:
                unknown.append(str(key))
                continue
            kind = type(known[name].default)
            if kind is bool and isinstance(value, str):
                if value.strip().lower() not in ("true", "false", "1", "0"):
                    raise FederationConfigError(f"federate: {key}={value!r} is not true or false")
                value = value.strip().lower() in ("true", "1")
            try:
                out[name] = kind(value)
            except (TypeError, ValueError) as e:
                raise FederationConfigError(
                    f"federate: {key}={value!r} is not a {kind.__name__}"
                ) from e
        if unknown:
            raise FederationConfigError(
                f"federate: unknown setting(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(known)}"
            )
        return cls(**out)

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> FederationConfig:
        """The settings among a Flower run config's keys (run-level paths are ignored)."""
        names = {f.name.replace("_", "-") for f in dataclasses.fields(cls)}
        return cls.from_mapping({k: v for k, v in run_config.items() if k in names})

    def to_run_config(self) -> dict[str, Any]:
        """Flat kebab-case keys, as in ``[tool.flwr.app.config]``."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> FederationConfig:
        """A copy with some settings changed (``None`` values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def fingerprint(self) -> dict[str, Any]:
        """The settings that must match for a checkpoint to be resumed."""
        keep = ("rounds", "strategy", "cycle", "seed", "local_epochs", "proximal_mu",
                "rehearsal_size", "val_fraction", "lr", "lr_schedule", "batch_size")  # fmt: skip
        return {k: getattr(self, k) for k in keep}


def federate_block(params: Path | None) -> dict[str, Any]:
    """The raw ``federate:`` block of ``params.yaml`` (empty when the file or block is absent).

    Raises:
        FederationConfigError: the file is not valid YAML or the block is not a mapping.
    """
    if params is None or not Path(params).is_file():
        return {}
    try:
        document = yaml.safe_load(Path(params).read_text()) or {}
    except yaml.YAMLError as e:
        raise FederationConfigError(f"{params}: not valid YAML ({e})") from e
    block = document.get("federate") or {}
    if not isinstance(block, Mapping):
        raise FederationConfigError(f"{params}: federate: expected a mapping of settings")
    return dict(block)


def load_federate_params(params: Path | None) -> FederationConfig:
    """The ``federate:`` block of ``params.yaml`` (defaults when the file or block is absent).

    Raises:
        FederationConfigError: an unknown key or a bad value.
    """
    return FederationConfig.from_mapping(federate_block(params))


def parse_settings(text: str) -> dict[str, Any]:
    """Settings given as ``key=value,key=value`` (or a JSON object) in one run-config string.

    The pairs form needs no quotes, so it passes through ``flwr run --run-config
    'settings="rounds=2,local-epochs=1"'`` (Flower's parser allows no quote inside a quoted
    value) and through :func:`federation.deployment.submit_run`.

    Raises:
        FederationConfigError: neither form.
    """
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            values = json.loads(text)
        except ValueError as e:
            raise FederationConfigError(f"run config {SETTINGS_KEY}: not JSON ({e})") from e
        if not isinstance(values, dict):
            raise FederationConfigError(f"run config {SETTINGS_KEY}: expected a JSON object")
        return {str(k): v for k, v in values.items()}
    out: dict[str, Any] = {}
    for pair in text.split(","):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise FederationConfigError(
                f"run config {SETTINGS_KEY}: {pair!r} is not key=value (expected e.g. "
                "'rounds=2,local-epochs=1')"
            )
        out[key.strip()] = value.strip()
    return out


def format_settings(config: FederationConfig) -> str:
    """Every setting of ``config`` in the ``key=value,…`` form :func:`parse_settings` reads."""

    def text(value: Any) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    return ",".join(f"{k}={text(v)}" for k, v in config.to_run_config().items())


def config_from_run_config(run_config: Mapping[str, Any], params: Path | None) -> FederationConfig:
    """The settings of a Flower run: ``params.yaml``'s ``federate:`` block, then the run
    config's ``settings`` (``key=value,…`` pairs or a JSON object: ``flwr run . --run-config
    'settings="rounds=2"'``, or what ``sonofed vendor federate --superlink`` sends) on top.

    Flower refuses run-config overrides whose key ``[tool.flwr.app.config]`` does not declare,
    so the settings travel in that one key instead of being declared (and defaulted) twice.

    Raises:
        FederationConfigError: an unknown key, a bad value, or unreadable ``settings``.
    """
    names = {f.name.replace("_", "-") for f in dataclasses.fields(FederationConfig)}
    values = {str(k).replace("_", "-"): v for k, v in federate_block(params).items()}
    values.update({k: v for k, v in run_config.items() if k in names})
    extra = parse_settings(str(run_config.get(SETTINGS_KEY, "") or ""))
    values.update({k.replace("_", "-"): v for k, v in extra.items()})
    return FederationConfig.from_mapping(values)


SETTINGS_KEY = "settings"
"""Run-config key holding federation settings as JSON (over the params file's block)."""


@dataclass(frozen=True)
class SiteSpec:
    """One hospital of a simulation: its registry, the name it reports, an optional fault.

    Args:
        registry: the hospital's registry folder.
        site_id: the name it reports (default: the registry's own site id).
        fault: fault injection for tests and benchmarks (see :mod:`federation.faults`).
    """

    registry: Path
    site_id: str | None = None
    fault: str | None = None

    def node_config(self) -> dict[str, str]:
        """The SuperNode ``--node-config`` keys this hospital would be started with."""
        out = {"registry": str(Path(self.registry).resolve())}
        if self.site_id:
            out["site-id"] = self.site_id
        if self.fault:
            out["fault"] = self.fault
        return out


@dataclass(frozen=True)
class RunPaths:
    """Where a federated run reads and writes.

    Args:
        run_dir: checkpoints, the audit log, the history and the final weights.
        testset: the vendor's locked test set.
        init: bundle to start from (the current release; required for cycle >= 1).
        params: ``params.yaml`` whose ``train`` block defines a network trained from scratch.
    """

    run_dir: Path
    testset: Path
    init: Path | None = None
    params: Path | None = None
