"""Seeded region-of-interest layers: differentiable crops around the click, and their inverse.

A crop is an affine resampling (``affine_grid`` + ``grid_sample``) of the full image around the
seed at one or more context scales (see :class:`models.geometry.RoiSpec`). In training the same
layers draw a random scale (relative to the lesion extent), shift, rotation, stretch, mirror and
elastic warp, plus an intensity change; without augmentation they are deterministic and equal the
numpy crops of :mod:`models.geometry` that the console uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import geometry
from models.exceptions import ConfigError
from models.geometry import RoiSpec

__all__ = [
    "RoiAugmentation",
    "RoiParams",
    "SeededCrop",
    "crop_to_image",
    "sample_roi_params",
    "seeded_crops",
    "training_crop",
]


@dataclass(frozen=True)
class RoiAugmentation:
    """Strengths of the random ROI and intensity augmentation.

    Args:
        scale_range: crop half-width over ``spec.context_factor × extent``, drawn log-uniformly
            (most draws).
        wide_scale_range: wider range used with probability ``wide_prob`` (teaches the first pass,
            whose fixed scales may cut the lesion or show it tiny).
        wide_prob: probability of the wide range.
        shift: largest crop-centre offset from the seed, as a fraction of the half-width (< 0.5,
            so the seed always stays inside the crop).
        rotation_deg: largest rotation in degrees (ultrasound has a skin side: keep it small).
        aspect: largest log stretch of x against y.
        flip_prob: probability of a left-right mirror.
        elastic: standard deviation of the elastic displacement, in normalised crop units.
        elastic_grid: control points per side of the elastic displacement.
        seed_jitter: standard deviation of the click around the stored seed, as a fraction of the
            lesion's equivalent radius (the click stays inside the lesion).
        gamma: standard deviation of the log gamma.
        contrast: largest relative contrast change.
        brightness: largest brightness offset (intensities in [0, 1]).
        noise: standard deviation of additive Gaussian noise.
    """

    scale_range: tuple[float, float] = (0.7, 1.4)
    wide_scale_range: tuple[float, float] = (0.2, 3.0)
    wide_prob: float = 0.25
    shift: float = 0.15
    rotation_deg: float = 12.0
    aspect: float = 0.15
    flip_prob: float = 0.5
    elastic: float = 0.03
    elastic_grid: int = 5
    seed_jitter: float = 0.3
    gamma: float = 0.25
    contrast: float = 0.2
    brightness: float = 0.08
    noise: float = 0.03

    def __post_init__(self) -> None:
        for name in ("scale_range", "wide_scale_range"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ConfigError(f"{name} must satisfy 0 < low <= high, got {(lo, hi)}")
        if not 0 <= self.shift < 0.5:
            raise ConfigError(f"shift must lie in [0, 0.5), got {self.shift}")
        if self.elastic_grid < 2:
            raise ConfigError("elastic_grid must be at least 2")

    def scaled(self, strength: float) -> RoiAugmentation:
        """The same augmentation with every perturbation multiplied by ``strength``."""
        keys = ("shift", "rotation_deg", "aspect", "elastic", "seed_jitter", "gamma", "contrast")
        changes = {k: getattr(self, k) * strength for k in keys}
        changes["shift"] = min(changes["shift"], 0.49)
        return replace(
            self, brightness=self.brightness * strength, noise=self.noise * strength, **changes
        )


@dataclass(frozen=True)
class RoiParams:
    """One drawn region: centre, base half-width, rotation (radians), mirror and stretch."""

    center: tuple[float, float]
    half_width: float
    angle: float = 0.0
    flip: bool = False
    aspect: float = 1.0

    def matrices(self, spec: RoiSpec) -> list[np.ndarray]:
        """Crop-to-image matrices of every context scale (base scale first)."""
        return [
            geometry.crop_matrix(
                self.center,
                self.half_width * s,
                spec.crop_size,
                angle=self.angle,
                flip=self.flip,
                aspect=self.aspect,
            )
            for s in spec.scales
        ]


def sample_roi_params(
    seed: Sequence[float],
    extent: float,
    spec: RoiSpec,
    augmentation: RoiAugmentation | None,
    rng: np.random.Generator,
) -> RoiParams:
    """Draw a training region around the seed (deterministic without augmentation).

    Args:
        seed: click ``(x, y)``.
        extent: Chebyshev radius of the lesion around the seed (pixels).
        spec: crop geometry.
        augmentation: strengths, or None for the inference crop (``context_factor × extent``).
        rng: the generator to draw from.

    Returns:
        the region.
    """
    if augmentation is None:
        half = max(spec.context_factor * extent, spec.min_half_width)
        return RoiParams((float(seed[0]), float(seed[1])), half)
    aug = augmentation
    lo, hi = aug.wide_scale_range if rng.random() < aug.wide_prob else aug.scale_range
    factor = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    half = max(factor * spec.context_factor * extent, spec.min_half_width)
    shift = rng.uniform(-aug.shift, aug.shift, size=2) * half
    return RoiParams(
        center=(float(seed[0] + shift[0]), float(seed[1] + shift[1])),
        half_width=half,
        angle=math.radians(rng.uniform(-aug.rotation_deg, aug.rotation_deg)),
        flip=bool(rng.random() < aug.flip_prob),
        aspect=math.exp(rng.uniform(-aug.aspect, aug.aspect)),
    )


def _theta(matrix: np.ndarray, out_size: Sequence[int], in_size: Sequence[int]) -> torch.Tensor:
    return torch.from_numpy(geometry.affine_to_theta(np.asarray(matrix), out_size, in_size))


class SeededCrop(nn.Module):
    """Differentiable affine crops of one image (the torch twin of :func:`geometry.crop`).

    Args:
        crop_size: side ``S`` of the output crops.
    """

    def __init__(self, crop_size: int) -> None:
        super().__init__()
        self.crop_size = crop_size

    def grid(
        self,
        matrices: Sequence[np.ndarray],
        image_size: Sequence[int],
        displacement: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sampling grids (K, S, S, 2) of the crops, in normalised input coordinates."""
        size = self.crop_size
        thetas = torch.stack([_theta(m, (size, size), image_size) for m in matrices]).float()
        grid = F.affine_grid(thetas, [thetas.shape[0], 1, size, size], align_corners=False)
        return grid if displacement is None else grid + displacement

    def forward(
        self,
        image: torch.Tensor,
        matrices: Sequence[np.ndarray],
        displacement: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Crop ``image`` once per matrix.

        Args:
            image: (1, C, H, W) float tensor.
            matrices: K crop-to-image 2×3 matrices (pixel coordinates).
            displacement: optional (1 or K, S, S, 2) offset added to the sampling grid, in
                normalised input units (elastic warp).

        Returns:
            (K, C, S, S) crops, zero outside the image.
        """
        grid = self.grid(matrices, image.shape[-2:], displacement).to(image.dtype)
        return _sample(image, grid)


def _sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    return F.grid_sample(
        image.expand(grid.shape[0], -1, -1, -1),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )


def _elastic(aug: RoiAugmentation, size: int, rng: np.random.Generator) -> torch.Tensor | None:
    if aug.elastic <= 0:
        return None
    coarse = rng.normal(0.0, aug.elastic, size=(1, 2, aug.elastic_grid, aug.elastic_grid))
    field = F.interpolate(
        torch.from_numpy(coarse).float(), size=(size, size), mode="bilinear", align_corners=True
    )
    return field.permute(0, 2, 3, 1)


def _intensity(crops: torch.Tensor, aug: RoiAugmentation, rng: np.random.Generator) -> torch.Tensor:
    gamma = math.exp(rng.normal(0.0, aug.gamma))
    contrast = 1.0 + rng.uniform(-aug.contrast, aug.contrast)
    brightness = rng.uniform(-aug.brightness, aug.brightness)
    out = crops.clamp(0.0, 1.0).pow(gamma)
    mean = out.mean()
    out = (out - mean) * contrast + mean + brightness
    if aug.noise > 0:
        noise = rng.normal(0.0, aug.noise, size=tuple(out.shape)).astype(np.float32)
        out = out + torch.from_numpy(noise)
    return out.clamp(0.0, 1.0)


def _seed_channel(seed: Sequence[float], base: np.ndarray, spec: RoiSpec) -> torch.Tensor:
    uv = geometry.invert_affine(base) @ np.array([seed[0], seed[1], 1.0])
    return torch.from_numpy(geometry.seed_heatmap(uv, spec.crop_size, spec.seed_sigma))


def training_crop(
    image: torch.Tensor,
    mask: torch.Tensor,
    seed: Sequence[float],
    extent: float,
    spec: RoiSpec,
    augmentation: RoiAugmentation | None,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs and mask target of one sample.

    Args:
        image: (1, 1, H, W) intensities in [0, 1].
        mask: (1, 1, H, W) lesion mask as float.
        seed: click ``(x, y)``.
        extent: Chebyshev radius of the lesion around the seed.
        spec: crop geometry.
        augmentation: random augmentation, or None for the deterministic crop.
        rng: generator for the random draws.

    Returns:
        ``(inputs, target)``: (C, S, S) in [-1, 1] (seed channel in [0, 1]) and (1, S, S) soft mask.
    """
    params = sample_roi_params(seed, extent, spec, augmentation, rng)
    mats = params.matrices(spec)
    disp = None if augmentation is None else _elastic(augmentation, spec.crop_size, rng)
    grid = SeededCrop(spec.crop_size).grid(mats, image.shape[-2:], disp)
    crops = _sample(image, grid)[:, 0]
    target = _sample(mask, grid[:1])[0]
    if augmentation is not None:
        crops = _intensity(crops, augmentation, rng)
    channels = [crops * 2.0 - 1.0]
    if spec.seed_sigma > 0:
        channels.append(_seed_channel(seed, mats[0], spec)[None])
    return torch.cat(channels, dim=0), target


def seeded_crops(
    image: torch.Tensor,
    seed: Sequence[float],
    half_width: float,
    spec: RoiSpec,
    *,
    flip: bool = False,
) -> torch.Tensor:
    """Deterministic inference inputs around the seed (torch twin of ``geometry.build_inputs``).

    Args:
        image: (1, 1, H, W) intensities in [0, 1].
        seed: click ``(x, y)``.
        half_width: base-scale half-width in image pixels.
        spec: crop geometry.
        flip: mirror the crop horizontally.

    Returns:
        (C, S, S) inputs.
    """
    mats = RoiParams((float(seed[0]), float(seed[1])), half_width, flip=flip).matrices(spec)
    crops = SeededCrop(spec.crop_size)(image, mats)[:, 0] * 2.0 - 1.0
    if spec.seed_sigma > 0:
        crops = torch.cat([crops, _seed_channel(seed, mats[0], spec)[None]], dim=0)
    return crops


def crop_to_image(
    crop_maps: torch.Tensor, matrices: Sequence[np.ndarray], image_size: Sequence[int]
) -> torch.Tensor:
    """Map crop-space maps back onto the image (differentiable twin of ``geometry.uncrop``).

    Args:
        crop_maps: (K, C, S, S) maps, e.g. mask probabilities.
        matrices: the K crop-to-image matrices the crops were taken with.
        image_size: ``(H, W)`` of the image.

    Returns:
        (K, C, H, W); 0 outside each crop's footprint.
    """
    size = crop_maps.shape[-1]
    h, w = int(image_size[0]), int(image_size[1])
    thetas = torch.stack(
        [_theta(geometry.invert_affine(np.asarray(m)), (h, w), (size, size)) for m in matrices]
    ).to(crop_maps.dtype)
    grid = F.affine_grid(thetas, [len(matrices), crop_maps.shape[1], h, w], align_corners=False)
    inside = ((grid >= -1.0) & (grid < 1.0)).all(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    values = F.grid_sample(
        crop_maps, grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return values * inside.to(values.dtype)
