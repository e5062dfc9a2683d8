"""Console-side lesion analysis on onnxruntime, without torch.

The two-pass scheme lives here once and is shared with PyTorch prediction
(:func:`models.train.predict` passes a torch runner):

1. Pass 1 crops around the click at a few fixed half-widths (fractions of the image size) and keeps
   the scale whose predicted mask, cut to the component under the click, neither touches the crop
   border nor looks tiny: its Chebyshev radius around the click is the lesion *extent*.
2. Pass 2 crops at ``context_factor × extent`` (the framing used in training), optionally with its
   mirror image; an optional refinement repeats it once if the extent changed by more than 10 %.
3. The mask is mapped back to image pixels, thresholded and cut to the component under the click.

This module must not import torch (a test checks ``sys.modules``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models import geometry
from models.exceptions import InferenceError, InferenceInputError
from models.geometry import RoiSpec

__all__ = [
    "META_HEADS",
    "META_SPEC",
    "OUTPUT_MALIGNANCY",
    "OUTPUT_MASK",
    "LesionOutput",
    "OnnxLesionModel",
    "Runner",
    "analyze_image",
    "check_inputs",
]

META_SPEC = "sonofed.roi_spec"
"""ONNX metadata key holding the :class:`RoiSpec` as JSON."""
META_HEADS = "sonofed.descriptor_heads"
"""ONNX metadata key holding ``{head: [class names]}`` as JSON."""
INPUT_NAME = "inputs"
OUTPUT_MASK = "mask"
OUTPUT_MALIGNANCY = "malignancy"
DESCRIPTOR_PREFIX = "desc_"

Runner = Callable[[np.ndarray], Mapping[str, np.ndarray]]
"""Runs the network on a float32 batch (N, C, S, S); returns ``mask`` (N, 1, S, S) logits,
``malignancy`` (N,) logits and ``desc_<head>`` (N, K) logits."""


@dataclass(frozen=True)
class LesionOutput:
    """What the analyser says about one clicked lesion.

    Attributes:
        malignancy_logit: logit of malignancy (uncalibrated).
        mask: boolean lesion mask in image pixels (H, W).
        descriptor_probs: head → class name → probability.
        timings: milliseconds per stage (``preprocess``, ``network``, ``postprocess``, ``total``).
        extent: estimated Chebyshev radius of the lesion around the click (pixels).
        half_width: half-width of the final crop (pixels).
    """

    malignancy_logit: float
    mask: np.ndarray
    descriptor_probs: dict[str, dict[str, float]]
    timings: dict[str, float] = field(default_factory=dict)
    extent: float = 0.0
    half_width: float = 0.0

    @property
    def malignancy_probability(self) -> float:
        """Sigmoid of the logit (uncalibrated)."""
        return float(1.0 / (1.0 + math.exp(-self.malignancy_logit)))


def check_inputs(image: np.ndarray, seed: Sequence[float]) -> tuple[np.ndarray, tuple[int, int]]:
    """Validate a console image and click.

    Args:
        image: uint8 greyscale array (H, W).
        seed: click ``(x, y)`` inside the image.

    Returns:
        the image and the click as integers.

    Raises:
        InferenceInputError: wrong type, dtype, shape or a click outside the image.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
        got = getattr(image, "dtype", type(image).__name__), getattr(image, "shape", None)
        raise InferenceInputError(f"image must be a uint8 array of shape (H, W), got {got}")
    h, w = image.shape
    if min(h, w) < 16:
        raise InferenceInputError(f"image too small: {w}x{h}")
    try:
        x, y = (round(float(v)) for v in seed)
    except (TypeError, ValueError) as e:
        raise InferenceInputError(f"seed must be (x, y), got {seed!r}") from e
    if not (0 <= x < w and 0 <= y < h):
        raise InferenceInputError(f"seed ({x}, {y}) lies outside the {w}x{h} image")
    return image, (x, y)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


class _Clock:
    def __init__(self) -> None:
        self.ms: dict[str, float] = {"preprocess": 0.0, "network": 0.0, "postprocess": 0.0}
        self._t = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.ms[stage] += (now - self._t) * 1000.0
        self._t = now


def _crop_component(prob: np.ndarray, matrix: np.ndarray, seed, threshold: float) -> np.ndarray:
    uv = geometry.invert_affine(matrix) @ np.array([seed[0], seed[1], 1.0])
    return geometry.select_component(prob > threshold, uv, fill=False)


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _first_pass(image01, seed, spec: RoiSpec, runner: Runner, clock: _Clock) -> float:
    longer = max(image01.shape)
    halves = [max(f * longer, spec.min_half_width) for f in spec.pass1_fractions]
    batch, mats = zip(*(geometry.build_inputs(image01, seed, h, spec) for h in halves), strict=True)
    clock.lap("preprocess")
    logits = runner(np.stack(batch))[OUTPUT_MASK][:, 0]
    clock.lap("network")
    best, best_score, fallback = None, math.inf, None
    for half, mat, logit in zip(halves, mats, logits, strict=True):
        comp = _crop_component(_sigmoid(logit), mat, seed, spec.threshold)
        if not comp.any():
            continue
        extent = geometry.extent_in_image(comp, mat, seed)
        if _touches_border(comp):
            fallback = max(extent, fallback or 0.0)
            continue
        score = abs(math.log(extent / half / spec.target_ratio))
        if score < best_score:
            best, best_score = extent, score
    clock.lap("postprocess")
    if best is not None:
        return best
    if fallback is not None:
        return fallback
    return halves[0] * spec.target_ratio / 2.0


