"""ONNX export of the lesion network and a parity check against PyTorch.

The exported graph takes a batch of prepared crops (``inputs``: N × C × S × S float32, dynamic N)
and returns ``mask`` (N × 1 × S × S logits), ``malignancy`` (N logits) and one ``desc_<head>``
(N × K logits) per descriptor head. Cropping stays outside the graph, in numpy
(:mod:`models.geometry`), so the console needs no ``grid_sample`` and the same crops feed both
runtimes. The ROI spec and the head vocabularies ride along as ONNX metadata, which is all
:class:`models.inference.OnnxLesionModel` needs.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.data import HEAD_VOCABULARIES
from models.exceptions import ExportError
from models.geometry import RoiSpec
from models.inference import INPUT_NAME, META_HEADS, META_SPEC
from models.network import OUTPUT_MALIGNANCY, OUTPUT_MASK, LesionNet, descriptor_output

__all__ = ["DEFAULT_OPSET", "check_parity", "export_onnx", "output_names"]

DEFAULT_OPSET = 17


class _TupleOutputs(nn.Module):
    def __init__(self, model: LesionNet, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[n] for n in self.names)


def output_names(model: LesionNet) -> list[str]:
    """Output names of the exported graph, in order."""
    return [OUTPUT_MASK, OUTPUT_MALIGNANCY] + [
        descriptor_output(h) for h in model.descriptor_classes
    ]


def export_onnx(
    model: LesionNet,
    path: str | Path,
    *,
    spec: RoiSpec | None = None,
    heads: Mapping[str, Sequence[str]] | None = None,
    opset: int = DEFAULT_OPSET,
    extra_metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export the network (eval mode) to ONNX with its ROI spec and vocabularies as metadata.

    Args:
        model: the network.
        path: the ``.onnx`` file to write.
        spec: ROI spec (defaults to the one attached by ``build_model``, else ``RoiSpec()``).
        heads: descriptor vocabularies (defaults likewise, else the schema's).
        opset: ONNX opset.
        extra_metadata: more metadata entries (e.g. model version).

    Returns:
        the written path.

    Raises:
        ExportError: tracing, conversion or the ONNX checker failed, or the heads do not match.
    """
    import onnx

    spec = spec or getattr(model, "roi_spec", None) or RoiSpec()
    vocab = dict(heads or getattr(model, "head_vocabularies", None) or HEAD_VOCABULARIES)
    vocab = {k: list(v) for k, v in vocab.items() if k in model.descriptor_classes}
    for head, classes in model.descriptor_classes.items():
        if len(vocab.get(head, ())) != classes:
            raise ExportError(f"head {head!r}: vocabulary does not match {classes} classes")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = output_names(model)
    was_training = model.training
    model.eval()
    dummy = torch.zeros(2, spec.in_channels, spec.crop_size, spec.crop_size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _TupleOutputs(model, names),
                (dummy,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{n: {0: "batch"} for n in names}},
                opset_version=opset,
                dynamo=False,
                do_constant_folding=True,
            )
        proto = onnx.load(str(path))
        meta = {META_SPEC: spec.to_json(), META_HEADS: json.dumps(vocab), **(extra_metadata or {})}
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))
    except Exception as e:
        raise ExportError(f"ONNX export to {path} failed: {e}") from e
    finally:
        model.train(was_training)
    return path


def check_parity(
    model: LesionNet,
    onnx_path: str | Path,
    inputs: np.ndarray | None = None,
    *,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[str, float]:
    """Compare ONNX Runtime with PyTorch on the same crops.

    Args:
        model: the network that was exported.
        onnx_path: the exported file.
        inputs: crops (N, C, S, S); defaults to 4 random ones.
        atol: largest tolerated absolute difference of any output.
        seed: seed of the random default inputs.

    Returns:
        output name → largest absolute difference.

    Raises:
        ExportError: a difference exceeds ``atol`` or the model cannot be run.
    """
    from models.inference import OnnxLesionModel

    onnx_model = OnnxLesionModel(onnx_path, num_threads=1)
    spec = onnx_model.spec
    if inputs is None:
        rng = np.random.default_rng(seed)
        shape = (4, spec.in_channels, spec.crop_size, spec.crop_size)
        inputs = rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        ref = {k: v.numpy() for k, v in model(torch.from_numpy(inputs)).items()}
    model.train(was_training)
    got = onnx_model.run(inputs)
    diffs = {k: float(np.abs(got[k] - ref[k]).max()) for k in got}
    worst = max(diffs, key=diffs.get)
    if diffs[worst] > atol:
        raise ExportError(f"ONNX and PyTorch differ by {diffs[worst]:.2e} on {worst!r} (> {atol})")
    return diffs
