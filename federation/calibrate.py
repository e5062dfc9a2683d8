"""Federated calibration: the hospitals evaluate the candidate, the vendor fits from sums.

After the last round the vendor sends the candidate's weights to every hospital in an
``evaluate.calibrate`` message (:data:`federation.protocol.CALIBRATE`). Each hospital analyses
its own local validation split (:func:`federation.site.validation_split`, never trained on) and
replies only :class:`models.validation_stats.ValidationStatistics`: per-class logit histograms
in the bins the vendor sent, confusion counts per descriptor source, the Dice sum and case
counts, optionally with ε-differentially private histograms (``dp_epsilon``). The vendor checks
every reply against the protocol's allow-list (names, shapes, dtypes; anything else is dropped
and recorded), adds the statistics up and fits the temperature, the three operating points and
the descriptor sources (:func:`models.validation_stats.fit_calibration`). It never opens a
registry, in the simulation as in a deployment.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from pydantic import BaseModel, ConfigDict

from data_registry.files import write_atomic
from federation import protocol
from federation.client import NodeSettings, _site, _site_record, received_model
from federation.config import FederationConfig
from federation.exceptions import FederationRunError
from federation.task import (
    encode_train_config,
    pack,
    recipe_layout,
)
from models.calibration import LogitBins
from models.exceptions import CalibrationError
from models.train import TrainConfig, predict
from models.validation_stats import (
    DESCRIPTORS,
    SOURCES,
    FittedCalibration,
    ValidationStatistics,
    add_laplace_noise,
    fit_calibration,
    validation_statistics,
)

__all__ = [
    "CALIBRATION_FILE",
    "CalibrationRound",
    "calibrate_reply",
    "calibration_request",
    "read_calibration",
    "run_calibration",
]

log = logging.getLogger("sonofed.federation")
CALIBRATION_FILE = "calibration.json"


def bins_of(config: FederationConfig) -> LogitBins:
    """The logit bins a cycle's settings call for."""
    limit = config.calibration_logit_limit
    return LogitBins(low=-limit, high=limit, count=config.calibration_bins)


def calibration_request(config: FederationConfig, recipe: TrainConfig) -> ConfigRecord:
    """The config every hospital receives with the candidate."""
    bins = bins_of(config)
    return ConfigRecord(
        {
            "train-config": encode_train_config(recipe),
            "val-fraction": config.val_fraction,
            "seed": config.seed,
            "cycle": config.cycle,
            "logit-low": bins.low,
            "logit-high": bins.high,
            "logit-bins": bins.count,
            "dp-epsilon": config.dp_epsilon,
        }
    )


# -- the hospital ----------------------------------------------------------------------------


def encode_statistics(stats: ValidationStatistics) -> tuple[ArrayRecord, MetricRecord]:
    """The arrays and metrics of a calibration reply."""
    arrays: dict[str, np.ndarray] = {
        "hist-benign": np.asarray(stats.benign, dtype=np.float64),
        "hist-malignant": np.asarray(stats.malignant, dtype=np.float64),
    }
    for source in SOURCES:
        for name in DESCRIPTORS:
            arrays[protocol.confusion_key(source, name)] = np.asarray(
                stats.confusion[source][name], dtype=np.int64
            )
    metrics = MetricRecord(
        {
            protocol.WEIGHT: stats.cases,
            "benign-cases": stats.benign_cases,
            "malignant-cases": stats.malignant_cases,
            "dice-sum": stats.dice_sum,
        }
    )
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}), metrics


