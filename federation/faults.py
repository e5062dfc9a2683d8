"""Fault injection for the fault tests and the robustness benchmark.

A hospital misbehaves only when its node config carries ``fault`` (``--node-config
'fault="scale:50"'`` or a :class:`federation.config.SiteSpec`); production nodes never set it.

==================  ==========================================================================
``exit:R``          the client process dies (``os._exit``) mid-round, in round ``R`` and later
``crash:R``         the local training raises mid-round, in round ``R`` and later (the ClientApp
                    reports an error; in the simulation this is the safe stand-in for ``exit``,
                    whose dead Ray worker also fails the other messages queued on it)
``scale:K``         the reply's weights are multiplied by ``K`` (a boosted/poisoned update)
``nan``             the reply's weights are NaN
``flip-labels``     the client trains with every benign/malignant label flipped
``leak-scores``     the calibration reply also carries every validation case's logit (the
                    vendor must refuse it: :func:`federation.calibrate.malformed_calibration`)
==================  ==========================================================================
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from federation.exceptions import FederationConfigError, InjectedFaultError
from models.data import LesionSample

__all__ = ["Fault", "parse_fault"]

KINDS = ("exit", "crash", "scale", "nan", "flip-labels", "leak-scores")


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour (see the module docstring)."""

    kind: str
    value: float = 0.0

    def flip(self, samples: Sequence[LesionSample]) -> list[LesionSample]:
        """The training samples this client uses (labels flipped for ``flip-labels``)."""
        if self.kind != "flip-labels":
            return list(samples)
        return [dataclasses.replace(s, label=1 - s.label) for s in samples]

    def corrupt(self, arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The weights this client replies with."""
        if self.kind == "scale":
            return {k: (v * self.value).astype(v.dtype) for k, v in arrays.items()}
        if self.kind == "nan":
            return {k: np.full_like(v, np.nan) for k, v in arrays.items()}
        return dict(arrays)

    def maybe_die(self, server_round: int) -> None:
        """End the process abruptly (``exit``) or fail the training (``crash``) from the
        configured round on.

        Raises:
            InjectedFaultError: for ``crash``.
        """
        if self.kind == "exit" and server_round >= int(self.value):
            os._exit(17)
        if self.kind == "crash" and server_round >= int(self.value):
            raise InjectedFaultError(f"injected crash in round {server_round}")


def parse_fault(text: str | None) -> Fault | None:
    """``"scale:50"`` → ``Fault("scale", 50.0)``; ``None``/empty → no fault.

    Raises:
        FederationConfigError: an unknown fault.
    """
    if not text:
        return None
    kind, _, value = str(text).partition(":")
    if kind not in KINDS:
        raise FederationConfigError(f"fault {text!r}: expected one of {', '.join(KINDS)}")
    try:
        number = float(value) if value else (1.0 if kind in ("exit", "crash") else 0.0)
    except ValueError as e:
        raise FederationConfigError(f"fault {text!r}: {value!r} is not a number") from e
    if kind == "scale" and not value:
        raise FederationConfigError(f"fault {text!r}: give the factor, e.g. scale:50")
    return Fault(kind, number)
