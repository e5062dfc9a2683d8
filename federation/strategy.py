"""The vendor's strategy: a Flower strategy chosen by name, with screening and round records.

:func:`build_strategy` returns an instance of a subclass of the chosen
``flwr.serverapp.strategy`` class that

- screens the replies (:mod:`federation.screening`) before the strategy aggregates them, and
  keeps the previous global model when fewer than ``min_clients`` usable replies remain;
- sorts the replies by site, so an aggregation does not depend on arrival order;
- numbers rounds from ``round_offset`` (a resumed run continues at the checkpointed round);
- records per round which sites contributed, which were dropped and why, and which failed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    Bulyan,
    FedAvg,
    FedProx,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Strategy,
)

from federation import protocol
from federation.config import FederationConfig
from federation.screening import Update, screen_updates
from federation.task import Layout, RecordArrays, packed_problem, unpack

__all__ = ["RoundRecord", "build_strategy", "schedule_span"]

log = logging.getLogger("sonofed.federation")


@dataclass
class RoundRecord:
    """What happened to the replies of one round (merged into the history row)."""

    round: int
    sampled: int = 0
    sites: list[str] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    site_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    aggregated: bool = False
    train_metrics: dict[str, float] = field(default_factory=dict)
    evaluate_metrics: dict[str, float] = field(default_factory=dict)
    median_update_norm: float | None = None
    update_norms: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "sites": self.sites,
            "dropped": self.dropped,
            "failed": self.failed,
            "aggregated": self.aggregated,
            "median_update_norm": self.median_update_norm,
            "update_norms": self.update_norms,
            "client_train": self.train_metrics,
            "client_evaluate": self.evaluate_metrics,
            "site_info": self.site_info,
        }


def _shorten(reason: str, head: int = 120, tail: int = 300) -> str:
    """An error reason's start (the exception type) and end (its message), on one line."""
    text = " ".join(reason.split())
    return text if len(text) <= head + tail else f"{text[:head]} … {text[-tail:]}"


def _malformed(message: Message, layout: Layout) -> str | None:
    """Why a train reply does not follow :mod:`federation.protocol` (None when it does)."""
    content = message.content
    if set(content.array_records) != {protocol.ARRAYS}:
        return f"array records {sorted(content.array_records)}, expected ['{protocol.ARRAYS}']"
    if problem := packed_problem(content[protocol.ARRAYS], layout):
        return problem
    if set(content.metric_records) != {protocol.METRICS}:
        return f"metric records {sorted(content.metric_records)}, expected ['{protocol.METRICS}']"
    keys = set(content[protocol.METRICS].keys())
    if keys != protocol.TRAIN_METRIC_KEYS:
        return f"metrics {sorted(keys ^ protocol.TRAIN_METRIC_KEYS)} differ from the protocol"
    if set(content.config_records) - {protocol.SITE}:
        return f"unexpected config records {sorted(set(content.config_records) - {protocol.SITE})}"
    return None


def _site_of(message: Message) -> str:
    if protocol.SITE in message.content:
        return str(message.content[protocol.SITE].get("site-id", "?"))
    return f"node-{message.metadata.src_node_id}"


def schedule_span(config: FederationConfig, server_round: int) -> tuple[float, float]:
    """The stretch of the cycle's learning-rate schedule that ``server_round`` runs."""
    rounds = max(config.rounds, 1)
    start = min(max(server_round - 1, 0), rounds) / rounds
    return start, min(server_round, rounds) / rounds


