"""File names of a release bundle and a release archive (shared by vendor and console).

RELEASE/release.json          the release manifest (version, parent, compatibility, files)
RELEASE/model/                the model bundle (model.onnx, weights.pt, metadata.json, …)
RELEASE/lineage.json          where the model came from
RELEASE/gate-report.json      the change protocol's verdict
RELEASE/model-card.html       the model card
RELEASE/selftest/cases.json   reference cases and their expected outputs
RELEASE/selftest/*.png        their images and expected masks
"""

from __future__ import annotations

from pathlib import Path

from models.bundle import METADATA_FILE

RELEASE_MANIFEST = "release.json"
MODEL_DIR = "model"
LINEAGE_FILE = "lineage.json"
GATE_REPORT = "gate-report.json"
GATE_SUMMARY = "gate-report.md"
EVALUATION_FILE = "evaluation.json"
MODEL_CARD = "model-card.html"
SELFTEST_DIR = "selftest"
SELFTEST_CASES = "selftest/cases.json"
PRODUCT = "sonofed-lesion"
ARCHIVE_SUFFIX = ".tar.gz"
DEFAULT_CONSOLE_MODEL = "sonofed-us"
"""The console hardware model a release is for, unless the vendor says otherwise."""
DEFAULT_CHANNEL = "stable"


def archive_name(version: str) -> str:
    """File name of the archive of a release version (``sonofed-lesion-1.2.0.tar.gz``)."""
    return f"{PRODUCT}-{version}{ARCHIVE_SUFFIX}"


def model_dir_of(path: Path) -> Path:
    """The model bundle inside a release folder, or the folder itself when it is a bundle.

    Args:
        path: a release folder (with ``release.json``) or a model bundle folder.

    Returns:
        The folder holding ``metadata.json``.
    """
    path = Path(path)
    if (path / RELEASE_MANIFEST).is_file() and (path / MODEL_DIR / METADATA_FILE).is_file():
        return path / MODEL_DIR
    return path