def _second_pass(image01, seed, half: float, spec: RoiSpec, runner: Runner, clock: _Clock):
    flips = (False, True) if spec.flip_tta else (False,)
    batch, mats = zip(
        *(geometry.build_inputs(image01, seed, half, spec, flip=f) for f in flips), strict=True
    )
    clock.lap("preprocess")
    out = runner(np.stack(batch))
    clock.lap("network")
    probs = _sigmoid(out[OUTPUT_MASK][:, 0].astype(np.float64))
    if spec.flip_tta:
        probs[1] = probs[1][:, ::-1]
    prob = probs.mean(axis=0)
    clock.lap("postprocess")
    return prob, mats[0], out


def analyze_image(
    image: np.ndarray,
    seed: Sequence[float],
    spec: RoiSpec,
    runner: Runner,
    heads: Mapping[str, Sequence[str]],
) -> LesionOutput:
    """Two-pass analysis of one clicked lesion with any network runner.

    Args:
        image: uint8 greyscale image (H, W).
        seed: click ``(x, y)``.
        spec: the ROI spec the network was trained with.
        runner: runs the network on a batch of crops.
        heads: descriptor head → class names, in the network's output order.

    Returns:
        the analysis.

    Raises:
        InferenceInputError: unusable image or click.
    """
    image, seed = check_inputs(image, seed)
    clock = _Clock()
    start = time.perf_counter()
    image01 = image.astype(np.float32) / 255.0
    extent = _first_pass(image01, seed, spec, runner, clock)
    half = max(spec.context_factor * extent, spec.min_half_width)
    prob, mat, out = _second_pass(image01, seed, half, spec, runner, clock)
    for _ in range(spec.refine_passes):
        comp = _crop_component(prob, mat, seed, spec.threshold)
        if not comp.any() or _touches_border(comp):
            break
        new_extent = geometry.extent_in_image(comp, mat, seed)
        new_half = max(spec.context_factor * new_extent, spec.min_half_width)
        clock.lap("postprocess")
        if abs(math.log(new_half / half)) < math.log(1.1):
            break
        extent, half = new_extent, new_half
        prob, mat, out = _second_pass(image01, seed, half, spec, runner, clock)
    full = geometry.uncrop(prob.astype(np.float32), mat, image.shape)
    mask = geometry.select_component(full > spec.threshold, seed)
    descriptor_probs = {}
    for head, classes in heads.items():
        p = _softmax(np.asarray(out[DESCRIPTOR_PREFIX + head], dtype=np.float64)).mean(axis=0)
        descriptor_probs[head] = {c: float(v) for c, v in zip(classes, p, strict=True)}
    logit = float(np.mean(out[OUTPUT_MALIGNANCY]))
    clock.lap("postprocess")
    timings = dict(clock.ms, total=(time.perf_counter() - start) * 1000.0)
    return LesionOutput(logit, mask, descriptor_probs, timings, float(extent), float(half))


class OnnxLesionModel:
    """The exported lesion network on onnxruntime, with the two-pass analysis.

    Args:
        path: the ``.onnx`` file written by :func:`models.export.export_onnx`.
        num_threads: intra-op threads of the session.

    Raises:
        InferenceError: the file is missing, not an ONNX model, or lacks the sonofed metadata.
    """

    def __init__(self, path: str | Path, num_threads: int = 2) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InferenceError(f"no ONNX model at {self.path}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=["CPUExecutionProvider"]
            )
            meta = self.session.get_modelmeta().custom_metadata_map
            self.spec = RoiSpec.from_json(meta[META_SPEC])
            self.heads: dict[str, tuple[str, ...]] = {
                k: tuple(v) for k, v in json.loads(meta[META_HEADS]).items()
            }
        except KeyError as e:
            raise InferenceError(f"{self.path}: missing metadata {e}") from e
        except Exception as e:
            raise InferenceError(f"cannot load {self.path}: {e}") from e
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: np.ndarray) -> dict[str, np.ndarray]:
        """Run the network on a batch of crops (N, C, S, S) float32.

        Raises:
            InferenceError: onnxruntime rejected the input.
        """
        try:
            values = self.session.run(None, {INPUT_NAME: np.ascontiguousarray(inputs, np.float32)})
        except Exception as e:
            raise InferenceError(f"onnxruntime failed: {e}") from e
        return dict(zip(self.output_names, values, strict=True))

    def analyze(self, image: np.ndarray, seed: Sequence[float]) -> LesionOutput:
        """Segment, classify and describe the lesion under the click.

        Args:
            image: uint8 greyscale image (H, W).
            seed: click ``(x, y)`` in image pixels.

        Returns:
            the analysis, with per-stage timings.

        Raises:
            InferenceInputError: unusable image or click.
            InferenceError: the network failed.
        """
        return analyze_image(image, seed, self.spec, self.run, self.heads)
