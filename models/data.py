"""Training samples, descriptor head vocabularies and the torch dataset of seeded crops.

Loading cases from the registry is not done here: an adapter turns registry cases into
:class:`LesionSample`; :func:`encode_descriptors` maps a schema ``Descriptors`` record to the class
indices the descriptor heads train on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from data_registry.schema import (
    Descriptors,
    EchoPattern,
    Margin,
    Orientation,
    PosteriorFeatures,
    Shape,
)
from models import roi
from models.exceptions import DataError
from models.geometry import RoiSpec

__all__ = [
    "HEAD_VOCABULARIES",
    "IGNORE_INDEX",
    "MARGIN_TERMS",
    "LesionDataset",
    "LesionSample",
    "encode_descriptors",
    "head_classes",
    "synthetic_lesions",
]

IGNORE_INDEX = -1
"""Class index of an unlabelled descriptor (ignored by the loss)."""

MARGIN_TERMS: tuple[str, ...] = tuple(m.value for m in Margin if m is not Margin.CIRCUMSCRIBED)
"""The not-circumscribed margin terms, each trained as its own absent/present head."""

HEAD_VOCABULARIES: dict[str, tuple[str, ...]] = {
    "shape": tuple(m.value for m in Shape),
    "orientation": tuple(m.value for m in Orientation),
    "margin": ("circumscribed", "not circumscribed"),
    **{f"margin_{t}": ("absent", "present") for t in MARGIN_TERMS},
    "echo_pattern": tuple(m.value for m in EchoPattern),
    "posterior_features": tuple(m.value for m in PosteriorFeatures),
}
"""Descriptor head name → class names, in class-index order (derived from the schema enums)."""


def encode_descriptors(descriptors: Descriptors) -> dict[str, int]:
    """Class index per descriptor head for a schema record; unknown terms are left out.

    Args:
        descriptors: the schema's lexicon record.

    Returns:
        head name → class index (see :data:`HEAD_VOCABULARIES`).
    """
    out: dict[str, int] = {}
    for head, value in (
        ("shape", descriptors.shape),
        ("orientation", descriptors.orientation),
        ("echo_pattern", descriptors.echo_pattern),
        ("posterior_features", descriptors.posterior_features),
    ):
        if value is not None:
            out[head] = HEAD_VOCABULARIES[head].index(value.value)
    terms = {m.value for m in descriptors.margin}
    if terms:
        circumscribed = Margin.CIRCUMSCRIBED.value in terms
        out["margin"] = 0 if circumscribed else 1
        for t in MARGIN_TERMS:
            out[f"margin_{t}"] = int(t in terms)
    return out


@dataclass(frozen=True, eq=False)
class LesionSample:
    """One lesion to train or evaluate on.

    Args:
        case_id: the registry case id.
        site_id: the site the case comes from.
        group_id: patient or duplicate-cluster id; splits must keep a group together.
        image: uint8 greyscale image (H, W).
        mask: boolean lesion mask (H, W).
        seed: the click ``(x, y)`` in image pixels, inside the lesion.
        label: 1 malignant, 0 benign.
        descriptors: class index per descriptor head (missing or -1 = unlabelled).
        device: scanner model, if known.
    """

    case_id: str
    site_id: str
    group_id: str
    image: np.ndarray
    mask: np.ndarray
    seed: tuple[int, int]
    label: int
    descriptors: dict[str, int] = field(default_factory=dict)
    device: str | None = None

    def __post_init__(self) -> None:
        if self.image.dtype != np.uint8 or self.image.ndim != 2:
            raise DataError(f"{self.case_id}: image must be uint8 HxW, got {self.image.dtype}")
        if self.mask.shape != self.image.shape or self.mask.dtype != bool:
            raise DataError(f"{self.case_id}: mask must be bool with the image's shape")
        h, w = self.image.shape
        if not (0 <= self.seed[0] < w and 0 <= self.seed[1] < h):
            raise DataError(f"{self.case_id}: seed {self.seed} outside the {w}x{h} image")
        if self.label not in (0, 1):
            raise DataError(f"{self.case_id}: label must be 0 or 1, got {self.label}")
        for head, idx in self.descriptors.items():
            vocab = HEAD_VOCABULARIES.get(head)
            if vocab is None or not IGNORE_INDEX <= idx < len(vocab):
                raise DataError(f"{self.case_id}: bad descriptor {head}={idx}")


def _jitter_seed(
    sample: LesionSample, ys: np.ndarray, xs: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[float, float]:
    """A click near the stored seed, still inside the lesion (the radiologist's variability)."""
    seed = (float(sample.seed[0]), float(sample.seed[1]))
    if fraction <= 0 or xs.size == 0:
        return seed
    radius = math.sqrt(xs.size / math.pi)
    for _ in range(8):
        dx, dy = rng.normal(0.0, fraction * radius, size=2)
        x, y = round(seed[0] + dx), round(seed[1] + dy)
        if 0 <= y < sample.mask.shape[0] and 0 <= x < sample.mask.shape[1] and sample.mask[y, x]:
            return float(x), float(y)
    return seed


class LesionDataset(Dataset):
    """Seeded crops of lesion samples, ready for the network.

    With ``augmentation`` set, every item draws its own seed jitter, crop scale, shift, rotation,
    elastic warp and intensity change from a generator seeded by ``(seed, epoch, index)``, so an
    epoch is reproducible; call :meth:`set_epoch` before each epoch. Without it, items are
    deterministic crops centred on the stored seed at ``spec.context_factor`` × the true extent.

    Items are dicts: ``inputs`` float32 (C, S, S), ``mask`` float32 (1, S, S), ``label`` float32
    scalar, ``descriptors`` int64 (number of heads,) with -1 for unlabelled.

    Args:
        samples: the lesions.
        spec: crop geometry.
        heads: descriptor head names, in the network's order.
        augmentation: random ROI and intensity augmentation, or None.
        seed: base seed of the per-item generators.
    """

    def __init__(
        self,
        samples: Sequence[LesionSample],
        spec: RoiSpec,
        heads: Sequence[str] = tuple(HEAD_VOCABULARIES),
        augmentation: roi.RoiAugmentation | None = None,
        seed: int = 0,
    ) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.heads = tuple(heads)
        self.augmentation = augmentation
        self.seed = seed
        self.epoch = 0
        self._points = [np.nonzero(s.mask) for s in self.samples]
        for s, (ys, _) in zip(self.samples, self._points, strict=True):
            if ys.size == 0:
                raise DataError(f"{s.case_id}: empty lesion mask")

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        sample = self.samples[index]
        ys, xs = self._points[index]
        aug = self.augmentation
        rng = np.random.default_rng((self.seed, self.epoch, index))
        if aug is None:
            seed = (float(sample.seed[0]), float(sample.seed[1]))
        else:
            seed = _jitter_seed(sample, ys, xs, aug.seed_jitter, rng)
        dx = max(seed[0] - xs.min(), xs.max() - seed[0])
        dy = max(seed[1] - ys.min(), ys.max() - seed[1])
        extent = float(max(dx, dy)) + 0.5
        image = torch.from_numpy(sample.image).float().div_(255.0)[None, None]
        mask = torch.from_numpy(sample.mask).float()[None, None]
        inputs, target = roi.training_crop(image, mask, seed, extent, self.spec, aug, rng)
        desc = [sample.descriptors.get(h, IGNORE_INDEX) for h in self.heads]
        return {
            "inputs": inputs,
            "mask": target,
            "label": torch.tensor(float(sample.label)),
            "descriptors": torch.tensor(desc, dtype=torch.long),
        }


def head_classes(heads: Mapping[str, Sequence[str]] | None = None) -> dict[str, int]:
    """Number of classes per descriptor head (defaults to :data:`HEAD_VOCABULARIES`)."""
    vocab = HEAD_VOCABULARIES if heads is None else heads
    return {name: len(classes) for name, classes in vocab.items()}


def synthetic_lesions(
    count: int, seed: int = 0, size: tuple[int, int] = (128, 160), site_id: str = "synthetic"
) -> list[LesionSample]:
    """A phantom data set: benign smooth wide ellipses vs malignant spiky tall shapes.

    Benign lesions are oval, parallel, circumscribed, hypoechoic with posterior enhancement;
    malignant ones irregular, not parallel, spiculated, darker with posterior shadowing. Labels
    alternate (even index benign). Deterministic for a given ``seed``.

    Args:
        count: number of samples.
        seed: generator seed.
        size: image ``(height, width)``.
        site_id: site id written into the samples.

    Returns:
        the samples (one patient group each).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    out = []
    for i in range(count):
        label = i % 2
        speckle = rng.rayleigh(1.0, size=(h, w))
        speckle = np.convolve(speckle.ravel(), np.ones(3) / 3, mode="same").reshape(h, w)
        image = 110.0 + 35.0 * (speckle - 1.25)
        r = rng.uniform(0.1, 0.2) * min(h, w)
        cx = rng.uniform(r * 1.6 + 2, w - r * 1.6 - 2)
        cy = rng.uniform(r * 1.6 + 2, h - r * 2.2 - 2)
        angle = np.arctan2(yy - cy, xx - cx)
        if label:
            spikes = 1.0 + 0.3 * np.sin(rng.integers(6, 10) * angle + rng.uniform(0, 6.3))
            inside = np.hypot((xx - cx) / 0.85, (yy - cy) / 1.1) <= r * spikes
            level, posterior = 45.0, -40.0
        else:
            inside = np.hypot((xx - cx) / 1.3, (yy - cy) / 0.8) <= r
            level, posterior = 75.0, 35.0
        image[inside] = level + 15.0 * (speckle[inside] - 1.25)
        below = (np.abs(xx - cx) < 0.8 * r) & (yy > cy + r) & (yy < cy + 2.2 * r)
        image[below & ~inside] += posterior
        descriptors = {
            "shape": 2 if label else 0,
            "orientation": 1 if label else 0,
            "margin": 1 if label else 0,
            "margin_spiculated": 1 if label else 0,
            "echo_pattern": 1,
            "posterior_features": 2 if label else 1,
        }
        ys, xs = np.nonzero(inside)
        k = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        out.append(
            LesionSample(
                case_id=f"{site_id}-{i:04d}",
                site_id=site_id,
                group_id=f"{site_id}-p{i:04d}",
                image=np.clip(image, 0, 255).astype(np.uint8),
                mask=inside,
                seed=(int(xs[k]), int(ys[k])),
                label=label,
                descriptors=descriptors,
            )
        )
    return out
