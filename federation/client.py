"""The hospital's side of a round: train locally, or validate the global model locally.

Only weights and aggregate numbers leave: the reply holds the hospital's floating-point weights,
counts, a mean loss and local validation AUC/Dice, and which registry version was used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

from federation import protocol
from federation.config import SiteSpec
from federation.exceptions import (
    InjectedFaultError,
    LocalTrainingError,
    SiteDataError,
)
from federation.faults import Fault, parse_fault
from federation.site import SiteData, load_site, site_seed
from federation.task import (
    decode_train_config,
    exchanged_state,
    layout_of,
    load_packed,
    pack,
    unpack,
)
from models import metrics
from models.data import LesionSample
from models.network import LesionNet
from models.train import build_model, predict, train_epochs

__all__ = [
    "NodeSettings",
    "evaluate_reply",
    "guarded",
    "local_validation",
    "node_settings",
    "train_reply",
]

log = logging.getLogger("sonofed.federation")


@dataclass(frozen=True)
class NodeSettings:
    """Per-hospital settings, from ``context.node_config``.

    Attributes:
        registry: the hospital's registry folder (``registry``).
        site_id: the name it reports (``site-id``; default: the registry's site id).
        fault: injected misbehaviour (``fault``; tests and benchmarks only).
        num_threads: torch threads for local training (``num-threads``, else
            ``OMP_NUM_THREADS``, else 1).
    """

    registry: Path
    site_id: str | None = None
    fault: Fault | None = None
    num_threads: int = 1


def node_settings(context: Context, sites: Sequence[SiteSpec] | None = None) -> NodeSettings:
    """Resolve this node's registry: node config first, then the simulation's site list.

    In a simulation, node ``partition-id`` i is the i-th entry of ``sites`` (when the app was
    built with them) or of the comma-separated run config key ``sites``.

    Raises:
        SiteDataError: no registry can be found for this node.
    """
    node = context.node_config
    threads = int(node.get("num-threads", os.environ.get("OMP_NUM_THREADS", "1")) or 1)
    if "registry" in node:
        spec = SiteSpec(Path(str(node["registry"])), node.get("site-id"), node.get("fault"))
    elif "partition-id" in node:
        index = int(node["partition-id"])
        listed = list(sites or [])
        if not listed:
            text = str(context.run_config.get("sites", ""))
            listed = [SiteSpec(Path(p)) for p in text.split(",") if p]
        if index >= len(listed):
            raise SiteDataError(
                f"simulation node {index} has no registry: {len(listed)} site(s) configured"
            )
        spec = listed[index]
    else:
        raise SiteDataError(
            "this SuperNode has no registry: start it with --node-config 'registry=\"DIR\"'"
        )
    return NodeSettings(
        spec.registry,
        str(spec.site_id) if spec.site_id else None,
        parse_fault(spec.fault),
        max(1, threads),
    )


def _site(settings: NodeSettings, config: Mapping[str, Any]) -> SiteData:
    since = {str(k): int(v) for k, v in json.loads(str(config.get("since", "{}")) or "{}").items()}
    return load_site(
        settings.registry,
        since=since,
        rehearsal_size=int(config.get("rehearsal-size", 0)),
        val_fraction=float(config.get("val-fraction", 0.15)),
        seed=int(config.get("seed", 0)),
        cycle=int(config.get("cycle", 0)),
    )


def local_validation(model: LesionNet, val: Sequence[LesionSample]) -> dict[str, float]:
    """AUC and mean Dice of ``model`` on the local validation cases (two-pass prediction)."""
    if not val:
        return {"val-auc": float("nan"), "val-dice": float("nan")}
    predictions = predict(model, val, engine="onnx")
    y = np.array([s.label for s in val])
    logits = np.array([p.malignancy_logit for p in predictions])
    auc = float("nan")
    if np.isfinite(logits).all():
        result = metrics.auc_with_ci(y, logits, n_bootstrap=1)
        auc = float("nan") if result.auc is None else result.auc
    dice = metrics.dice_scores([p.mask for p in predictions], [s.mask for s in val])
    return {"val-auc": auc, "val-dice": float(np.mean(dice))}


OPTIMIZER_STATE = "local-optimizer"
"""Key of the hospital's AdamW moments in its ``context.state`` (kept across rounds, never sent)."""
OPTIMIZER_LAYOUT = "local-optimizer-layout"
"""Key of their names and shapes (the moments are kept packed, like the exchanged weights)."""


def _kept_moments(context: Context) -> dict[str, np.ndarray]:
    record = context.state.array_records.get(OPTIMIZER_STATE)
    layout = context.state.config_records.get(OPTIMIZER_LAYOUT)
    if record is None or layout is None:
        return {}
    shapes = {str(k): tuple(v) for k, v in json.loads(str(layout["layout"]))}
    return unpack(record, shapes)


def _keep_moments(context: Context, moments: dict[str, np.ndarray]) -> None:
    context.state[OPTIMIZER_STATE] = pack(moments)
    layout = [[k, list(shape)] for k, shape in layout_of(moments).items()]
    context.state[OPTIMIZER_LAYOUT] = ConfigRecord({"layout": json.dumps(layout)})


def _steps_taken(moments: dict[str, np.ndarray] | None) -> float:
    """Local optimiser steps so far this cycle (grows across rounds when moments are kept)."""
    steps = [float(np.ravel(v)[0]) for k, v in (moments or {}).items() if k.endswith("/step")]
    return max(steps, default=0.0)


def _site_record(settings: NodeSettings, site: SiteData) -> ConfigRecord:
    return ConfigRecord(
        {
            "site-id": settings.site_id or site.site_id,
            "registry-site": site.site_id,
            "registry-version": site.registry_version,
            "registry-hash": site.content_hash,
        }
    )


def train_reply(msg: Message, context: Context, settings: NodeSettings) -> Message:
    """Train the received global model on this hospital's cycle data; reply weights + metrics.

    Raises:
        SiteDataError: the registry has nothing to train on (the server records the failure).
    """
    start = time.perf_counter()
    config = msg.content[protocol.CONFIG]
    server_round = int(config.get("server-round", 1))
    site = _site(settings, config)
    if not site.new_cases:
        raise SiteDataError(
            f"{site.site_id}: no eligible case added since registry version {site.since} "
            f"(current version {site.registry_version}); nothing new to train on this cycle"
        )
    recipe = decode_train_config(str(config["train-config"]))
    mu = float(config.get("proximal-mu", 0.0))
    batch = int(config.get("batch-size", 0)) or recipe.batch_size
    local = dataclasses.replace(
        recipe,
        proximal_mu=mu,
        batch_size=batch,
        num_threads=settings.num_threads,
        seed=site_seed(site.site_id, int(config.get("seed", 0))),
    )
    torch.set_num_threads(settings.num_threads)
    model = build_model(local)
    global_arrays = load_packed(model, msg.content[protocol.ARRAYS])
    fault = settings.fault
    samples = fault.flip(site.train) if fault else site.train
    if fault:
        fault.maybe_die(server_round)
    epochs = int(config.get("local-epochs", 1))
    lr = float(config.get("lr", 0.0)) or None
    moments = _kept_moments(context) if bool(config.get("keep-optimizer", False)) else None
    history = train_epochs(
        model,
        samples,
        local,
        epochs,
        proximal_to=global_arrays if mu > 0 else None,
        lr=lr,
        epoch_offset=(server_round - 1) * epochs,
        progress=False,
        schedule=str(config.get("lr-schedule", "cosine")),
        span=(float(config.get("progress-start", 0.0)), float(config.get("progress-end", 1.0))),
        optimizer_state=moments,
    )
    if moments is not None:
        _keep_moments(context, moments)
    validate = bool(config.get("local-validation", True))
    validation = local_validation(model, site.val if validate else ())
    arrays = exchanged_state(model)
    if fault:
        arrays = fault.corrupt(arrays)
    metric_record = MetricRecord(
        {
            protocol.WEIGHT: len(samples),
            "train-loss": float(history[-1].get("train_total", float("nan"))),
            "val-auc": validation["val-auc"],
            "val-dice": validation["val-dice"],
            "val-cases": len(site.val),
            "new-cases": site.new_cases,
            "rehearsal-cases": site.rehearsal_cases,
            "train-seconds": time.perf_counter() - start,
            "optimizer-steps": _steps_taken(moments),
        }
    )
    content = RecordDict(
        {
            protocol.ARRAYS: pack(arrays),
            protocol.METRICS: metric_record,
            protocol.SITE: _site_record(settings, site),
        }
    )
    return Message(content=content, reply_to=msg)


def received_model(msg: Message, settings: NodeSettings) -> LesionNet:
    """The network a vendor message carries (its recipe and packed weights), in eval mode."""
    recipe = decode_train_config(str(msg.content[protocol.CONFIG]["train-config"]))
    torch.set_num_threads(settings.num_threads)
    model = build_model(recipe)
    load_packed(model, msg.content[protocol.ARRAYS])
    return model.eval()


def evaluate_reply(msg: Message, context: Context, settings: NodeSettings) -> Message:
    """Validate the received global model on this hospital's local validation cases."""
    config = msg.content[protocol.CONFIG]
    site = _site(settings, config)
    model = received_model(msg, settings)
    validation = local_validation(model, site.val)
    metric_record = MetricRecord({protocol.WEIGHT: len(site.val), **validation})
    content = RecordDict(
        {protocol.METRICS: metric_record, protocol.SITE: _site_record(settings, site)}
    )
    return Message(content=content, reply_to=msg)


def guarded(
    handler: Callable[[Message, Context, NodeSettings], Message],
    msg: Message,
    context: Context,
    settings: NodeSettings,
) -> Message:
    """Run a handler; a foreign exception leaves the hospital as its type only.

    The full error is logged locally. The federation's own errors (no registry, nothing new to
    train on, an injected fault) keep their message: they never name a case.

    Raises:
        FederationError: the handler failed (see above).
    """
    try:
        return handler(msg, context, settings)
    except (SiteDataError, InjectedFaultError):
        raise
    except Exception as e:
        log.exception("%s failed at %s", msg.metadata.message_type, settings.registry)
        raise LocalTrainingError(
            f"local {msg.metadata.message_type} failed with {type(e).__name__}; "
            "the details are in the hospital's log"
        ) from None
