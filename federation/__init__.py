"""Federated learning with Flower: the hospitals' ClientApp, the vendor's ServerApp and glue.

- ``client_app``/``server_app``: the Flower apps (``[tool.flwr.app.components]``);
- :mod:`federation.client` / :mod:`federation.server`: what a hospital and the vendor do in a
  round; :mod:`federation.strategy` (Flower strategy by name + :mod:`federation.screening`),
  :mod:`federation.scoring` (locked test set every round), :mod:`federation.checkpoint`
  (resume), :mod:`federation.audit` (what left the hospitals);
- :mod:`federation.site` and :mod:`federation.continual`: a cycle's new cases, rehearsal,
  forgetting; :mod:`federation.calibrate`: federated calibration after the last round (the
  hospitals return aggregate validation statistics only); :mod:`federation.candidate`: the
  candidate bundle and its lineage; :mod:`federation.cycle`: :func:`run_cycle`, one cycle end
  to end (what ``sonofed vendor federate`` runs);
- :mod:`federation.simulation` (one machine) and :mod:`federation.deployment` (TLS, node keys,
  SuperLink and SuperNodes); :mod:`federation.services` runs a service's processes together
  and starts a refused SuperNode again.

Imports ``models`` and ``data_registry``, never ``release``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuditingGrid": "federation.audit",
    "read_audit": "federation.audit",
    "CalibrationRound": "federation.calibrate",
    "read_calibration": "federation.calibrate",
    "package_candidate": "federation.candidate",
    "Checkpoint": "federation.checkpoint",
    "CheckpointStore": "federation.checkpoint",
    "CycleOutcome": "federation.cycle",
    "CycleRequest": "federation.cycle",
    "HistoryRow": "federation.cycle",
    "RoundSettings": "federation.cycle",
    "run_cycle": "federation.cycle",
    "FederationConfig": "federation.config",
    "MODE_THRESHOLDS": "federation.config",
    "RunPaths": "federation.config",
    "STRATEGIES": "federation.config",
    "SiteSpec": "federation.config",
    "load_federate_params": "federation.config",
    "forgetting_summary": "federation.continual",
    "since_from_bundle": "federation.continual",
    "NodeKeys": "federation.deployment",
    "Pki": "federation.deployment",
    "init_pki": "federation.deployment",
    "make_node_keys": "federation.deployment",
    "register_node": "federation.deployment",
    "superlink_command": "federation.deployment",
    "supernode_command": "federation.deployment",
    "CheckpointError": "federation.exceptions",
    "DeploymentError": "federation.exceptions",
    "FederationConfigError": "federation.exceptions",
    "FederationError": "federation.exceptions",
    "FederationRunError": "federation.exceptions",
    "RegistrationError": "federation.exceptions",
    "SiteDataError": "federation.exceptions",
    "ScreeningReport": "federation.screening",
    "Update": "federation.screening",
    "screen_updates": "federation.screening",
    "ServerOutcome": "federation.server",
    "ServerPlan": "federation.server",
    "run_server": "federation.server",
    "run_federation": "federation.simulation",
    "SiteData": "federation.site",
    "load_site": "federation.site",
    "build_strategy": "federation.strategy",
}

__all__ = [
    "MODE_THRESHOLDS",
    "STRATEGIES",
    "AuditingGrid",
    "CalibrationRound",
    "Checkpoint",
    "CheckpointError",
    "CheckpointStore",
    "CycleOutcome",
    "CycleRequest",
    "DeploymentError",
    "FederationConfig",
    "FederationConfigError",
    "FederationError",
    "FederationRunError",
    "HistoryRow",
    "NodeKeys",
    "Pki",
    "RegistrationError",
    "RoundSettings",
    "RunPaths",
    "ScreeningReport",
    "ServerOutcome",
    "ServerPlan",
    "SiteData",
    "SiteDataError",
    "SiteSpec",
    "Update",
    "build_strategy",
    "forgetting_summary",
    "init_pki",
    "load_federate_params",
    "load_site",
    "make_node_keys",
    "package_candidate",
    "read_audit",
    "read_calibration",
    "register_node",
    "run_cycle",
    "run_federation",
    "run_server",
    "screen_updates",
    "since_from_bundle",
    "superlink_command",
    "supernode_command",
]


def __getattr__(name: str) -> Any:
    """Import public names on first use: a ClientApp process loads only what it needs."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'federation' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
