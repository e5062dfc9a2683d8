"""Model glue shared by the hospital and the vendor: which weights travel, and the recipe.

Only floating-point tensors (parameters and BatchNorm running statistics) are exchanged; integer
buffers such as ``num_batches_tracked`` stay local, so that aggregation, screening norms and
Krum distances see weights only.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from federation.exceptions import FederationConfigError
from models.network import LesionNet
from models.train import TrainConfig, build_model, load_state_numpy, state_to_numpy

__all__ = [
    "RecordArrays",
    "decode_train_config",
    "encode_train_config",
    "exchanged_state",
    "from_record",
    "load_exchanged",
    "model_from_arrays",
    "to_record",
    "train_config_from_params",
]


def exchanged_state(model: LesionNet) -> dict[str, np.ndarray]:
    """The weights that leave a hospital: every floating-point tensor of the state dict."""
    return {k: v for k, v in state_to_numpy(model).items() if np.issubdtype(v.dtype, np.floating)}


def load_exchanged(model: LesionNet, arrays: Mapping[str, np.ndarray]) -> None:
    """Load exchanged weights into ``model``; its integer buffers keep their own values.

    Raises:
        models.exceptions.StateDictError: names or shapes do not match the network.
    """
    state = state_to_numpy(model)
    state.update({k: np.asarray(v) for k, v in arrays.items()})
    load_state_numpy(model, state)


def to_record(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Named numpy arrays as a Flower ``ArrayRecord`` (names kept, in order)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Inverse of :func:`to_record`."""
    return {k: v.numpy() for k, v in record.items()}


class RecordArrays(Mapping[str, np.ndarray]):
    """Read-only view of an ``ArrayRecord`` that deserialises one array per access.

    Screening reads each reply once, layer by layer, without holding a second copy of it.
    """

    def __init__(self, record: ArrayRecord) -> None:
        self._record = record

    def __getitem__(self, name: str) -> np.ndarray:
        return self._record[name].numpy()

    def __iter__(self) -> Iterator[str]:
        return iter(self._record.keys())

    def __len__(self) -> int:
        return len(self._record)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes from the record's metadata (no deserialisation)."""
        return {k: tuple(v.shape) for k, v in self._record.items()}


def model_from_arrays(config: TrainConfig, arrays: Mapping[str, np.ndarray]) -> LesionNet:
    """A network of ``config``'s architecture holding ``arrays`` (eval mode)."""
    model = build_model(config)
    load_exchanged(model, arrays)
    model.eval()
    return model


def encode_train_config(config: TrainConfig) -> str:
    """The network recipe as JSON: sent to the hospitals with every round."""
    return json.dumps(dataclasses.asdict(config), sort_keys=True)


def decode_train_config(text: str) -> TrainConfig:
    """Inverse of :func:`encode_train_config`.

    Raises:
        FederationConfigError: the text is not a recipe.
    """
    from models.packaging import config_from_dict  # onnx and reports: not at import time

    try:
        return config_from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError) as e:
        raise FederationConfigError(f"not a network recipe: {e}") from e


def train_config_from_params(params: Path | None, **overrides: Any) -> TrainConfig:
    """The ``train`` block of ``params.yaml`` (nested ``spec``/``augmentation`` allowed).

    Raises:
        FederationConfigError: the block cannot be turned into a recipe.
    """
    from models.central import load_train_config

    try:
        return load_train_config(params, **overrides)
    except Exception as e:  # ConfigError, TypeError from a malformed block
        raise FederationConfigError(f"{params}: train block is not a valid recipe ({e})") from e
