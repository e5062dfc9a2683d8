"""Errors of the analysis side of ``models`` (descriptors, metrics, calibration, reports).

They belong with the package's other errors in :mod:`models.exceptions`; they live here until
that module takes them. Each is a :class:`~models.exceptions.ModelError` and a ``ValueError``
(every one of them means an argument was unusable).
"""

from __future__ import annotations

from models.exceptions import ModelError


class AnalysisError(ModelError, ValueError):
    """Base of the errors of descriptors, metrics, calibration and reports."""


class MaskError(AnalysisError):
    """A lesion mask cannot be analysed (empty, too small, shape differs from the image)."""


class MetricInputError(AnalysisError):
    """Labels, scores or settings given to a metric are unusable (lengths, values, ranges)."""


class CalibrationError(AnalysisError):
    """A calibration or operating-point input is unusable (one class only, bad probability,
    unknown mode, malformed bundle metadata)."""


class ReportError(AnalysisError):
    """A report's inputs are inconsistent or incomplete (missing keys, mask not matching)."""
