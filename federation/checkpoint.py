"""Per-round checkpoints, so a killed vendor process resumes where it stopped.

Layout of ``RUN/checkpoints/``::

    round-0003.npz    the global weights after round 3 (numpy, no pickle)
    round-0003.json   round, history so far, run fingerprint, the weights' sha256
    LATEST            the newest complete round

Each file is written to a temporary name, flushed and renamed, and ``LATEST`` moves last, so a
crash at any point leaves the previous checkpoint readable. Flower has no resume of its own:
the server restarts the strategy with the checkpointed weights as ``initial_arrays``.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_registry.files import write_atomic
from federation.exceptions import CheckpointError

__all__ = ["Checkpoint", "CheckpointStore"]


@dataclass(frozen=True)
class Checkpoint:
    """The state after a completed round.

    Attributes:
        round: the last completed round (0 = the starting weights, scored).
        arrays: the global weights.
        history: one row per round so far (round 0 included).
        fingerprint: what identifies the run (settings, starting bundle, test set).
    """

    round: int
    arrays: dict[str, np.ndarray]
    history: list[dict[str, Any]]
    fingerprint: dict[str, Any]


class CheckpointStore:
    """Checkpoints of one run in a folder.

    Args:
        directory: the checkpoint folder (created on the first save).
        keep: how many recent rounds to keep on disk.
    """

    def __init__(self, directory: Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def _stem(self, round_: int) -> Path:
        return self.directory / f"round-{round_:04d}"

    def save(
        self,
        round_: int,
        arrays: Mapping[str, np.ndarray],
        history: list[dict[str, Any]],
        fingerprint: Mapping[str, Any],
    ) -> Path:
        """Write the checkpoint of ``round_`` and make it the latest.

        Returns:
            the weights file.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = self._stem(round_)
        weights = stem.with_suffix(".npz")
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
        data = buffer.getvalue()
        write_atomic(weights, data)
        meta = {
            "round": round_,
            "weights": weights.name,
            "weights_sha256": hashlib.sha256(data).hexdigest(),
            "names": list(arrays),
            "history": history,
            "fingerprint": dict(fingerprint),
        }
        write_atomic(stem.with_suffix(".json"), json.dumps(meta, default=str).encode())
        write_atomic(self.directory / "LATEST", f"{round_}\n".encode())
        self._prune(round_)
        return weights

    def _prune(self, latest: int) -> None:
        for path in self.directory.glob("round-*.json"):
            number = int(path.stem.split("-")[1])
            if number <= latest - self.keep:
                path.unlink(missing_ok=True)
                path.with_suffix(".npz").unlink(missing_ok=True)

    def latest(self) -> Checkpoint | None:
        """The newest complete checkpoint, or None when the folder holds none.

        Raises:
            CheckpointError: ``LATEST`` names a checkpoint that is missing or corrupt.
        """
        pointer = self.directory / "LATEST"
        if not pointer.is_file():
            return None
        try:
            round_ = int(pointer.read_text().strip())
        except ValueError as e:
            raise CheckpointError(f"{pointer}: not a round number") from e
        return self.load(round_)

    def load(self, round_: int) -> Checkpoint:
        """Read and check one checkpoint.

        Raises:
            CheckpointError: missing files, a hash mismatch or unreadable content.
        """
        stem = self._stem(round_)
        try:
            meta = json.loads(stem.with_suffix(".json").read_text())
            data = (self.directory / meta["weights"]).read_bytes()
        except (OSError, ValueError, KeyError) as e:
            raise CheckpointError(f"{stem}: checkpoint unreadable ({e})") from e
        if hashlib.sha256(data).hexdigest() != meta["weights_sha256"]:
            raise CheckpointError(f"{stem}.npz: weights do not match their recorded sha256")
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in meta["names"]}
        return Checkpoint(
            round=int(meta["round"]),
            arrays=arrays,
            history=list(meta["history"]),
            fingerprint=dict(meta["fingerprint"]),
        )

    def clear(self) -> None:
        """Remove every checkpoint (a fresh start)."""
        if not self.directory.is_dir():
            return
        for path in self.directory.iterdir():
            if path.name == "LATEST" or path.name.startswith("round-"):
                path.unlink()
