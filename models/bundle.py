"""The model bundle: the folder a release ships and a console runs.

    BUNDLE/model.onnx       the network (console inference, onnxruntime)
    BUNDLE/weights.pt       PyTorch weights and training config (to continue training)
    BUNDLE/metadata.json    version, input format, calibration, modes, data summary, metrics

Reading a bundle (``load_metadata``) never imports torch.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.files import write_atomic
from models.exceptions import ModelError

FORMAT_VERSION = 1
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.pt"
METADATA_FILE = "metadata.json"
INTENDED_USE = (
    "Research software, not a medical device. Suggests a segmentation, BI-RADS lexicon "
    "descriptors, a malignancy probability and a BI-RADS category for a breast mass that a "
    "radiologist has clicked on a B-mode ultrasound image; it supports and never replaces the "
    "radiologist's reading. Not for screening, non-mass findings, Doppler or elastography images."
)
DESCRIPTORS = ("shape", "orientation", "margin", "echo_pattern", "posterior_features")


class BundleError(ModelError):
    """A bundle folder is missing files, or its metadata does not validate."""


class BundleMetadata(BaseModel):
    """``metadata.json``: what a console needs to run the model and what it was measured at."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = FORMAT_VERSION
    name: str = "sonofed-lesion"
    version: str = Field(pattern=r"^\d+\.\d+\.\d+([-+][0-9A-Za-z.-]+)?$")
    parent_version: str | None = None
    created: datetime
    intended_use: str = INTENDED_USE
    min_console_version: str = "0.1.0"
    input: dict[str, Any]
    temperature: float = Field(gt=0)
    operating_points: dict[str, dict[str, float]]
    birads_bands: list[dict[str, Any]]
    descriptor_sources: dict[str, Literal["heads", "rules"]]
    fusion: dict[str, Any] | None = None
    """Outline-feature fusion (:class:`models.fusion.FusionModel` as plain numbers) applied to
    the network's logit before the temperature; None: the network's logit alone."""
    training_data: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any] = {}
    files: dict[str, str]


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_metadata(bundle: Path) -> BundleMetadata:
    """Read and validate a bundle's metadata, and check its files' hashes.

    Raises:
        BundleError: a file is missing or changed, or the metadata does not validate.
    """
    bundle = Path(bundle)
    path = bundle / METADATA_FILE
    try:
        metadata = BundleMetadata.model_validate_json(path.read_bytes())
    except FileNotFoundError as e:
        raise BundleError(f"{bundle}: not a model bundle (no {METADATA_FILE})") from e
    except OSError as e:  # a folder in its place, unreadable
        raise BundleError(f"{path}: cannot be read as a file ({e.strerror})") from e
    except ValidationError as e:
        raise BundleError(f"{path}: invalid bundle metadata ({e.errors()[0]['loc']}: "
                          f"{e.errors()[0]['msg']})") from e  # fmt: skip
    _check_listed(bundle, metadata)
    for name, digest in metadata.files.items():
        file = bundle / name
        if not file.is_file():
            raise BundleError(f"{bundle}: {name} is missing")
        if sha256_of(file) != digest:
            raise BundleError(f"{bundle}: {name} does not match the sha256 in {METADATA_FILE}")
    return metadata


def _check_listed(bundle: Path, metadata: BundleMetadata) -> None:
    """``model.onnx`` must be listed with its hash, and so must ``weights.pt`` when present: an
    empty or partial ``files`` map must not skip a check."""
    required = [MODEL_FILE] + [WEIGHTS_FILE] * (bundle / WEIGHTS_FILE).exists()
    missing = [name for name in required if name not in metadata.files]
    if missing:
        raise BundleError(
            f"{bundle / METADATA_FILE}: files does not list {', '.join(missing)}; "
            "every model file needs its sha256 there"
        )


def write_metadata(bundle: Path, metadata: BundleMetadata) -> Path:
    payload = json.dumps(metadata.model_dump(mode="json"), indent=2) + "\n"
    return write_atomic(Path(bundle) / METADATA_FILE, payload.encode())
