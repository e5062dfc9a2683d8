"""Errors of the ``models`` package, in a few families; every name ends in ``Error``.

Foreign exceptions (torch, onnx, onnxruntime) are re-raised ``from e`` as one of these, so callers
(the federation client, the console) need to catch only :class:`ModelError`.
"""

from __future__ import annotations


class ModelError(Exception):
    """Base of every error this package raises on purpose."""


class ConfigError(ModelError):
    """A training, network or inference setting is out of range or inconsistent."""


class DataError(ModelError):
    """A training sample cannot be used (empty mask, seed outside the image, wrong dtype)."""


class StateDictError(ModelError):
    """Exchanged weights do not fit the network (missing or unexpected names, wrong shapes)."""


class ExportError(ModelError):
    """The network could not be exported to ONNX, or the export disagrees with PyTorch."""


class InferenceError(ModelError):
    """The ONNX model cannot be loaded or run (missing file, wrong inputs, bad metadata)."""


class InferenceInputError(InferenceError):
    """The image or seed given to the analyser is unusable (dtype, shape, seed outside)."""


# --- the analysis side: descriptors, metrics, calibration, reports --------------------------


class AnalysisError(ModelError, ValueError):
    """Base of the errors of descriptors, metrics, calibration and reports (each also a
    ``ValueError``: every one of them means an argument was unusable)."""


class MaskError(AnalysisError):
    """A lesion mask cannot be analysed (empty, too small, shape differs from the image)."""


class MetricInputError(AnalysisError):
    """Labels, scores or settings given to a metric are unusable (lengths, values, ranges)."""


class CalibrationError(AnalysisError):
    """A calibration or operating-point input is unusable (one class only, bad probability,
    unknown mode, malformed bundle metadata)."""


class ReportError(AnalysisError):
    """A report's inputs are inconsistent or incomplete (missing keys, mask not matching)."""
