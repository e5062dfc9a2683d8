"""The vendor's Flower ServerApp (``[tool.flwr.app.components] serverapp``).

``app`` reads its plan from the run config (``flwr run .``, or a run that ``sonofed vendor
federate --superlink`` submits): the settings come from the ``federate:`` block of the params
file the run config names (``params``), with any setting the run config itself carries on top,
so ``flwr run .`` and ``sonofed vendor federate`` read the same ``params.yaml``. When the run
config names a bundle folder (``out``), the ServerApp packages the candidate too, as ``sonofed
vendor federate`` does. :func:`build_server_app` binds a prepared
:class:`~federation.server.ServerPlan` instead (the in-process simulation). The work is done by
:func:`federation.server.run_server`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.config import RunPaths, config_from_run_config
from federation.exceptions import FederationConfigError
from federation.server import ServerPlan, run_server

__all__ = ["app", "build_server_app", "plan_from_run_config"]


def _path(value: Any) -> Path | None:
    """A run-config path; relative ones are taken from ``SONOFED_ROOT`` (else the cwd)."""
    text = str(value or "").strip()
    if not text:
        return None
    path = Path(text).expanduser()
    return path if path.is_absolute() else Path(os.environ.get("SONOFED_ROOT", ".")) / path


def plan_from_run_config(run_config: Mapping[str, Any]) -> ServerPlan:
    """A plan from the run config's paths (see ``[tool.flwr.app.config]``) and the params file.

    With ``sites`` listed (``flwr run .``) every one of them must connect before round 1; with
    ``num-sites`` instead (a deployment) the run waits for that many, then goes on.

    Raises:
        FederationConfigError: the params file named is missing, or a setting is bad.
    """
    sites = [p for p in str(run_config.get("sites", "")).split(",") if p.strip()]
    params = _path(run_config.get("params"))
    if params is not None and not params.is_file():
        raise FederationConfigError(
            f"run config params: {params} is not a file (give an absolute path, or set "
            "SONOFED_ROOT to the checkout)"
        )
    config = config_from_run_config(run_config, params)
    paths = RunPaths(
        run_dir=_path(run_config.get("run-dir")) or Path("runs/federation"),
        testset=_path(run_config.get("testset")) or Path("runs/pipeline/locked"),
        init=_path(run_config.get("init")),
        params=params,
    )
    expected = int(run_config.get("num-sites", 0) or 0) or len(sites) or config.min_clients
    join = run_config.get("join-timeout")
    return ServerPlan(
        config=config,
        paths=paths,
        num_sites=expected,
        require_all_sites=bool(sites) and not int(run_config.get("num-sites", 0) or 0),
        join_timeout=float(join) if join not in (None, "") else None,
    )


def _package(run_config: Mapping[str, Any], plan: ServerPlan) -> None:
    """Write the candidate bundle when the run config names one (``out``)."""
    out = _path(run_config.get("out"))
    if out is None:
        return
    from federation.candidate import package_candidate

    version = str(run_config.get("version", "") or "") or None
    package_candidate(plan.paths.run_dir, out, testset=plan.paths.testset, version=version)


def build_server_app(plan: ServerPlan | None = None) -> ServerApp:
    """A ServerApp running ``plan`` (or the plan of its run config when None)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        if plan is not None:
            run_server(grid, plan)
            return
        planned = plan_from_run_config(context.run_config)
        run_server(grid, planned)
        _package(context.run_config, planned)

    return server


app = build_server_app()
