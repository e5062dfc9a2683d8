"""The vendor's Flower ServerApp (``[tool.flwr.app.components] serverapp``).

``app`` reads its settings from the run config (``flwr run .``); :func:`build_server_app`
binds a prepared :class:`~federation.server.ServerPlan` instead (the in-process simulation of
``sonofed vendor federate``). The work is done by :func:`federation.server.run_server`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from federation.config import FederationConfig, RunPaths
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
    """A plan from ``[tool.flwr.app.config]`` keys (see ``pyproject.toml``)."""
    sites = [p for p in str(run_config.get("sites", "")).split(",") if p.strip()]
    config = FederationConfig.from_run_config(run_config)
    paths = RunPaths(
        run_dir=_path(run_config.get("run-dir")) or Path("runs/federation"),
        testset=_path(run_config.get("testset")) or Path("runs/pipeline/locked"),
        init=_path(run_config.get("init")),
        params=_path(run_config.get("params")),
    )
    expected = int(run_config.get("num-sites", 0) or 0) or len(sites) or config.min_clients
    return ServerPlan(config=config, paths=paths, num_sites=expected)


def build_server_app(plan: ServerPlan | None = None) -> ServerApp:
    """A ServerApp running ``plan`` (or the plan of its run config when None)."""
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_server(grid, plan or plan_from_run_config(context.run_config))

    return server


app = build_server_app()
