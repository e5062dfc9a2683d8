"""The declared change protocol: the ``gates`` block of ``params.yaml``, versioned.

The numbers a candidate must meet (see :mod:`release.gates` for what each gate computes). A
change to any of them is a new ``protocol_version``, decided before a candidate is scored.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from release.exceptions import ProtocolError

PROTOCOL_KEY = "gates"


class FirstReleaseFloors(BaseModel):
    """Absolute floors that replace the comparisons when there is no current release."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    auc_floor: float = Field(ge=0.5, le=1.0)
    subgroup_auc_floor: float = Field(ge=0.5, le=1.0)


class GateProtocol(BaseModel):
    """The ``gates`` block of ``params.yaml``: the declared change protocol."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol_version: int = Field(ge=1)
    n_bootstrap: int = Field(ge=100)
    confidence: float = Field(gt=0.5, lt=1.0)
    seed: int = 0
    auc_non_inferiority_margin: float = Field(ge=0.0, le=0.2)
    min_sensitivity_high_sensitivity: float = Field(ge=0.0, le=1.0)
    min_specificity_high_specificity: float = Field(ge=0.0, le=1.0)
    subgroup_auc_margin: float = Field(ge=0.0, le=0.5)
    subgroup_min_per_class: int = Field(ge=1)
    subgroupings: tuple[str, ...] = ("site", "scanner")
    dice_floor: float = Field(ge=0.0, le=1.0)
    ece_ceiling: float = Field(gt=0.0, le=1.0)
    first_release: FirstReleaseFloors


def load_protocol(params: Path) -> GateProtocol:
    """Read the declared protocol from a params file.

    Args:
        params: a YAML file with a ``gates`` block.

    Returns:
        The validated protocol.

    Raises:
        ProtocolError: the file is missing, not YAML, or its block does not validate.
    """
    try:
        data = yaml.safe_load(Path(params).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ProtocolError(f"{params}: cannot read the params file ({e})") from e
    if PROTOCOL_KEY not in data:
        raise ProtocolError(f"{params}: no `{PROTOCOL_KEY}` block (the change protocol)")
    try:
        return GateProtocol.model_validate(data[PROTOCOL_KEY])
    except ValidationError as e:
        first = e.errors()[0]
        raise ProtocolError(
            f"{params}: invalid `{PROTOCOL_KEY}` block ({'.'.join(map(str, first['loc']))}: "
            f"{first['msg']})"
        ) from e
