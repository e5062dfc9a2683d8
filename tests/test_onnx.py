"""ONNX export, parity with PyTorch, and console inference without torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from models import geometry
from models.data import synthetic_lesions
from models.exceptions import ExportError, InferenceError, InferenceInputError
from models.export import check_parity, export_onnx
from models.geometry import RoiSpec
from models.inference import OnnxLesionModel
from models.train import TrainConfig, build_model, predict

ROOT = Path(__file__).resolve().parents[1]

CONFIG = TrainConfig(
    encoder="residual",
    features=(8, 16, 32, 64),
    subunits=(1, 1, 1, 1),
    spec=RoiSpec(crop_size=48, pass1_fractions=(0.15, 0.3, 0.5)),
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = build_model(CONFIG)
    # Non-trivial batch-norm statistics, so eval-mode export is really exercised.
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(8, CONFIG.spec.in_channels, 48, 48) * 0.7 + 0.1)
    model.eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "lesion.onnx")
    return model, path


def test_export_writes_metadata(exported) -> None:
    model, path = exported
    onnx_model = OnnxLesionModel(path)
    assert onnx_model.spec == CONFIG.spec
    assert set(onnx_model.heads) == set(model.descriptor_classes)
    assert onnx_model.heads["shape"] == ("oval", "round", "irregular")


def test_onnx_matches_pytorch_on_real_crops(exported) -> None:
    model, path = exported
    samples = synthetic_lesions(3, seed=2, size=(90, 120))
    crops = []
    for s in samples:
        img01 = s.image.astype(np.float32) / 255.0
        for half in (12.0, 25.0):
            crops.append(geometry.build_inputs(img01, s.seed, half, CONFIG.spec)[0])
    diffs = check_parity(model, path, np.stack(crops), atol=1e-4)
    assert diffs["mask"] <= 1e-4 and diffs["malignancy"] <= 1e-4
    assert max(diffs.values()) <= 1e-4
    assert check_parity(model, path)["mask"] <= 1e-4  # random inputs, dynamic batch of 4


def test_onnx_analysis_matches_pytorch_prediction(exported) -> None:
    model, path = exported
    samples = synthetic_lesions(3, seed=4, size=(90, 120))
    onnx_model = OnnxLesionModel(path)
    for s, p in zip(samples, predict(model, samples), strict=True):
        out = onnx_model.analyze(s.image, s.seed)
        assert abs(out.malignancy_logit - p.malignancy_logit) <= 1e-4
        assert out.mask.shape == s.image.shape
        assert (out.mask != p.mask).mean() <= 1e-3
        for head, probs in p.descriptor_probs.items():
            for name, value in probs.items():
                assert out.descriptor_probs[head][name] == pytest.approx(value, abs=1e-4)
        assert {"preprocess", "network", "postprocess", "total"} <= set(out.timings)


def test_prediction_on_onnxruntime_matches_eager_prediction(exported) -> None:
    model, _ = exported
    samples = synthetic_lesions(3, seed=5, size=(90, 120))
    eager = predict(model, samples)
    onnx = predict(model, samples, engine="onnx")
    for e, o in zip(eager, onnx, strict=True):
        assert o.case_id == e.case_id
        assert abs(o.malignancy_logit - e.malignancy_logit) <= 1e-4
        assert (o.mask != e.mask).mean() <= 1e-3
        assert o.descriptor_probs["shape"]["oval"] == pytest.approx(
            e.descriptor_probs["shape"]["oval"], abs=1e-4
        )
    assert model.training is False
    assert predict(model, [], engine="onnx") == []


def test_bad_inputs_raise(exported, tmp_path: Path) -> None:
    _, path = exported
    onnx_model = OnnxLesionModel(path)
    image = np.zeros((60, 80), np.uint8)
    with pytest.raises(InferenceInputError):
        onnx_model.analyze(image.astype(np.float32), (10, 10))
    with pytest.raises(InferenceInputError):
        onnx_model.analyze(np.zeros((60, 80, 3), np.uint8), (10, 10))
    with pytest.raises(InferenceInputError):
        onnx_model.analyze(image, (80, 10))
    with pytest.raises(InferenceError):
        OnnxLesionModel(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InferenceError):
        OnnxLesionModel(tmp_path / "junk.onnx")
    assert isinstance(onnx_model.analyze(image, (10, 10)).mask, np.ndarray)  # blank image is fine


def test_export_rejects_mismatched_vocabulary(exported, tmp_path: Path) -> None:
    model, _ = exported
    heads = dict(model.head_vocabularies)
    heads["shape"] = ("oval", "round")
    with pytest.raises(ExportError):
        export_onnx(model, tmp_path / "bad.onnx", heads=heads)


def test_console_inference_does_not_import_torch(exported, tmp_path: Path) -> None:
    _, path = exported
    sample = synthetic_lesions(1, seed=9, size=(90, 120))[0]
    np.save(tmp_path / "image.npy", sample.image)
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from models.inference import OnnxLesionModel
        model = OnnxLesionModel({str(path)!r}, num_threads=1)
        out = model.analyze(np.load({str(tmp_path / "image.npy")!r}), {tuple(sample.seed)!r})
        print(json.dumps({{"torch": "torch" in sys.modules, "area": int(out.mask.sum()),
                           "logit": out.malignancy_logit}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["torch"] is False
    assert np.isfinite(result["logit"])


def test_a_lite0_network_exports_and_matches_pytorch(tmp_path: Path) -> None:
    config = TrainConfig(
        encoder="efficientnet-lite0",
        features=(16, 24, 32, 64),
        subunits=(1, 1, 1, 1, 1),
        spec=RoiSpec(crop_size=64),
    )
    torch.manual_seed(0)
    model = build_model(config, pretrained=True).eval()
    path = export_onnx(model, tmp_path / "lite0.onnx")
    assert path.stat().st_size < 10e6  # the console's limit
    x = torch.rand(3, config.spec.in_channels, 64, 64)
    with torch.no_grad():
        expected = model(x)
    got = OnnxLesionModel(path).run(x.numpy())
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value.numpy(), atol=2e-4, rtol=1e-3)


def test_a_batch_split_across_threads_gives_the_single_thread_outputs(exported) -> None:
    _, path = exported
    single, split = OnnxLesionModel(path, num_threads=1), OnnxLesionModel(path, num_threads=3)
    batch = np.random.default_rng(5).normal(size=(5, CONFIG.spec.in_channels, 48, 48))
    for n in (1, 2, 5):  # one part, two parts, three uneven parts
        expected, got = single.run(batch[:n]), split.run(batch[:n])
        assert set(got) == set(expected)
        for name, values in expected.items():
            assert got[name].shape == values.shape
            np.testing.assert_allclose(got[name], values, rtol=0, atol=1e-6)