def calibrate_reply(msg: Message, context: Context, settings: NodeSettings) -> Message:
    """Analyse the local validation split with the candidate; reply aggregate statistics only.

    Raises:
        SiteDataError: the registry cannot be read.
    """
    config = msg.content[protocol.CONFIG]
    site = _site(settings, config)
    model = received_model(msg, settings)
    bins = protocol.bins_from_config(config)
    stats = validation_statistics(site.val, predict(model, site.val, engine="onnx"), bins)
    epsilon = float(config.get("dp-epsilon", 0.0))
    if epsilon > 0:  # fresh, unpredictable noise every time (never seeded from the data)
        stats = add_laplace_noise(stats, epsilon, np.random.default_rng(secrets.randbits(128)))
    arrays, metrics = encode_statistics(stats)
    fault = settings.fault
    if fault is not None and fault.kind == "leak-scores":  # tests: a hospital that oversends
        logits = [p.malignancy_logit for p in predict(model, site.val)]
        arrays["per-case-logits"] = Array(np.asarray(logits, dtype=np.float64))
    content = RecordDict(
        {
            protocol.CALIBRATION: arrays,
            protocol.METRICS: metrics,
            protocol.SITE: _site_record(settings, site),
        }
    )
    return Message(content=content, reply_to=msg)


# -- the vendor ------------------------------------------------------------------------------


def malformed_calibration(content: RecordDict, bins: LogitBins) -> str | None:
    """Why a calibration reply breaks the allow-list (None when it follows it exactly)."""
    if set(content.array_records) != {protocol.CALIBRATION}:
        return f"array records {sorted(content.array_records)}, expected ['{protocol.CALIBRATION}']"
    if set(content.metric_records) != {protocol.METRICS}:
        return f"metric records {sorted(content.metric_records)}, expected ['{protocol.METRICS}']"
    if set(content.config_records) - {protocol.SITE}:
        return f"unexpected config records {sorted(set(content.config_records) - {protocol.SITE})}"
    site = content.config_records.get(protocol.SITE)
    if site is not None and set(site.keys()) - protocol.SITE_KEYS:
        return f"site keys {sorted(set(site.keys()) - protocol.SITE_KEYS)} are not allowed"
    allowed = protocol.calibration_array_shapes(bins)
    record = content[protocol.CALIBRATION]
    if set(record.keys()) != set(allowed):
        extra, missing = (
            sorted(set(record.keys()) - set(allowed)),
            sorted(set(allowed) - set(record.keys())),
        )
        return f"calibration arrays differ from the protocol (extra {extra}, missing {missing})"
    for name, array in record.items():
        if tuple(array.shape) != allowed[name]:
            return f"{name}: shape {tuple(array.shape)}, expected {allowed[name]}"
        expected = "float64" if name in protocol.HISTOGRAMS else "int64"
        if str(array.dtype) != expected:
            return f"{name}: dtype {array.dtype}, expected {expected}"
    keys = set(content[protocol.METRICS].keys())
    if keys != protocol.CALIBRATE_METRIC_KEYS:
        return f"metrics {sorted(keys ^ protocol.CALIBRATE_METRIC_KEYS)} differ from the protocol"
    if any(isinstance(v, list) for v in content[protocol.METRICS].values()):
        return "metrics must be single numbers"
    return None


def decode_statistics(content: RecordDict, bins: LogitBins, epsilon: float) -> ValidationStatistics:
    """The statistics of a well-formed calibration reply.

    Raises:
        CalibrationError: values out of range (negative or non-finite counts).
    """
    record = content[protocol.CALIBRATION]
    metrics = content[protocol.METRICS]
    arrays = {k: v.numpy() for k, v in record.items()}
    for name, value in arrays.items():
        if not np.all(np.isfinite(value)) or (name not in protocol.HISTOGRAMS and value.min() < 0):
            raise CalibrationError(f"{name}: counts must be finite and non-negative")
    return ValidationStatistics(
        bins=bins,
        benign=arrays["hist-benign"].tolist(),
        malignant=arrays["hist-malignant"].tolist(),
        benign_cases=int(metrics["benign-cases"]),
        malignant_cases=int(metrics["malignant-cases"]),
        dice_sum=float(metrics["dice-sum"]),
        confusion={
            s: {d: arrays[protocol.confusion_key(s, d)].tolist() for d in DESCRIPTORS}
            for s in SOURCES
        },
        epsilon=epsilon or None,
    )


