"""Rendering machinery of the breast-ultrasound phantom: tissue, lesion, speckle and display.

Imaging model. A linear probe's pulse-echo response is a gaussian-modulated cosine
``exp(-t²/2σ²)·cos(2πf₀t)`` along depth times a gaussian beam across. Quadrature demodulation at
f₀ leaves the complex envelope of that pulse, the gaussian itself, so the IQ image is simulated
directly: a backscatter amplitude map times complex circular-gaussian scatterers (many
sub-resolution scatterers per cell with random phases: fully developed speckle), convolved with
the separable gaussian point-spread function. Its magnitude is the detected envelope, what the
Hilbert transform of the RF lines would give. Round-trip attenuation grows with depth and
frequency; a lesion's own excess attenuation darkens every echo below it (shadowing) and a
deficit brightens them (enhancement). Electronic noise enters before the time-gain compensation
(TGC), which undoes most of the nominal tissue attenuation and so lifts the noise at depth; gain
and log compression into the profile's dynamic range give the 8-bit grey levels.

Amplitudes are relative to subcutaneous fat (1.0), the lexicon's reference for echogenicity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from data_registry.schema import (
    Descriptors,
    EchoPattern,
    Margin,
    Orientation,
    PosteriorFeatures,
    Shape,
)

SOUND_SPEED_MM_PER_US = 1.54
ATTENUATION_DB_PER_CM_MHZ = 0.5
_WHITE_DB = 35.0  # envelope level (dB re fat) shown as white at 0 dB gain
_CAPSULE_LEVEL = 3.5
_FLUID_LEVEL = 0.03  # -30 dB: black after log compression
_FWHM_PER_SIGMA = 2 * math.sqrt(2 * math.log(2))
_ANGLES = 720  # samples of a lesion outline's radius function
_THETA = np.linspace(-np.pi, np.pi, _ANGLES, endpoint=False)
REFERENCE_SIDE_PX = 384  # longest image side the lesion sizes refer to (every profile's)
_MIN_EDGE_PX = 6.0  # indistinct margin: sigmoid scale; 10-90 % over 2.4x this
_MIN_LOBE_PX = 6.0  # microlobulation depth, notch to crest
_MIN_SPICULE_PX = 5.0  # spicule half-width at its base


@dataclass(frozen=True)
class ExtentDistribution:
    """Longer side of a lesion's traced bounding box over the image's longest side: lognormal,
    clipped to ``[low, high]``.

    Attributes:
        median: the lognormal's median.
        log_sd: standard deviation of the natural log.
        low: smallest extent drawn.
        high: largest extent drawn (the lesion and its posterior region must fit).
    """

    median: float
    log_sd: float
    low: float
    high: float

    def sample(self, rng: np.random.Generator) -> float:
        """One extent."""
        value = self.median * math.exp(self.log_sd * float(rng.standard_normal()))
        return float(np.clip(value, self.low, self.high))


# Fitted to the three real sites' reader masks (../shared/data, 2,181 lesions; max(box w, h) /
# longest side: BUSI median 0.318, BUS-BRA 0.344, BrEaST 0.297; log sd 0.62, 0.45, 0.55).
LESION_EXTENT = ExtentDistribution(median=0.36, log_sd=0.5, low=0.10, high=0.62)


@dataclass(frozen=True)
class ScannerProfile:
    """A site's scanner and preset: what makes its images look unlike another hospital's.

    Attributes:
        name: device name written to the export (a valid schema ``DeviceName``).
        centre_mhz: transmit centre frequency; sets speckle size and attenuation.
        pulse_cycles: -6 dB length of the pulse-echo response in cycles (axial speckle size).
        f_number: effective F-number over the image (focus, elevation and receive aperture);
            the lateral beam is about wavelength x F-number wide.
        depth_mm: imaged depth; with ``height`` it sets the (square) pixel spacing.
        height: image rows.
        width: image columns.
        gain_db: overall receive gain.
        dynamic_range_db: span of the log compression mapped onto grey levels 0..255.
        noise_db: electronic noise amplitude relative to fat backscatter.
        tgc: fraction of the nominal tissue attenuation that time-gain compensation undoes.
        fat_mm: range of subcutaneous fat thickness at this site's population.
        gland_mm: range of glandular layer thickness.
    """

    name: str
    centre_mhz: float
    pulse_cycles: float
    f_number: float
    depth_mm: float
    height: int
    width: int
    gain_db: float
    dynamic_range_db: float
    noise_db: float
    tgc: float
    fat_mm: tuple[float, float]
    gland_mm: tuple[float, float]

    @property
    def pixel_spacing_mm(self) -> float:
        return self.depth_mm / self.height

    @property
    def wavelength_mm(self) -> float:
        return SOUND_SPEED_MM_PER_US / self.centre_mhz

    @property
    def axial_sigma_px(self) -> float:
        """Depth sigma of the gaussian pulse envelope: a pulse of n cycles spans n λ / 2 in depth."""
        return self.pulse_cycles * self.wavelength_mm / 2 / _FWHM_PER_SIGMA / self.pixel_spacing_mm

    @property
    def lateral_sigma_px(self) -> float:
        """Lateral sigma of a beam whose full width at half maximum is λ x F-number."""
        return self.wavelength_mm * self.f_number / _FWHM_PER_SIGMA / self.pixel_spacing_mm


@dataclass(frozen=True, eq=False)
class LesionLook:
    """How one lesion looks, shared by all views of it.

    The outline is a radius per angle around an ellipse, in units of the ellipse's own radius:
    ``mask_radius`` is what the reader traced, ``image_radius`` is what the tissue shows (the
    same, except that spicules run on past the traced outline). Sizes in pixels refer to an
    image whose longest side is :data:`REFERENCE_SIDE_PX`; a view in another image scales them.

    Attributes:
        semi_major_px: half of the ellipse's long axis.
        aspect: long axis over short axis (>= 1).
        tilt_deg: angle of the long axis from the skin line; near 90 is taller than wide.
        mask_radius: relative radius of the traced boundary at ``_THETA``.
        image_radius: relative radius of the rendered boundary at ``_THETA``.
        edge_px: width of the transition into the surrounding tissue (indistinct margins).
        echo_pattern: internal echo pattern.
        echo_level: mean amplitude of the lesion interior relative to fat.
        posterior_db: extra attenuation (dB, negative enhances) below the left and right halves.
        nodule_angle: where the solid part of a complex cystic/solid mass sits on its wall.
        capsule: whether a thin echogenic capsule outlines it (circumscribed masses).
    """

    semi_major_px: float
    aspect: float
    tilt_deg: float
    mask_radius: np.ndarray
    image_radius: np.ndarray
    edge_px: float
    echo_pattern: EchoPattern
    echo_level: float
    posterior_db: tuple[float, float]
    nodule_angle: float
    capsule: bool


@dataclass(frozen=True)
class _Layers:
    """Depth (rows, per column) where each tissue layer begins."""

    fat: np.ndarray
    gland: np.ndarray
    retromammary: np.ndarray
    muscle: np.ndarray
    chest_wall: np.ndarray


# --- lesion outline ---------------------------------------------------------------------


def sample_look(rng: np.random.Generator, descriptors: Descriptors) -> LesionLook:
    """Draw a lesion outline and appearance that show ``descriptors``.

    The traced outline's bounding box has its longer side drawn from :data:`LESION_EXTENT`
    (the real sites' distribution), and every margin term is drawn several pixels and a few
    per cent of the lesion's radius large, so it survives speckle and the network's crop.

    Args:
        rng: source of randomness.
        descriptors: lexicon terms of a mass; every term must be set.

    Returns:
        The lesion's look, to be placed and rendered by :func:`render`.
    """
    extent = LESION_EXTENT.sample(rng)
    aspect, tilt = _axis_pose(rng, descriptors.shape, descriptors.orientation)
    base = 1.0 + _undulations(rng, descriptors.shape)
    semi_major = extent * REFERENCE_SIDE_PX / 2
    mean_radius_px = semi_major * (1 + 1 / aspect) / 2
    traced, shown = _margin_profiles(rng, descriptors.margin, mean_radius_px)
    mask_radius = np.clip(base + traced, 0.35, None)
    # scale the ellipse so that the traced outline's box has the drawn longer side
    half_w, half_h = _outline_extent(mask_radius, 1.0, 1.0 / aspect, np.deg2rad(tilt))
    semi_major = extent * REFERENCE_SIDE_PX / 2 / max(half_w, half_h)
    indistinct = Margin.INDISTINCT in descriptors.margin
    edge = max(_MIN_EDGE_PX, float(rng.uniform(0.07, 0.11)) * mean_radius_px)
    return LesionLook(
        semi_major_px=float(semi_major),
        aspect=aspect,
        tilt_deg=tilt,
        mask_radius=mask_radius,
        image_radius=np.clip(base + shown, 0.35, None),
        edge_px=edge if indistinct else 0.6,
        echo_pattern=descriptors.echo_pattern,
        echo_level=_echo_level(rng, descriptors.echo_pattern),
        posterior_db=_posterior_db(rng, descriptors.posterior_features),
        nodule_angle=float(rng.uniform(-np.pi, np.pi)),
        capsule=descriptors.margin == (Margin.CIRCUMSCRIBED,),
    )


def _axis_pose(
    rng: np.random.Generator, shape: Shape, orientation: Orientation
) -> tuple[float, float]:
    """Aspect ratio and tilt: parallel lesions lie along the skin, not parallel ones stand up."""
    if shape is Shape.ROUND:
        aspect = rng.uniform(1.0, 1.1)
    elif orientation is Orientation.NOT_PARALLEL:
        aspect = rng.uniform(1.4, 1.9)
    elif shape is Shape.OVAL:
        aspect = rng.uniform(1.45, 2.2)
    else:
        aspect = rng.uniform(1.25, 1.8)
    tilt = rng.uniform(-12.0, 12.0)
    if orientation is Orientation.NOT_PARALLEL:
        tilt += 90.0
    return float(aspect), float(tilt)


def _harmonics(
    rng: np.random.Generator, orders: range, amplitude: tuple[float, float]
) -> np.ndarray:
    """Sum of cosines of the given angular orders with random amplitudes and phases."""
    total = np.zeros(_ANGLES)
    for k in orders:
        a = rng.uniform(*amplitude)
        total += a * np.cos(k * _THETA + rng.uniform(0, 2 * np.pi))
    return total


def _undulations(rng: np.random.Generator, shape: Shape) -> np.ndarray:
    """Low-order outline deformation: gentle for oval/round, lumpy for irregular shapes."""
    if shape is Shape.IRREGULAR:
        return _harmonics(rng, range(2, 6), (0.06, 0.14))
    return _harmonics(rng, range(2, 4), (0.0, 0.025))


def _tents(
    rng: np.random.Generator, count: int, height: tuple[float, float], width: float
) -> np.ndarray:
    """Triangular peaks of the radius function: outward points with sharp tips."""
    total = np.zeros(_ANGLES)
    for centre in rng.uniform(-np.pi, np.pi, count):
        distance = np.abs(np.angle(np.exp(1j * (_THETA - centre))))
        total += rng.uniform(*height) * np.clip(1 - distance / width, 0, None)
    return total


def _margin_profiles(
    rng: np.random.Generator, margin: tuple[Margin, ...], radius_px: float
) -> tuple[np.ndarray, np.ndarray]:
    """Radius perturbations of the margin terms: (traced by the reader, shown in the image).

    Each term is drawn at least a resolution cell large (several pixels: the lateral speckle
    of the coarsest profile is ~10 px wide) and a fixed share of the radius, so it still spans
    a few pixels of the network's crop, which frames the lesion at a constant size.
    """
    traced = np.zeros(_ANGLES)
    spicules = np.zeros(_ANGLES)
    if Margin.INDISTINCT in margin:
        traced += _harmonics(rng, range(7, 15), (0.0, 0.025))
    if Margin.MICROLOBULATED in margin:
        lobes = int(np.clip(2 * np.pi * radius_px / rng.uniform(14.0, 22.0), 10, 18))
        depth = max(_MIN_LOBE_PX, float(rng.uniform(0.12, 0.16)) * radius_px) / radius_px
        # |sin| scallops: round outward lobes with sharp notches between them
        traced += depth * (np.abs(np.sin(lobes * _THETA / 2 + rng.uniform(0, np.pi))) - 0.6)
    if Margin.ANGULAR in margin:
        traced += _tents(rng, int(rng.integers(3, 6)), (0.25, 0.4), rng.uniform(0.22, 0.35))
    if Margin.SPICULATED in margin:
        width = max(float(rng.uniform(0.09, 0.12)), _MIN_SPICULE_PX / radius_px)
        spicules = _tents(rng, int(rng.integers(6, 11)), (0.5, 0.9), width)
    return traced + 0.5 * spicules, traced + spicules


def _echo_level(rng: np.random.Generator, pattern: EchoPattern) -> float:
    """Mean interior amplitude relative to fat (anechoic -30 dB, hyperechoic +10 dB or so)."""
    low, high = {
        EchoPattern.ANECHOIC: (_FLUID_LEVEL, _FLUID_LEVEL),
        EchoPattern.HYPOECHOIC: (0.22, 0.42),
        EchoPattern.ISOECHOIC: (0.85, 1.1),
        EchoPattern.HYPERECHOIC: (3.5, 4.5),
        EchoPattern.HETEROGENEOUS: (0.35, 0.5),
        EchoPattern.COMPLEX_CYSTIC_SOLID: (0.5, 0.8),
    }[pattern]
    return float(rng.uniform(low, high))


def _posterior_db(rng: np.random.Generator, posterior: PosteriorFeatures) -> tuple[float, float]:
    """Excess attenuation below the lesion's left and right halves (negative: enhancement)."""
    shadow = float(rng.uniform(10.0, 16.0))
    enhancement = -float(rng.uniform(6.0, 10.0))
    if posterior is PosteriorFeatures.SHADOWING:
        return shadow, shadow
    if posterior is PosteriorFeatures.ENHANCEMENT:
        return enhancement, enhancement
    if posterior is PosteriorFeatures.COMBINED:
        return (shadow, enhancement) if rng.random() < 0.5 else (enhancement, shadow)
    return 0.0, 0.0


# --- tissue -----------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _bump_taps(length: int, cell_px: float) -> tuple[np.ndarray, np.ndarray]:
    """The grid nodes (pitch ``cell_px``) nearest to each of ``length`` pixels, and their
    gaussian weights, scaled so random node values give a field of unit variance.

    Returns:
        ``(index, weight)``, both of shape ``(length, 5)``.
    """
    position = np.arange(length) / cell_px + 2.0  # in node units; nodes 0 and 1 lie before 0
    index = np.floor(position).astype(np.intp)[:, None] + np.arange(-2, 3)
    weight = np.exp(-0.5 * ((position[:, None] - index) / 0.6) ** 2)
    weight /= np.sqrt(np.mean(np.sum(weight**2, axis=1)))
    return index, weight.astype(np.float32)


def _smooth_noise(
    rng: np.random.Generator, shape: tuple[int, int], cell_px: tuple[float, float]
) -> np.ndarray:
    """A smooth gaussian random field (mean 0, variance ~1) with features ~``cell_px`` apart:
    random values on a coarse grid, spread by gaussian bumps (separable, no BLAS)."""
    row_index, row_weight = _bump_taps(shape[0], round(cell_px[0], 2))
    col_index, col_weight = _bump_taps(shape[1], round(cell_px[1], 2))
    nodes = rng.standard_normal((row_index[-1, -1] + 1, col_index[-1, -1] + 1), dtype=np.float32)
    rows = np.einsum("it,itk->ik", row_weight, nodes[row_index])
    return np.einsum("jt,ijt->ij", col_weight, rows[:, col_index])


def _wavy(rng: np.random.Generator, width: int, depth_px: float, amplitude_px: float) -> np.ndarray:
    """A boundary at ``depth_px`` that undulates by about ``amplitude_px`` across the image."""
    x = np.arange(width)
    periods = rng.uniform(0.5, 2.5, 2) * width
    phases = rng.uniform(0, 2 * np.pi, 2)
    weights = rng.dirichlet((1.0, 1.0)) * amplitude_px
    return depth_px + sum(
        w * np.sin(2 * np.pi * x / p + f) for w, p, f in zip(weights, periods, phases, strict=True)
    )


def _sample_layers(rng: np.random.Generator, profile: ScannerProfile) -> _Layers:
    """Skin, fat, gland, retromammary fat, pectoral muscle and chest wall, top to bottom."""
    mm = 1 / profile.pixel_spacing_mm
    fat = rng.uniform(1.5, 2.2) * mm  # below the skin
    gland = fat + rng.uniform(*profile.fat_mm) * mm
    retromammary = gland + rng.uniform(*profile.gland_mm) * mm
    muscle = retromammary + rng.uniform(1.0, 3.0) * mm
    chest_wall = muscle + rng.uniform(6.0, 12.0) * mm
    wave = 0.6 * mm
    width = profile.width
    return _Layers(
        fat=_wavy(rng, width, fat, 0.2 * mm),
        gland=_wavy(rng, width, gland, wave),
        retromammary=_wavy(rng, width, retromammary, 2 * wave),
        muscle=_wavy(rng, width, muscle, 2 * wave),
        chest_wall=_wavy(rng, width, chest_wall, wave),
    )


def _tissue_amplitude(
    rng: np.random.Generator, profile: ScannerProfile, layers: _Layers
) -> np.ndarray:
    """Backscatter amplitude of the normal breast, relative to fat."""
    shape = (profile.height, profile.width)
    mm = 1 / profile.pixel_spacing_mm
    y = np.arange(shape[0], dtype=np.float32)[:, None]
    lobules = _smooth_noise(rng, shape, (2.5 * mm, 5.0 * mm))
    grain = _smooth_noise(rng, shape, (0.7 * mm, 1.5 * mm))
    fatty = 1 / (1 + np.exp(-4 * (lobules - 0.6)))
    gland = 2.3 * np.exp(0.3 * grain) * (1 - fatty) + fatty
    amp = np.where(y < layers.gland, np.exp(0.1 * grain), gland)
    amp = np.where(_ligaments(rng, shape, mm) & (y >= layers.fat), 2.2, amp)
    amp = np.where(y < layers.fat, 3.0, amp)
    amp = np.where(y >= layers.retromammary, 0.9, amp)
    top = int(np.clip(layers.muscle.min(), 0, shape[0]))
    bottom = int(np.clip(np.ceil(layers.chest_wall.max()), top, shape[0]))
    band = amp[top:bottom]
    band[:] = np.where(y[top:bottom] >= layers.muscle, _muscle(rng, band.shape, mm), band)
    amp = np.where(y >= layers.chest_wall, 0.3, amp)
    fascia = (np.abs(y - layers.muscle) < 0.6) | (np.abs(y - layers.chest_wall) < 0.8)
    return np.where(fascia, 2.5, amp).astype(np.float32)


def _ligaments(rng: np.random.Generator, shape: tuple[int, int], mm: float) -> np.ndarray:
    """Cooper's ligaments and septa: thin curved lines, the broken-up zero set of a smooth field."""
    lines = np.abs(_smooth_noise(rng, shape, (4.0 * mm, 4.0 * mm))) < 0.05
    return lines & (_smooth_noise(rng, shape, (3.0 * mm, 3.0 * mm)) > 0.2)


def _muscle(rng: np.random.Generator, shape: tuple[int, int], mm: float) -> np.ndarray:
    """Pectoral muscle: hypoechoic with thin, slightly oblique, interrupted fibre striations."""
    y = np.arange(shape[0], dtype=np.float32)[:, None]
    x = np.arange(shape[1], dtype=np.float32)[None, :]
    angle = np.deg2rad(rng.uniform(-8, 8))
    period = rng.uniform(1.2, 2.0) * mm
    wobble = _smooth_noise(rng, shape, (3.0 * mm, 8.0 * mm))
    phase = 2 * np.pi * (y * np.cos(angle) + x * np.sin(angle)) / period + 2.0 * wobble
    gaps = _smooth_noise(rng, shape, (2.0 * mm, 4.0 * mm)) > -0.3
    return np.where((np.cos(phase) > 0.85) & gaps, 1.3, 0.5)


# --- lesion placement and drawing ------------------------------------------------------


@dataclass(frozen=True)
class _Pose:
    """Where one view shows the lesion: centre (px), semi-axes (px) and tilt (radians)."""

    cx: float
    cy: float
    a: float
    b: float
    tilt: float


def _outline_extent(radius: np.ndarray, a: float, b: float, tilt: float) -> tuple[float, float]:
    """Half width and half height of an outline (relative ``radius`` at ``_THETA``)."""
    u = a * radius * np.cos(_THETA)
    v = b * radius * np.sin(_THETA)
    x = u * np.cos(tilt) - v * np.sin(tilt)
    y = u * np.sin(tilt) + v * np.cos(tilt)
    return float(np.abs(x).max()), float(np.abs(y).max())


def _place(
    rng: np.random.Generator, look: LesionLook, layers: _Layers, shape: tuple[int, int]
) -> _Pose:
    """Pose of one view: the lesion's own tilt and size, jittered, centred in the gland."""
    scale = rng.uniform(0.93, 1.07) * max(shape) / REFERENCE_SIDE_PX
    a = look.semi_major_px * scale
    b = a / look.aspect
    tilt = np.deg2rad(look.tilt_deg + rng.uniform(-5, 5))
    half_w, half_h = _outline_extent(look.image_radius, a, b, tilt)
    height, width = shape
    cx = rng.uniform(half_w + 4, max(half_w + 4, width - half_w - 4))
    column = int(np.clip(cx, 0, width - 1))
    top = max(layers.gland[column], layers.fat[column] + half_h + 3)
    bottom = min(layers.retromammary[column], 0.78 * height - half_h)
    cy = rng.uniform(top, bottom) if top < bottom else (top + bottom) / 2
    return _Pose(float(cx), float(cy), a, b, float(tilt))


def _draw_lesion(
    rng: np.random.Generator, amp: np.ndarray, look: LesionLook, pose: _Pose
) -> tuple[np.ndarray, np.ndarray]:
    """Paint the lesion into ``amp`` in place.

    Returns:
        The traced mask and the lesion's excess attenuation (dB) accumulated down each column.
    """
    height, width = amp.shape
    half_w, half_h = _outline_extent(look.image_radius, pose.a, pose.b, pose.tilt)
    pad = 3 * look.edge_px + 3
    x0, x1 = max(0, int(pose.cx - half_w - pad)), min(width, int(pose.cx + half_w + pad) + 1)
    y0, y1 = max(0, int(pose.cy - half_h - pad)), min(height, int(pose.cy + half_h + pad) + 1)
    y, x = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = x - pose.cx, y - pose.cy
    u = dx * np.cos(pose.tilt) + dy * np.sin(pose.tilt)
    v = -dx * np.sin(pose.tilt) + dy * np.cos(pose.tilt)
    theta = np.arctan2(v / pose.b, u / pose.a)
    rho = np.hypot(u / pose.a, v / pose.b)
    ray_px = np.hypot(pose.a * np.cos(theta), pose.b * np.sin(theta))
    traced = np.interp(theta, _THETA, look.mask_radius, period=2 * np.pi)
    shown = np.interp(theta, _THETA, look.image_radius, period=2 * np.pi)
    distance = (rho - shown) * ray_px  # approximately, along the ray from the centre
    weight = 1 / (1 + np.exp(np.clip(1.8 * distance / look.edge_px, -30, 30)))

    interior = _interior(rng, look, pose, u, v)
    crop = amp[y0:y1, x0:x1]
    crop[:] = crop * (1 - weight) + interior * weight
    if look.capsule:
        crop[:] += np.exp(-((distance / 1.2) ** 2)) * (_CAPSULE_LEVEL - crop)

    mask = np.zeros(amp.shape, dtype=bool)
    mask[y0:y1, x0:x1] = rho < traced
    return mask, _posterior_attenuation(look, pose, weight, x, (y0, y1, x0, x1), amp.shape)


def _interior(
    rng: np.random.Generator, look: LesionLook, pose: _Pose, u: np.ndarray, v: np.ndarray
) -> np.ndarray:
    """Interior amplitude for the echo pattern (fluid is near silent, solid parts textured)."""
    shape = u.shape
    cell = max(3.0, pose.b / 3)
    texture = _smooth_noise(rng, shape, (cell, cell))
    if look.echo_pattern is EchoPattern.ANECHOIC:
        return np.full(shape, look.echo_level, dtype=np.float32)
    if look.echo_pattern is EchoPattern.HETEROGENEOUS:
        return look.echo_level * np.exp(1.0 * texture)
    solid = look.echo_level * np.exp(0.15 * texture)
    if look.echo_pattern is not EchoPattern.COMPLEX_CYSTIC_SOLID:
        return solid
    nu = 0.6 * pose.a * np.cos(look.nodule_angle)
    nv = 0.6 * pose.b * np.sin(look.nodule_angle)
    in_nodule = np.hypot(u - nu, v - nv) < 0.65 * pose.b
    return np.where(in_nodule, solid, _FLUID_LEVEL)


def _posterior_attenuation(
    look: LesionLook,
    pose: _Pose,
    weight: np.ndarray,
    x: np.ndarray,
    box: tuple[int, int, int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    """Excess attenuation (dB) along each beam, spread over the lesion's height so it reaches
    its full value below the lesion's thickest part."""
    y0, y1, x0, x1 = box
    left_db, right_db = look.posterior_db
    side = 0.5 * (1 + np.tanh((x - pose.cx) / 2.0))
    per_column_db = left_db + (right_db - left_db) * side
    thickness = max(1.0, float(weight.sum(axis=0).max()))
    along = np.cumsum(weight * per_column_db / thickness, axis=0)
    along = ndimage.gaussian_filter1d(along, 1.5, axis=1)  # soft column edges
    total = np.zeros(shape, dtype=np.float32)
    total[y0:y1, x0:x1] = along
    total[y1:, x0:x1] = along[-1]
    return total


# --- imaging ----------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _psf_taps(sigma_px: float) -> np.ndarray:
    """Gaussian taps of one PSF factor, of unit energy so speckle keeps the mean intensity."""
    radius = max(1, math.ceil(3.5 * sigma_px))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    return (taps / np.sqrt(np.sum(taps**2))).astype(np.float32)


def speckle_envelope(
    rng: np.random.Generator, amplitude: np.ndarray, profile: ScannerProfile
) -> np.ndarray:
    """Detected envelope of a backscatter map: |random-phase scatterers convolved with the PSF|.

    Args:
        rng: source of the scatterers.
        amplitude: backscatter amplitude per pixel.
        profile: scanner whose PSF is used.

    Returns:
        The envelope; Rayleigh distributed with mean square ``amplitude²`` where it is uniform.
    """
    scatterers = rng.standard_normal((2, *amplitude.shape), dtype=np.float32) * amplitude
    axial = _psf_taps(round(profile.axial_sigma_px, 3))
    lateral = _psf_taps(round(profile.lateral_sigma_px, 3))
    i, q = (
        ndimage.correlate1d(ndimage.correlate1d(part, axial, axis=0), lateral, axis=1)
        for part in scatterers
    )
    return np.hypot(i, q) * np.float32(np.sqrt(0.5))


def _tissue_attenuation_db(profile: ScannerProfile) -> np.ndarray:
    """Nominal round-trip attenuation at each row's depth, as a column."""
    rows = np.arange(profile.height, dtype=np.float32)[:, None] + 0.5
    depth_cm = rows * profile.pixel_spacing_mm / 10
    return 2 * ATTENUATION_DB_PER_CM_MHZ * profile.centre_mhz * depth_cm


def _received(amp: np.ndarray, excess_db: np.ndarray, profile: ScannerProfile) -> np.ndarray:
    """Echo amplitude at the receiver: attenuated backscatter plus electronic noise.

    The noise is white at the receiver and band-limited by the same receive chain, so it joins
    the scatterers as an independent complex gaussian: amplitudes add in quadrature.
    """
    attenuation_db = _tissue_attenuation_db(profile) + excess_db
    echo = amp * np.power(np.float32(10), -attenuation_db / 20)
    noise = np.float32(10 ** (profile.noise_db / 20))
    return np.sqrt(echo**2 + noise**2)


def _log_compress(envelope: np.ndarray, profile: ScannerProfile) -> np.ndarray:
    """Time-gain compensation, gain and log compression into 8-bit grey levels."""
    tgc_db = profile.tgc * _tissue_attenuation_db(profile)
    level_db = 20 * np.log10(envelope + np.float32(1e-12)) + tgc_db + profile.gain_db
    grey = (level_db - _WHITE_DB + profile.dynamic_range_db) / profile.dynamic_range_db
    return np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8)


def render(
    rng: np.random.Generator, profile: ScannerProfile, look: LesionLook | None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one B-mode view: new tissue, new speckle, and the lesion (if any) in a new pose.

    Args:
        rng: source of everything random in this view.
        profile: scanner that acquires it.
        look: the lesion to show, or None for a normal breast.

    Returns:
        ``(image, mask)``: uint8 grey levels and the traced lesion mask (all False if normal).
    """
    layers = _sample_layers(rng, profile)
    amp = _tissue_amplitude(rng, profile, layers)
    if look is None:
        mask = np.zeros(amp.shape, dtype=bool)
        excess_db = np.zeros(amp.shape, dtype=np.float32)
    else:
        mask, excess_db = _draw_lesion(rng, amp, look, _place(rng, look, layers, amp.shape))
    envelope = speckle_envelope(rng, _received(amp, excess_db, profile), profile)
    return _log_compress(envelope, profile), mask
