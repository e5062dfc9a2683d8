"""The hospital's Flower ClientApp (``[tool.flwr.app.components] clientapp``).

Per-hospital settings come from the SuperNode's node config (``registry``, ``site-id``) or, in a
simulation, from the site list by ``partition-id``. The work is done by
:mod:`federation.client` (train, evaluate) and :mod:`federation.calibrate` (the candidate's
aggregate validation statistics after the last round).
"""

from __future__ import annotations

from collections.abc import Sequence

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from federation.calibrate import calibrate_reply
from federation.client import evaluate_reply, guarded, node_settings, train_reply
from federation.config import SiteSpec

__all__ = ["app", "build_client_app"]


def build_client_app(sites: Sequence[SiteSpec] | None = None) -> ClientApp:
    """A ClientApp; ``sites`` maps simulation partitions to registries (else node config)."""
    client = ClientApp()
    listed = tuple(sites or ())

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        return guarded(train_reply, msg, context, node_settings(context, listed))

    @client.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return guarded(evaluate_reply, msg, context, node_settings(context, listed))

    @client.evaluate("calibrate")
    def calibrate(msg: Message, context: Context) -> Message:
        return guarded(calibrate_reply, msg, context, node_settings(context, listed))

    return client


app = build_client_app()