class CalibrationRound(BaseModel):
    """The calibration step of a cycle, as written to ``RUN/calibration.json``.

    Attributes:
        round: the round whose global model was calibrated.
        fitted: temperature, operating points, descriptor sources and validation metrics.
        sites: site → validation cases it reported.
        dropped: replies refused (site, reason).
        failed: hospitals that replied with an error or not at all.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int
    fitted: FittedCalibration
    sites: dict[str, dict[str, int]]
    dropped: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []


def _site_name(message: Message) -> str:
    if protocol.SITE in message.content:
        return str(message.content[protocol.SITE].get("site-id", "?"))
    return f"node-{message.metadata.src_node_id}"


def run_calibration(
    grid: Grid,
    arrays: Mapping[str, np.ndarray],
    *,
    config: FederationConfig,
    recipe: TrainConfig,
    final_round: int,
    run_dir: Path,
    skip_nodes: Iterable[int] = (),
) -> CalibrationRound:
    """Ask every connected hospital for its validation statistics of ``arrays``, then fit.

    Hospitals in ``skip_nodes`` (those that failed the last round: a dead SuperNode may still
    be listed until its heartbeat expires) are not asked. Writes ``run_dir/calibration.json``.

    Raises:
        FederationRunError: no hospital returned usable statistics, or they hold one class.
    """
    bins = bins_of(config)
    request = calibration_request(config, recipe)
    record = pack(arrays, recipe_layout(recipe))
    skipped = set(skip_nodes)
    nodes = sorted(set(grid.get_node_ids()) - skipped)
    messages = [
        Message(
            content=RecordDict({protocol.ARRAYS: record, protocol.CONFIG: request}),
            message_type=protocol.CALIBRATE,
            dst_node_id=node,
            group_id=f"calibrate-{final_round}",
        )
        for node in nodes
    ]
    replies = list(grid.send_and_receive(messages, timeout=config.round_timeout))
    total: ValidationStatistics | None = None
    sites: dict[str, dict[str, int]] = {}
    dropped, failed = [], []
    answered = {m.metadata.src_node_id for m in replies}
    for node in sorted(set(nodes) - answered):
        failed.append({"node_id": node, "reason": "no reply within the round timeout"})
    for message in sorted(replies, key=lambda m: (_site_name(m), m.metadata.src_node_id)):
        node = message.metadata.src_node_id
        if message.has_error():
            failed.append({"node_id": node, "reason": " ".join(message.error.reason.split())[:300]})
            continue
        site = _site_name(message)
        problem = malformed_calibration(message.content, bins)
        stats = None
        if problem is None:
            try:
                stats = decode_statistics(message.content, bins, config.dp_epsilon)
            except CalibrationError as e:
                problem = str(e)
        if stats is None:
            dropped.append(
                {"node_id": node, "site": site, "reason": "structure", "detail": problem}
            )
            log.warning("calibration: dropped the reply of %s (node %d): %s", site, node, problem)
            continue
        sites[site] = {"benign": stats.benign_cases, "malignant": stats.malignant_cases}
        total = stats if total is None else total.merge(stats)
    if total is None:
        raise FederationRunError(
            "calibration: no hospital returned usable validation statistics "
            f"(failed: {failed}, dropped: {dropped})"
        )
    try:
        fitted = fit_calibration(total, confidence=recipe.operating_confidence, seed=config.seed)
    except CalibrationError as e:
        raise FederationRunError(f"calibration: {e}") from e
    failed += [
        {"node_id": n, "reason": "failed the last round: not asked"} for n in sorted(skipped)
    ]
    result = CalibrationRound(
        round=final_round, fitted=fitted, sites=sites, dropped=dropped, failed=failed
    )
    write_atomic(
        Path(run_dir) / CALIBRATION_FILE, (result.model_dump_json(indent=1) + "\n").encode()
    )
    log.info(
        "calibration: %d site(s), %d validation cases, T=%.3f",
        len(sites), fitted.validation["n"], fitted.temperature,
    )  # fmt: skip
    return result


def read_calibration(run_dir: Path) -> CalibrationRound:
    """The calibration a finished run wrote.

    Raises:
        FederationRunError: the run folder has none (or it is unreadable).
    """
    path = Path(run_dir) / CALIBRATION_FILE
    try:
        return CalibrationRound.model_validate(json.loads(path.read_text()))
    except (OSError, ValueError) as e:
        raise FederationRunError(f"{path}: no federated calibration ({e})") from e
