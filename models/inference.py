"""Console-side lesion analysis on onnxruntime, without torch.

The two-pass scheme lives here once and is shared with PyTorch prediction
(:func:`models.train.predict` passes a torch runner):

1. Pass 1 crops around the click at a few fixed half-widths (fractions of the image size); every
   view whose predicted lesion (the component under the click) is whole, i.e. does not touch the
   crop border, proposes an *extent*: the Chebyshev radius of that component around the click.
2. Pass 2 frames every proposal at ``context_factor × extent`` (the framing used in training, with
   its mirror image when ``flip_tta``) in one batch and keeps the most self-consistent proposal;
   refinement re-frames while the extent still moves by more than 10 % or the lesion touches the
   border.
3. With ``final_scales``, the final framing is also cropped at those multiples of its
   half-width. The views' masks are mapped back to image pixels and averaged, thresholded and
   cut to the component under the click; malignancy and descriptors are the views' means.
4. With ``outline_view = "tightest"``, the tightest of those views' own mask is also cut from its
   mapped-back probabilities: the outline the features read (the average smooths the margin).

This module must not import torch, scipy or scikit-learn (a test checks ``sys.modules``).
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
from models._morphology import MIN_OUTLINE_PIXELS
from models.exceptions import InferenceError, InferenceInputError
from models.geometry import RoiSpec

__all__ = [
    "META_HEADS",
    "META_SPEC",
    "OUTPUT_MALIGNANCY",
    "OUTPUT_MASK",
    "LesionOutput",
    "OnnxLesionModel",
    "OutlineMask",
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


class OutlineMask:
    """The mask the outline features read, for analyses that carry ``mask`` and ``outline``."""

    mask: np.ndarray
    outline: np.ndarray | None

    @property
    def outline_mask(self) -> np.ndarray:
        """The mask the outline features read (one 4-connected component without holes)."""
        return self.mask if self.outline is None else self.outline


@dataclass(frozen=True)
class LesionOutput(OutlineMask):
    """What the analyser says about one clicked lesion.

    Attributes:
        malignancy_logit: logit of malignancy (uncalibrated).
        mask: boolean lesion mask in image pixels (H, W).
        descriptor_probs: head → class name → probability.
        timings: milliseconds per stage (``preprocess``, ``network``, ``postprocess``, ``total``).
        extent: estimated Chebyshev radius of the lesion around the click (pixels).
        half_width: half-width of the final crop (pixels).
        features: :func:`models.descriptors.lesion_features` of :attr:`outline_mask`, when
            already computed (by the fusion), so the descriptor rules do not compute them again.
        outline: the mask the outline features read when it is not ``mask`` (the tightest
            final view's own mask, ``RoiSpec.outline_view``); None: ``mask``.
    """

    malignancy_logit: float
    mask: np.ndarray
    descriptor_probs: dict[str, dict[str, float]]
    timings: dict[str, float] = field(default_factory=dict)
    extent: float = 0.0
    half_width: float = 0.0
    features: dict[str, float] | None = None
    outline: np.ndarray | None = None

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


@dataclass
class _View:
    """One crop's network output, flip-averaged, with its lesion component and extent."""

    half: float
    matrix: np.ndarray
    prob: np.ndarray
    outputs: dict[str, np.ndarray]
    component: np.ndarray
    extent: float
    touches: bool

    @property
    def usable(self) -> bool:
        return self.extent > 0 and not self.touches


def _run_views(
    image01: geometry.SamplingImage,
    seed: tuple[int, int],
    halves: Sequence[float],
    spec: RoiSpec,
    runner: Runner,
    clock: _Clock,
    flip: bool,
) -> list[_View]:
    """Crop at each half-width (plus mirrors), run the network once, analyse each view."""
    flips = (False, True) if flip else (False,)
    inputs, mats = geometry.build_batch(
        image01, seed, [(half, f) for half in halves for f in flips], spec
    )
    clock.lap("preprocess")
    out = runner(inputs)
    clock.lap("network")
    k = len(flips)
    probs = _sigmoid(np.asarray(out[OUTPUT_MASK], dtype=np.float64)[:, 0])
    views = []
    for i, half in enumerate(halves):
        group = probs[i * k : (i + 1) * k].copy()
        if flip:
            group[1] = group[1][:, ::-1]
        prob = group.mean(axis=0)
        matrix = mats[i * k]
        uv = geometry.invert_affine(matrix) @ np.array([seed[0], seed[1], 1.0])
        comp = geometry.select_component(prob > spec.threshold, uv, fill=False)
        extent = geometry.extent_in_image(comp, matrix, seed) if comp.any() else 0.0
        outputs = {
            key: np.asarray(value[i * k : (i + 1) * k], dtype=np.float64)
            for key, value in out.items()
            if key != OUTPUT_MASK
        }
        views.append(_View(half, matrix, prob, outputs, comp, extent, _touches_border(comp)))
    clock.lap("postprocess")
    return views


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def _fallback_extent(views: Sequence[_View], spec: RoiSpec) -> float:
    """Extent when no first-pass view shows a whole lesion."""
    touching = [v.extent for v in views if v.extent > 0]
    if touching:  # the lesion is larger than every crop: start from the largest view
        return max(touching)
    return views[0].half * spec.target_ratio / 2.0


def _proposals(first: Sequence[_View], spec: RoiSpec) -> list[float]:
    """Distinct extents of the usable first-pass views for the second pass to frame.

    Every distinct one (largest first) when ``spec.pass2_proposals`` is 0; otherwise the first
    ``pass2_proposals`` in ``spec.proposal_order``: the smallest extents, or the views framed
    most like training (extent/half-width nearest the target).
    """
    usable = [v for v in first if v.usable]
    if not spec.pass2_proposals:
        usable.sort(key=lambda v: -v.extent)
    elif spec.proposal_order == "smallest":
        usable.sort(key=lambda v: v.extent)
    else:
        target = math.log(spec.target_ratio)
        usable.sort(key=lambda v: abs(math.log(v.extent / v.half) - target))
    proposals: list[float] = []
    for v in usable:
        if all(abs(math.log(v.extent / p)) > math.log(1.1) for p in proposals):
            proposals.append(v.extent)
    return proposals[: spec.pass2_proposals] if spec.pass2_proposals else proposals


def _component_in(
    mask: np.ndarray, seed: tuple[int, int], region: tuple[slice, slice] | None
) -> np.ndarray:
    """:func:`geometry.select_component` of a mask that is empty outside ``region``, labelled
    inside the region only (the same result, a fraction of the pixels)."""
    rows, cols = region if region is not None else (slice(0, 0), slice(0, 0))
    x, y = seed
    if not (rows.start <= y < rows.stop and cols.start <= x < cols.stop):
        return geometry.select_component(mask, seed)
    out = np.zeros(mask.shape, dtype=bool)
    local = (x - cols.start, y - rows.start)
    out[rows, cols] = geometry.select_component(mask[rows, cols], local)
    return out


def _average_mask(
    views: Sequence[_View],
    seed: tuple[int, int],
    shape: tuple[int, ...],
    threshold: float,
    own: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The views' mask probabilities mapped back to the image and averaged, thresholded and cut
    to the component under the click; and, when ``own`` (an index into ``views``) is given, that
    view's own mask cut the same way from its mapped-back probabilities (else None).

    Only the region around the views' kept crop-space components is mapped back (the rest of
    their footprints is dropped).
    """
    boxes = [geometry.image_box(v.component, v.matrix, shape) for v in views]
    boxes = [b for b in boxes if b is not None]
    region = None
    if boxes:
        rows = slice(min(b[0].start for b in boxes), max(b[0].stop for b in boxes))
        region = rows, slice(min(b[1].start for b in boxes), max(b[1].stop for b in boxes))
    probs = [geometry.uncrop(v.prob.astype(np.float32), v.matrix, shape, region) for v in views]
    full = probs[0] if len(probs) == 1 else np.mean(probs, axis=0)
    averaged = _component_in(full > threshold, seed, region)
    if own is None:
        return averaged, None
    return averaged, _component_in(probs[own] > threshold, seed, region)


def _consistency(candidate: float, view: _View) -> float:
    """How far the extent seen when framing ``candidate`` drifts from it (lower is better)."""
    return abs(math.log(view.extent / candidate)) if view.usable else math.inf


def _frame(extent: float, spec: RoiSpec) -> float:
    return max(spec.context_factor * extent, spec.min_half_width)


def analyze_image(
    image: np.ndarray,
    seed: Sequence[float],
    spec: RoiSpec,
    runner: Runner,
    heads: Mapping[str, Sequence[str]],
) -> LesionOutput:
    """Two-pass analysis of one clicked lesion with any network runner.

    Pass 1 proposes one extent per fixed scale (views whose lesion component is whole); pass 2
    frames every proposal at ``context_factor × extent`` in one batch and keeps the most
    self-consistent one (its own extent drifts least from the proposal; ties go to the larger).
    Refinement re-frames while the extent still moves by more than 10 % or the lesion touches the
    crop border. The settled framing is then averaged over ``spec.final_scales``.

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
    image01 = geometry.SamplingImage(image.astype(np.float32) / 255.0)
    longer = max(image.shape)
    halves = [max(f * longer, spec.min_half_width) for f in spec.pass1_fractions]
    first = _run_views(image01, seed, halves, spec, runner, clock, flip=False)
    proposals = _proposals(first, spec)
    if not proposals:
        proposals = [_fallback_extent(first, spec)]
    second = _run_views(
        image01, seed, [_frame(p, spec) for p in proposals], spec, runner, clock, spec.flip_tta
    )
    scores = [_consistency(p, v) for p, v in zip(proposals, second, strict=True)]
    best = min(range(len(second)), key=lambda i: (round(scores[i], 1), -proposals[i]))
    view, extent = second[best], proposals[best]
    rescaled = [s for s in spec.final_scales if s != 1.0]
    views: list[_View] = []  # the settled framing and its rescaled views, once known
    for refine in range(spec.refine_passes):
        if view.touches and view.extent > 0:
            new_extent = extent * 1.5
        elif view.usable:
            new_extent = view.extent
        else:
            break
        if abs(math.log(_frame(new_extent, spec) / view.half)) < math.log(1.1):
            break
        extent = new_extent
        half = _frame(extent, spec)
        # the last refinement settles the framing: its rescaled views go in the same batch
        last = refine == spec.refine_passes - 1
        halves = [half] + ([half * s for s in rescaled] if last else [])
        refined = _run_views(image01, seed, halves, spec, runner, clock, spec.flip_tta)
        view = refined[0]
        if last:
            views = refined
    if not views:
        views = [view]
        if rescaled:
            halves = [view.half * s for s in rescaled]
            views += _run_views(image01, seed, halves, spec, runner, clock, spec.flip_tta)
    read_own = spec.outline_view == "tightest" and len(views) > 1
    own = min(range(len(views)), key=lambda i: views[i].half) if read_own else None
    mask, outline = _average_mask(views, seed, image.shape, spec.threshold, own)
    if outline is not None and outline.sum() < MIN_OUTLINE_PIXELS:
        outline = None  # the tightest view shows no lesion of its own: read the shown mask
    descriptor_probs = {}
    for head, classes in heads.items():  # each view's mean over its flips, then the views'
        logits = np.stack([v.outputs[DESCRIPTOR_PREFIX + head] for v in views])
        p = _softmax(logits).mean(axis=1).mean(axis=0)
        descriptor_probs[head] = {c: float(v) for c, v in zip(classes, p, strict=True)}
    logit = float(np.mean([np.mean(v.outputs[OUTPUT_MALIGNANCY]) for v in views]))
    clock.lap("postprocess")
    timings = dict(clock.ms, total=(time.perf_counter() - start) * 1000.0)
    return LesionOutput(
        logit, mask, descriptor_probs, timings, float(extent), float(view.half), outline=outline
    )


class OnnxLesionModel:
    """The exported lesion network on onnxruntime, with the two-pass analysis.

    One session runs each batch with ``num_threads`` intra-op threads (onnxruntime's default
    spinning workers). Measured on 2 cores with numpy's BLAS held to the calling thread: one
    crop 1.25 ms and two crops 2.2 ms, against 2.1 and 2.7 ms when a batch was split across two
    single-threaded runs of one session (the previous scheme; an earlier session had measured
    intra-op threads as no faster than one).

    Args:
        path: the ``.onnx`` file written by :func:`models.export.export_onnx`.
        num_threads: onnxruntime intra-op threads.

    Raises:
        InferenceError: the file is missing, not an ONNX model, or lacks the sonofed metadata.
    """

    def __init__(self, path: str | Path, num_threads: int = 2) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise InferenceError(f"no ONNX model at {self.path}")
        self.num_threads = max(int(num_threads), 1)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.num_threads
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
