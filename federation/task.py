"""Model glue shared by the hospital and the vendor: which weights travel, and the recipe.

Only floating-point tensors (parameters and BatchNorm running statistics) are exchanged; integer
buffers such as ``num_batches_tracked`` stay local, so that aggregation, screening norms and
Krum distances see weights only.

On the wire the weights are one float32 vector (:func:`pack`): every tensor flattened and
concatenated in the network's state-dict order, which both sides know from the recipe
(:func:`layout_of`). Flower sends each array of a record as its own object, one HTTPS request
each in a deployment; 104 tensors of the tests' tiny network made 149 objects per message, the
packed vector 3. Aggregation, clipping and the robust rules are element-wise or over the whole
update, so they see the same numbers; screening unpacks the tensors by name (:class:`RecordArrays`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from federation.exceptions import FederationConfigError
from models.network import LesionNet
from models.train import TrainConfig, build_model, load_state_numpy, state_to_numpy

__all__ = [
    "PACKED",
    "Layout",
    "RecordArrays",
    "decode_train_config",
    "encode_train_config",
    "exchanged_state",
    "from_record",
    "layout_of",
    "load_exchanged",
    "model_from_arrays",
    "pack",
    "packed_problem",
    "packed_shapes",
    "to_record",
    "train_config_from_params",
    "unpack",
]

PACKED = "weights"
"""The one array of an exchanged-weights record (see the module docstring)."""

Layout = Mapping[str, tuple[int, ...]]
"""Names and shapes of the exchanged tensors, in packing order."""


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


def layout_of(arrays: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``arrays``, in order (e.g. of :func:`exchanged_state`)."""
    return {k: tuple(np.shape(v)) for k, v in arrays.items()}


def recipe_layout(recipe: TrainConfig) -> dict[str, tuple[int, ...]]:
    """The exchanged tensors of ``recipe``'s network, in the order both sides pack them."""
    return layout_of(exchanged_state(build_model(recipe)))


def load_packed(model: LesionNet, record: ArrayRecord) -> dict[str, np.ndarray]:
    """Load packed exchanged weights (:func:`pack`) into ``model`` and return them unpacked."""
    arrays = unpack(record, layout_of(exchanged_state(model)))
    load_exchanged(model, arrays)
    return arrays


def _size(layout: Layout) -> int:
    return sum(math.prod(shape) for shape in layout.values())


def pack(arrays: Mapping[str, np.ndarray], layout: Layout | None = None) -> ArrayRecord:
    """Exchanged weights as a one-array record: float32 tensors flattened in ``layout``'s order
    (default: ``arrays``' own order).

    Raises:
        FederationConfigError: ``arrays`` do not have ``layout``'s names and shapes.
    """
    if layout is not None:
        if set(arrays) != set(layout) or any(
            tuple(np.shape(arrays[k])) != tuple(shape) for k, shape in layout.items()
        ):
            raise FederationConfigError("weights do not fit the network: names or shapes differ")
        arrays = {k: arrays[k] for k in layout}
    parts = [np.asarray(v, dtype=np.float32).ravel() for v in arrays.values()]
    flat = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return ArrayRecord({PACKED: Array(flat)})


def packed_shapes(layout: Layout) -> dict[str, list[int]]:
    """The one array name and shape of ``layout``'s packed record (the audit's allow-list)."""
    return {PACKED: [_size(layout)]}


def packed_problem(record: ArrayRecord, layout: Layout) -> str | None:
    """Why ``record`` is not ``layout``'s packed weights (None when it is)."""
    if set(record.keys()) != {PACKED}:
        return f"arrays {sorted(record.keys())[:3]}, expected ['{PACKED}']"
    array = record[PACKED]
    expected = _size(layout)
    if tuple(array.shape) != (expected,) or array.dtype != "float32":
        return f"{PACKED}: {array.dtype} {list(array.shape)}, expected float32 [{expected}]"
    return None


def unpack(record: ArrayRecord, layout: Layout) -> dict[str, np.ndarray]:
    """Inverse of :func:`pack`: the tensors of ``layout`` (views of one vector).

    Raises:
        FederationConfigError: the record does not hold ``layout``'s packed weights.
    """
    problem = packed_problem(record, layout)
    if problem:
        raise FederationConfigError(f"weights do not fit the network: {problem}")
    return dict(_split(record[PACKED].numpy(), layout))


def _split(flat: np.ndarray, layout: Layout) -> Iterator[tuple[str, np.ndarray]]:
    at = 0
    for name, shape in layout.items():
        size = math.prod(shape)
        yield name, flat[at : at + size].reshape(tuple(shape))
        at += size


class RecordArrays(Mapping[str, np.ndarray]):
    """Read-only view, tensor by tensor, of a packed weights record (:func:`pack`).

    The vector is deserialised once, on first access; each tensor is a view of it, so screening
    reads each reply layer by layer without a second copy.

    Raises:
        FederationConfigError: (on construction) the record does not hold ``layout``'s weights.
    """

    def __init__(self, record: ArrayRecord, layout: Layout) -> None:
        problem = packed_problem(record, layout)
        if problem:
            raise FederationConfigError(f"weights do not fit the network: {problem}")
        self._record, self._layout = record, dict(layout)
        self._views: dict[str, np.ndarray] | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        if self._views is None:
            self._views = dict(_split(self._record[PACKED].numpy(), self._layout))
        return self._views[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layout)

    def __len__(self) -> int:
        return len(self._layout)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shapes from the layout (no deserialisation)."""
        return dict(self._layout)


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