class _Screened:
    """Mixin placed before a Flower strategy class (see the module docstring)."""

    def _setup(self, config: FederationConfig, round_offset: int, layout: Layout) -> None:
        self.config = config
        self.layout = dict(layout)
        self.round_offset = round_offset
        self.records: dict[int, RoundRecord] = {}
        self._reference: dict[int, ArrayRecord] = {}
        self._node_sites: dict[int, str] = {}
        self._asked: dict[int, set[int]] = {}

    def record(self, server_round: int) -> RoundRecord:
        return self.records.setdefault(server_round, RoundRecord(server_round))

    def expect(self, server_round: int, arrays: ArrayRecord, node_ids: Iterable[int]) -> None:
        """Note the global weights and the nodes asked in a round (``server_round`` counts
        from the start of this run); replies are screened against these weights."""
        actual = server_round + self.round_offset
        self._reference[actual] = arrays
        self._asked[actual] = set(node_ids)
        self.record(actual).sampled = len(self._asked[actual])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        actual = server_round + self.round_offset
        start, end = schedule_span(self.config, actual)
        config["lr-schedule"] = self.config.lr_schedule
        config["progress-start"], config["progress-end"] = start, end
        # the hospitals' own validation (two-pass, a third of a round's time) is wanted once:
        # every round is scored on the vendor's locked set already
        config["local-validation"] = actual >= self.config.rounds
        messages = list(super().configure_train(actual, arrays, config, grid))
        self.expect(server_round, arrays, (m.metadata.dst_node_id for m in messages))
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        actual = server_round + self.round_offset
        record = self.record(actual)
        replies = list(replies)
        ok = []
        for message in replies:
            if message.has_error():
                node = message.metadata.src_node_id
                site = self._node_sites.get(node, f"node-{node}")
                reason = _shorten(message.error.reason)
                record.failed.append({"node_id": node, "site": site, "reason": reason})
                log.warning("round %d: %s (node %d) failed: %s", actual, site, node, reason)
            elif problem := _malformed(message, self.layout):
                node = message.metadata.src_node_id
                dropped = {"node_id": node, "site": _site_of(message), "reason": "structure",
                           "detail": problem, "norm": None}  # fmt: skip
                record.dropped.append(dropped)
                log.warning("round %d: dropped the reply of node %d: %s", actual, node, problem)
            else:
                ok.append(message)
                self._node_sites[message.metadata.src_node_id] = _site_of(message)
        for node in sorted(
            self._asked.pop(actual, set()) - {m.metadata.src_node_id for m in replies}
        ):
            site = self._node_sites.get(node, f"node-{node}")
            reason = f"no reply within the round timeout ({self.config.round_timeout:g} s)"
            record.failed.append({"node_id": node, "site": site, "reason": reason})
            log.warning("round %d: %s (node %d): %s", actual, site, node, reason)
        ok.sort(key=lambda m: (_site_of(m), m.metadata.src_node_id))
        reference = unpack(self._reference.pop(actual), self.layout)
        updates = []
        for m in ok:
            arrays = RecordArrays(m.content[protocol.ARRAYS], self.layout)
            weight = float(m.content[protocol.METRICS].get(protocol.WEIGHT, float("nan")))
            updates.append(
                Update(m.metadata.src_node_id, _site_of(m), arrays, weight, arrays.shapes())
            )
        report = screen_updates(reference, updates, norm_factor=self.config.screen_norm_factor)
        record.median_update_norm = report.median_norm
        record.update_norms = {u.site_id: n for u, n in zip(updates, report.norms, strict=True)}
        for item in report.dropped:
            record.dropped.append(item.to_dict())
            log.warning(
                "round %d: dropped the update of %s (node %d): %s — %s",
                actual, item.site_id, item.node_id, item.reason, item.detail,
            )  # fmt: skip
        kept = [ok[i] for i in report.kept]
        record.sites = [_site_of(m) for m in kept]
        for m in kept:
            site = m.content.get(protocol.SITE, {})
            metrics = m.content[protocol.METRICS]
            record.site_info[_site_of(m)] = {
                "registry_site": site.get("registry-site"),
                "registry_version": site.get("registry-version"),
                "registry_hash": site.get("registry-hash"),
                "num_examples": metrics.get(protocol.WEIGHT),
                "new_cases": metrics.get("new-cases"),
                "rehearsal_cases": metrics.get("rehearsal-cases"),
            }
        if len(kept) < self.config.min_clients:
            log.warning(
                "round %d: %d usable update(s), fewer than min_clients=%d: the global model "
                "is kept unchanged", actual, len(kept), self.config.min_clients,
            )  # fmt: skip
            return None, None
        arrays, metrics = super().aggregate_train(actual, kept)
        record.aggregated = arrays is not None
        if metrics is not None:
            record.train_metrics = {k: float(v) for k, v in metrics.items()}
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        actual = server_round + self.round_offset
        replies = [m for m in replies if not m.has_error()]
        metrics = super().aggregate_evaluate(actual, replies) if replies else None
        if metrics is not None:
            self.record(actual).evaluate_metrics = {k: float(v) for k, v in metrics.items()}
        return metrics


_CLASSES: dict[str, type[Strategy]] = {
    "fedprox": FedProx,
    "fedavg": FedAvg,
    "fedtrimmedavg": FedTrimmedAvg,
    "krum": Krum,
    "multikrum": MultiKrum,
    "bulyan": Bulyan,
}


def build_strategy(
    config: FederationConfig, *, num_sites: int, layout: Layout, round_offset: int = 0
) -> Strategy:
    """The configured strategy, wrapped with screening and round records.

    Args:
        config: the federation settings (strategy name, minimum clients, robustness knobs).
        num_sites: hospitals expected to connect (each round samples all of them).
        layout: the exchanged tensors' names and shapes (:func:`federation.task.layout_of`);
            the weights travel packed (:func:`federation.task.pack`).
        round_offset: rounds already done (a resumed run).

    Returns:
        an instance whose ``records`` hold one :class:`RoundRecord` per round.
    """
    base = _CLASSES[config.strategy]
    cls = type(f"Screened{base.__name__}", (_Screened, base), {})
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": config.fraction_evaluate,
        "min_train_nodes": max(1, min(config.min_clients, num_sites)),
        "min_evaluate_nodes": 0 if config.fraction_evaluate == 0 else 1,
        "min_available_nodes": max(1, min(config.min_clients, num_sites)),
        "train_metrics_aggr_fn": protocol.aggregate_metrics,
        "evaluate_metrics_aggr_fn": protocol.aggregate_metrics,
    }
    if config.strategy == "fedprox":
        common["proximal_mu"] = config.proximal_mu
    elif config.strategy == "fedtrimmedavg":
        common["beta"] = config.trim_beta
    elif config.strategy in ("krum", "multikrum", "bulyan"):
        common["num_malicious_nodes"] = config.num_malicious
    if config.strategy == "multikrum":
        common["num_nodes_to_select"] = max(1, num_sites - config.num_malicious)
    strategy = cls(**common)
    strategy._setup(config, round_offset, layout)
    return strategy
