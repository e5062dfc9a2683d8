"""Integrity gaps of issue 13 (item 7, bundle and console bullets): an empty ``files`` map does
not skip the model's hash check, ``console analyze --dir`` checks the active slot against its
``release.json`` before running it, and an ``--init`` bundle's weights are hash-checked before
they are unpickled, and unpickled with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from models.bundle import BundleError
from release.console_client import provision, update
from release.slots import ConsoleFolder
from tests._release_world import release_world, serving

REPO = Path(__file__).resolve().parents[1]


def _fix_hash(bundle: Path, name: str) -> None:
    """Do what an attacker who can write the folder does: make metadata.json agree again."""
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata["files"][name] = hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    (bundle / "metadata.json").write_text(json.dumps(metadata, indent=2))


def _zeroed_onnx(source: Path, dest: Path) -> None:
    """A valid ONNX model with one weight tensor zeroed: runs, but is not the released model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    first = model.graph.initializer[0]
    first.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(first) * 0, first.name))
    onnx.save(model, str(dest))


def test_an_empty_files_map_does_not_skip_the_model_hash(tiny_world, tmp_path):
    from models.analysis import LesionAnalyser

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_world.bundle, bundle)
    _zeroed_onnx(bundle / "model.onnx", bundle / "model.onnx")
    metadata = json.loads((bundle / "metadata.json").read_text())
    metadata["files"] = {}
    (bundle / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(BundleError, match=r"does not list model\.onnx, weights\.pt"):
        LesionAnalyser(bundle)


class _Payload:
    """Unpickling this creates a folder: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.mark.parametrize("fixed_hash", [False, True], ids=["hash-unchanged", "hash-fixed"])
def test_init_weights_never_run_code(tiny_world, tmp_path, fixed_hash):
    import torch

    from models.packaging import load_weights

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_world.bundle, bundle)
    marker = tmp_path / "pwned"
    torch.save({"state": _Payload(marker), "config": {}}, bundle / "weights.pt")
    if fixed_hash:
        _fix_hash(bundle, "weights.pt")
    with pytest.raises(BundleError, match="does not match" if not fixed_hash else "cannot load"):
        load_weights(bundle)
    assert not marker.exists()
    model, config = load_weights(tiny_world.bundle)  # the genuine weights still load
    assert config.features and sum(p.numel() for p in model.parameters()) > 0


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    return release_world(tiny_world, tmp_path_factory.mktemp("release-world"))


def test_analyze_dir_refuses_a_tampered_active_model_with_a_fixed_hash(world, tiny_world, tmp_path):
    with serving(tmp_path / "vendor") as site:
        console = tmp_path / "console"
        provision(site.repo.metadata_dir / "root.json", "us-0001", console)
        site.publish(world.releases["1.1.0"])
        assert update(console, site.url).action == "installed"
    model = ConsoleFolder(console).active_model()
    _zeroed_onnx(model / "model.onnx", model / "model.onnx")
    _fix_hash(model, "model.onnx")
    case = next(iter(tiny_world.locked_set.cases))
    out = tmp_path / "report"
    done = subprocess.run(
        [
            sys.executable, "-m", "sonofed.cli", "console", "analyze", "--dir", str(console),
            "--image", str(tiny_world.locked / case["image"]),
            "--seed", f"{case['seed']['x']},{case['seed']['y']}", "--out", str(out),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "does not match its release.json" in done.stderr and "changed" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "report.json").exists()
