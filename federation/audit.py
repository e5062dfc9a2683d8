"""An audit trail of everything the vendor receives from the hospitals.

:class:`AuditingGrid` wraps the ServerApp's ``Grid`` and appends one JSON line per received
message to ``RUN/audit.jsonl``: sender, message type, and the structure of every record — array
names, shapes and dtypes (no values), metric names and values, config names and values. It is
the evidence that nothing case-level (images, masks, case ids, per-case predictions) left a
hospital: :func:`audit_violations` checks every entry against the allow-list of
:mod:`federation.protocol` (record names, array names with their one allowed shape, metric and
site keys, single numbers only), and the tests run it on real runs.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.serverapp import Grid

__all__ = ["AuditingGrid", "audit_violations", "describe", "read_audit"]


def describe(message: Message) -> dict[str, Any]:
    """The structure of a received message (array values are never written)."""
    entry: dict[str, Any] = {
        "src_node_id": message.metadata.src_node_id,
        "message_type": message.metadata.message_type,
        "group_id": message.metadata.group_id,
    }
    if message.has_error():
        entry["error"] = {"code": message.error.code, "reason": message.error.reason[:500]}
        return entry
    content: RecordDict = message.content
    entry["arrays"] = {
        name: {k: {"shape": list(a.shape), "dtype": a.dtype} for k, a in record.items()}
        for name, record in content.array_records.items()
    }
    entry["metrics"] = {
        name: dict(record.items()) for name, record in content.metric_records.items()
    }
    entry["configs"] = {
        name: {k: v if not isinstance(v, bytes) else f"<{len(v)} bytes>" for k, v in record.items()}
        for name, record in content.config_records.items()
    }
    return entry


class AuditingGrid(Grid):
    """A ``Grid`` that logs every message it receives (see the module docstring).

    Args:
        inner: the Grid Flower gave the ServerApp.
        path: the JSON-lines file to append to.
    """

    def __init__(self, inner: Grid, path: Path) -> None:
        self._inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _log(self, messages: Iterable[Message]) -> list[Message]:
        messages = list(messages)
        with self._lock, open(self.path, "a") as handle:
            for message in messages:
                handle.write(json.dumps(describe(message), default=str) + "\n")
        return messages

    def set_run(self, run) -> None:
        self._inner.set_run(run)

    @property
    def run(self):
        return self._inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def get_nodes(self):
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._log(self._inner.pull_messages(message_ids))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._log(self._inner.send_and_receive(messages, timeout=timeout))


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit file."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _scalars(values: dict[str, Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values.values())


def audit_violations(
    entries: list[dict[str, Any]],
    *,
    weight_shapes: dict[str, list[int]],
    calibration_shapes: dict[str, list[int]] | None,
) -> list[str]:
    """Every way the audited messages break the protocol's allow-list (empty: none).

    Args:
        entries: what :func:`read_audit` returned.
        weight_shapes: the exchanged weights' names and shapes (a train reply's only arrays).
        calibration_shapes: a calibration reply's array names and shapes
            (:func:`federation.protocol.calibration_array_shapes`; None: none expected).

    Returns:
        one line per violation, naming the message and what is not allowed.
    """
    from federation import protocol

    allowed = {
        "train": ({protocol.ARRAYS: weight_shapes}, protocol.TRAIN_METRIC_KEYS),
        "evaluate": ({}, protocol.EVALUATE_METRIC_KEYS),
    }
    if calibration_shapes is not None:
        allowed[protocol.CALIBRATE] = (
            {protocol.CALIBRATION: calibration_shapes},
            protocol.CALIBRATE_METRIC_KEYS,
        )
    problems = []
    for i, entry in enumerate(entries):
        where = f"entry {i} ({entry.get('message_type')} from node {entry.get('src_node_id')})"
        if "error" in entry:
            if set(entry) - {"src_node_id", "message_type", "group_id", "error"}:
                problems.append(f"{where}: an error reply carries more than the error")
            continue
        if entry.get("message_type") not in allowed:
            problems.append(f"{where}: message type not in the protocol")
            continue
        arrays, metric_keys = allowed[entry["message_type"]]
        shapes = {
            name: {k: v["shape"] for k, v in record.items()}
            for name, record in entry.get("arrays", {}).items()
        }
        if shapes != arrays:
            problems.append(f"{where}: arrays {_diff(shapes, arrays)}")
        metrics = entry.get("metrics", {})
        if set(metrics) != {protocol.METRICS}:
            problems.append(f"{where}: metric records {sorted(metrics)}")
        elif set(metrics[protocol.METRICS]) - metric_keys or not _scalars(
            metrics[protocol.METRICS]
        ):
            problems.append(f"{where}: metrics {sorted(metrics[protocol.METRICS])} not allowed")
        configs = entry.get("configs", {})
        if set(configs) - {protocol.SITE}:
            problems.append(f"{where}: config records {sorted(configs)}")
        elif set(configs.get(protocol.SITE, {})) - protocol.SITE_KEYS:
            problems.append(f"{where}: site keys {sorted(configs[protocol.SITE])} not allowed")
    return problems


def _diff(got: dict[str, Any], expected: dict[str, Any]) -> str:
    names = sorted(set(got) | set(expected))
    parts = []
    for name in names:
        a, b = got.get(name, {}), expected.get(name, {})
        extra = sorted(set(a) - set(b))
        wrong = sorted(k for k in set(a) & set(b) if list(a[k]) != list(b[k]))
        missing = sorted(set(b) - set(a))
        if name not in expected:
            parts.append(f"unexpected record {name!r}")
        elif extra or wrong or missing:
            parts.append(f"{name}: extra {extra}, wrong shape {wrong}, missing {missing}")
    return "; ".join(parts) or "differ"
