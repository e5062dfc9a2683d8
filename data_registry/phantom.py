"""A synthetic B-mode breast-ultrasound phantom with lexicon ground truth, deterministic per seed.

Each site is a folder a hospital export could be (``site-<letter>/images``, ``masks``,
``cases.csv``), acquired with one of :data:`SCANNER_PROFILES` (cycled across sites), so sites
differ in speckle size, depth, gain, dynamic range and noise like real hospitals do. Images are
at most 384 px on their longest side (0.107-0.125 mm per pixel), as the real sites' are, and
lesion boxes follow the real sites' size distribution (median width ~0.31 of the longest side,
see ``_phantom_render.LESION_EXTENT``); every margin term is drawn several pixels large.

Malignancy model. Descriptors are drawn first, from one of two mixtures (benign-looking or
suspicious, see ``_BENIGN_LOOKING`` and ``_SUSPICIOUS``), which makes the terms co-occur as they
do in practice. The probability of malignancy then depends on the descriptors alone, so
everything a model needs is in the image::

    logit p = -4.0 + shape + orientation + sum(margin terms) + echo pattern + posterior

with the weights in ``_LOGIT_WEIGHTS``: oval 0, round +0.6, irregular +1.6; not parallel +1.3;
indistinct +1.1, angular +1.4, microlobulated +1.0, spiculated +2.6; anechoic -2.5, hypoechoic
+0.5, isoechoic 0, hyperechoic -1.5, heterogeneous +0.4, complex cystic/solid +1.4; enhancement
-0.7, shadowing +0.7, combined +0.5. A circumscribed, parallel, hypoechoic oval mass without
posterior features has p ≈ 3 %. Over the sampled mixture (20 000 lesions) the malignant share
per term is close to the lexicon's published positive predictive values: spiculated 0.87,
angular 0.70, irregular 0.65, microlobulated 0.63, indistinct 0.58, not parallel 0.70,
shadowing 0.67, enhancement 0.09, circumscribed oval parallel 0.017; 34 % of lesions are
malignant, and p itself separates them with an AUC of about 0.95 (the ceiling for a model that
reads the descriptors perfectly). The assessment follows the ACR bands of p: 2 (p ≤ 0.5 %),
3 (≤ 2 %), 4A (≤ 10 %), 4B (≤ 50 %), 4C (≤ 95 %), 5; normal breasts are 1. A ``sharpness``
above 1 multiplies the log-odds: the malignant share stays about a third, pathology follows the
visible terms more closely (1.5: ceiling AUC about 0.97) and the PPVs above become more extreme.

Determinism. Patient ``p`` of site ``s`` draws from ``default_rng([seed, s, p])`` and its view
``v`` renders from ``default_rng([seed, s, p, v + 1])``, so a case never depends on which other
cases were generated, and the same seed gives byte-identical PNGs and CSVs.
"""

from __future__ import annotations

import csv
import io
import json
import string
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image
from scipy import ndimage
from tqdm import tqdm

from data_registry._phantom_render import LesionLook, ScannerProfile, render, sample_look
from data_registry.files import write_atomic
from data_registry.schema import (
    BiRads,
    Descriptors,
    EchoPattern,
    Margin,
    Orientation,
    Pathology,
    PosteriorFeatures,
    ReferenceStandard,
    Shape,
)

__all__ = [
    "BATCH_PATIENTS",
    "CSV_COLUMNS",
    "NORMAL_SHARE",
    "PHANTOM_VERSION",
    "SCANNER_PROFILES",
    "TWO_VIEW_SHARE",
    "LesionSpec",
    "ScannerProfile",
    "birads_for",
    "generate_site",
    "generate_sites",
    "make_lesion",
    "malignancy_probability",
    "profile_for_site",
    "render_case",
    "sample_descriptors",
    "sample_lesion",
    "site_name",
]

PHANTOM_VERSION = "2.0"
_T = TypeVar("_T")
NORMAL_SHARE = 0.10
TWO_VIEW_SHARE = 0.20
BATCH_PATIENTS = 10_000  # patient indices per batch: batch b starts at (b - 1) x this

CSV_COLUMNS = (
    "case_id",
    "patient_id",
    "image",
    "mask",
    "pathology",
    "reference_standard",
    "birads",
    "shape",
    "orientation",
    "margin",
    "echo_pattern",
    "posterior_features",
    "device",
    "age",
    "pixel_spacing_mm",
    "seed_x",
    "seed_y",
    "p_malignant",
)

SCANNER_PROFILES: dict[str, ScannerProfile] = {
    p.name: p
    for p in (
        ScannerProfile(
            name="Phantom HF-L15 @14MHz",
            centre_mhz=14.0,
            pulse_cycles=4.0,
            f_number=4.0,
            depth_mm=36.0,
            height=336,
            width=384,
            gain_db=0.0,
            dynamic_range_db=55.0,
            noise_db=-62.0,
            tgc=0.95,
            fat_mm=(4.0, 8.0),
            gland_mm=(7.0, 14.0),
        ),
        ScannerProfile(
            name="Phantom MF-L12 @10MHz",
            centre_mhz=10.0,
            pulse_cycles=3.5,
            f_number=4.5,
            depth_mm=42.0,
            height=352,
            width=384,
            gain_db=3.0,
            dynamic_range_db=62.0,
            noise_db=-58.0,
            tgc=0.9,
            fat_mm=(5.0, 12.0),
            gland_mm=(6.0, 14.0),
        ),
        ScannerProfile(
            name="Phantom LF-L9 @7.5MHz",
            centre_mhz=7.5,
            pulse_cycles=3.0,
            f_number=4.5,
            depth_mm=46.0,
            height=384,
            width=352,
            gain_db=1.0,
            dynamic_range_db=50.0,
            noise_db=-50.0,
            tgc=0.85,
            fat_mm=(6.0, 14.0),
            gland_mm=(5.0, 12.0),
        ),
        ScannerProfile(
            name="Phantom Portable-L7 @6MHz",
            centre_mhz=6.0,
            pulse_cycles=3.0,
            f_number=5.0,
            depth_mm=44.0,
            height=368,
            width=384,
            gain_db=5.0,
            dynamic_range_db=45.0,
            noise_db=-44.0,
            tgc=0.8,
            fat_mm=(4.0, 10.0),
            gland_mm=(6.0, 16.0),
        ),
    )
}


# --- lexicon and malignancy ------------------------------------------------------------

_BASE_LOGIT = -4.0
_LOGIT_WEIGHTS: Mapping[StrEnum, float] = {
    Shape.OVAL: 0.0,
    Shape.ROUND: 0.6,
    Shape.IRREGULAR: 1.6,
    Orientation.PARALLEL: 0.0,
    Orientation.NOT_PARALLEL: 1.3,
    Margin.CIRCUMSCRIBED: 0.0,
    Margin.INDISTINCT: 1.1,
    Margin.ANGULAR: 1.4,
    Margin.MICROLOBULATED: 1.0,
    Margin.SPICULATED: 2.6,
    EchoPattern.ANECHOIC: -2.5,
    EchoPattern.HYPOECHOIC: 0.5,
    EchoPattern.ISOECHOIC: 0.0,
    EchoPattern.HYPERECHOIC: -1.5,
    EchoPattern.HETEROGENEOUS: 0.4,
    EchoPattern.COMPLEX_CYSTIC_SOLID: 1.4,
    PosteriorFeatures.NONE: 0.0,
    PosteriorFeatures.ENHANCEMENT: -0.7,
    PosteriorFeatures.SHADOWING: 0.7,
    PosteriorFeatures.COMBINED: 0.5,
}


@dataclass(frozen=True)
class _Mixture:
    """Descriptor frequencies of one kind of lesion (relative weights per term)."""

    shape: Mapping[Shape, float]
    not_parallel: float
    circumscribed: float
    margin_terms: Mapping[Margin, float]  # independent chances when not circumscribed
    echo: Mapping[EchoPattern, float]
    posterior: Mapping[PosteriorFeatures, float]


_BENIGN_LOOKING_SHARE = 0.52
_BENIGN_LOOKING = _Mixture(
    shape={Shape.OVAL: 0.7, Shape.ROUND: 0.2, Shape.IRREGULAR: 0.1},
    not_parallel=0.06,
    circumscribed=0.8,
    margin_terms={Margin.INDISTINCT: 0.6, Margin.MICROLOBULATED: 0.25, Margin.ANGULAR: 0.15},
    echo={
        EchoPattern.ANECHOIC: 0.25,
        EchoPattern.HYPOECHOIC: 0.4,
        EchoPattern.ISOECHOIC: 0.15,
        EchoPattern.HYPERECHOIC: 0.1,
        EchoPattern.HETEROGENEOUS: 0.05,
        EchoPattern.COMPLEX_CYSTIC_SOLID: 0.05,
    },
    posterior={
        PosteriorFeatures.NONE: 0.5,
        PosteriorFeatures.ENHANCEMENT: 0.4,
        PosteriorFeatures.SHADOWING: 0.05,
        PosteriorFeatures.COMBINED: 0.05,
    },
)
_SUSPICIOUS = _Mixture(
    shape={Shape.OVAL: 0.15, Shape.ROUND: 0.1, Shape.IRREGULAR: 0.75},
    not_parallel=0.45,
    circumscribed=0.08,
    margin_terms={
        Margin.INDISTINCT: 0.55,
        Margin.ANGULAR: 0.4,
        Margin.MICROLOBULATED: 0.3,
        Margin.SPICULATED: 0.45,
    },
    echo={
        EchoPattern.HYPOECHOIC: 0.65,
        EchoPattern.HETEROGENEOUS: 0.15,
        EchoPattern.COMPLEX_CYSTIC_SOLID: 0.1,
        EchoPattern.ISOECHOIC: 0.07,
        EchoPattern.HYPERECHOIC: 0.03,
    },
    posterior={
        PosteriorFeatures.SHADOWING: 0.45,
        PosteriorFeatures.NONE: 0.35,
        PosteriorFeatures.COMBINED: 0.1,
        PosteriorFeatures.ENHANCEMENT: 0.1,
    },
)
_BIRADS_BANDS = (
    (0.005, BiRads.B2),
    (0.02, BiRads.B3),
    (0.10, BiRads.B4A),
    (0.50, BiRads.B4B),
    (0.95, BiRads.B4C),
)


@dataclass(frozen=True, eq=False)
class LesionSpec:
    """One lesion: its lexicon terms, its truth and its look (shared by all views).

    Attributes:
        descriptors: the ACR BI-RADS lexicon terms, all set.
        p_malignant: probability of malignancy implied by the descriptors.
        pathology: benign or malignant, drawn with ``p_malignant``.
        birads: the assessment category of ``p_malignant``.
        look: outline and appearance for rendering.
    """

    descriptors: Descriptors
    p_malignant: float
    pathology: Pathology
    birads: BiRads
    look: LesionLook


def _choose(rng: np.random.Generator, weights: Mapping[_T, float]) -> _T:
    """One key, drawn in proportion to its weight."""
    options = list(weights)
    p = np.array(list(weights.values()))
    return options[rng.choice(len(options), p=p / p.sum())]


def _margin(rng: np.random.Generator, mixture: _Mixture) -> tuple[Margin, ...]:
    if rng.random() < mixture.circumscribed:
        return (Margin.CIRCUMSCRIBED,)
    terms = tuple(m for m, chance in mixture.margin_terms.items() if rng.random() < chance)
    return terms or (_choose(rng, mixture.margin_terms),)


def sample_descriptors(rng: np.random.Generator) -> Descriptors:
    """Draw the lexicon terms of a mass, from the benign-looking or the suspicious mixture.

    A round mass has no long axis, so it is always reported parallel; a fluid (anechoic) mass
    usually enhances the echoes behind it.

    Args:
        rng: source of randomness.

    Returns:
        Descriptors with every term set.
    """
    mixture = _BENIGN_LOOKING if rng.random() < _BENIGN_LOOKING_SHARE else _SUSPICIOUS
    shape = _choose(rng, mixture.shape)
    not_parallel = shape is not Shape.ROUND and rng.random() < mixture.not_parallel
    echo = _choose(rng, mixture.echo)
    posterior = _choose(rng, mixture.posterior)
    if echo is EchoPattern.ANECHOIC and rng.random() < 0.8:
        posterior = PosteriorFeatures.ENHANCEMENT
    return Descriptors(
        shape=shape,
        orientation=Orientation.NOT_PARALLEL if not_parallel else Orientation.PARALLEL,
        margin=_margin(rng, mixture),
        echo_pattern=echo,
        posterior_features=posterior,
    )


def malignancy_probability(descriptors: Descriptors, sharpness: float = 1.0) -> float:
    """Probability of malignancy from the lexicon terms (log-odds model, module docstring).

    Args:
        descriptors: terms of a mass; every term must be set.
        sharpness: multiplies the log-odds; 1 keeps the lexicon's positive predictive values,
            above 1 makes pathology follow the visible terms more closely (less label noise).

    Returns:
        A probability in (0, 1).

    Raises:
        ValueError: if a term is missing.
    """
    terms = (
        descriptors.shape,
        descriptors.orientation,
        descriptors.echo_pattern,
        descriptors.posterior_features,
    )
    if None in terms or not descriptors.margin:
        raise ValueError(f"every lexicon term must be set to render a lesion, got {descriptors}")
    logit = _BASE_LOGIT + sum(_LOGIT_WEIGHTS[t] for t in (*terms, *descriptors.margin))
    return float(1 / (1 + np.exp(-sharpness * logit)))


def birads_for(p_malignant: float) -> BiRads:
    """ACR assessment category for a probability of malignancy (benign 2 below 0.5 %).

    Args:
        p_malignant: probability of malignancy of a mass.

    Returns:
        The category whose likelihood-of-malignancy band holds ``p_malignant``.
    """
    for upper, category in _BIRADS_BANDS:
        if p_malignant <= upper:
            return category
    return BiRads.B5


def make_lesion(
    rng: np.random.Generator, descriptors: Descriptors, sharpness: float = 1.0
) -> LesionSpec:
    """Draw a lesion with given descriptors: its look, and its pathology from their PPV.

    Args:
        rng: source of randomness.
        descriptors: lexicon terms, all set.
        sharpness: see :func:`malignancy_probability`.

    Returns:
        The lesion.

    Raises:
        ValueError: if a term is missing.
    """
    p = malignancy_probability(descriptors, sharpness)
    malignant = rng.random() < p
    return LesionSpec(
        descriptors=descriptors,
        p_malignant=p,
        pathology=Pathology.MALIGNANT if malignant else Pathology.BENIGN,
        birads=birads_for(p),
        look=sample_look(rng, descriptors),
    )


def sample_lesion(rng: np.random.Generator, sharpness: float = 1.0) -> LesionSpec:
    """Draw descriptors, then a lesion that shows them (see :func:`make_lesion`)."""
    return make_lesion(rng, sample_descriptors(rng), sharpness)


def render_case(
    rng: np.random.Generator, profile: ScannerProfile, *, lesion: LesionSpec | None
) -> tuple[np.ndarray, np.ndarray]:
    """Render one view of a breast, with the lesion in a new pose and new speckle.

    Args:
        rng: source of everything random in this view.
        profile: the scanner acquiring it.
        lesion: the lesion to show, or None for a normal breast.

    Returns:
        ``(image, mask)``: a ``(profile.height, profile.width)`` uint8 B-mode image and the
        bool mask of the lesion as a reader would trace it (all False when normal).
    """
    return render(rng, profile, None if lesion is None else lesion.look)


# --- sites -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Patient:
    lesion: LesionSpec | None
    views: int
    age: int
    reference_standard: ReferenceStandard

    @property
    def pathology(self) -> Pathology:
        return Pathology.NORMAL if self.lesion is None else self.lesion.pathology


def _sample_patient(rng: np.random.Generator, sharpness: float = 1.0) -> _Patient:
    """A patient: a lesion or none, one or two views, age, and how the diagnosis was proven."""
    lesion = None if rng.random() < NORMAL_SHARE else sample_lesion(rng, sharpness)
    views = 2 if rng.random() < TWO_VIEW_SHARE else 1
    if lesion is None:
        mean_age, reference = 48, ReferenceStandard.FOLLOW_UP
    elif lesion.pathology is Pathology.MALIGNANT:
        mean_age, reference = 58, ReferenceStandard.BIOPSY
    else:
        low_suspicion = lesion.birads in (BiRads.B2, BiRads.B3)
        followed = low_suspicion and rng.random() < 0.6
        mean_age = 45
        reference = ReferenceStandard.FOLLOW_UP if followed else ReferenceStandard.BIOPSY
    age = int(np.clip(rng.normal(mean_age, 11), 20, 90))
    return _Patient(lesion, views, age, reference)


def _seed_point(rng: np.random.Generator, mask: np.ndarray) -> tuple[int, int]:
    """A click well inside the lesion (not necessarily its centroid): (x, y)."""
    rows, cols = ndimage.find_objects(mask.astype(np.uint8))[0]
    depth = ndimage.distance_transform_edt(np.pad(mask[rows, cols], 1))[1:-1, 1:-1]
    ys, xs = np.nonzero(depth >= 0.5 * depth.max())
    i = rng.integers(len(ys))
    return int(xs[i]) + cols.start, int(ys[i]) + rows.start


def site_name(site_index: int) -> str:
    """Folder name of a site: ``site-a`` for index 0 up to ``site-z`` for 25."""
    _check_site_index(site_index)
    return f"site-{string.ascii_lowercase[site_index]}"


def profile_for_site(site_index: int) -> ScannerProfile:
    """The scanner profile of a site: the profiles in order, cycled."""
    _check_site_index(site_index)
    profiles = list(SCANNER_PROFILES.values())
    return profiles[site_index % len(profiles)]


def _check_site_index(site_index: int) -> None:
    if not 0 <= site_index < 26:
        raise ValueError(f"site_index must be 0..25 (one letter per site), got {site_index}")


def _check_sharpness(sharpness: float) -> None:
    if not 0.25 <= sharpness <= 4.0:
        raise ValueError(f"sharpness must lie in [0.25, 4], got {sharpness}")


def _check_counts(cases: int, seed: int, batch: int = 1) -> None:
    if not 1 <= cases <= BATCH_PATIENTS:
        raise ValueError(f"cases must be 1..{BATCH_PATIENTS}, got {cases}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if not 1 <= batch <= 9:
        raise ValueError(f"batch must be 1..9, got {batch}")


def _write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path, format="PNG")


def _case_row(
    case_id: str,
    patient_id: str,
    patient: _Patient,
    profile: ScannerProfile,
    seed_point: tuple[int, int] | None,
) -> dict[str, str]:
    lesion = patient.lesion
    d = lesion.descriptors if lesion else Descriptors()
    return {
        "case_id": case_id,
        "patient_id": patient_id,
        "image": f"images/{case_id}.png",
        "mask": f"masks/{case_id}_mask.png",
        "pathology": patient.pathology.value,
        "reference_standard": patient.reference_standard.value,
        "birads": lesion.birads.value if lesion else BiRads.B1.value,
        "shape": d.shape.value if d.shape else "",
        "orientation": d.orientation.value if d.orientation else "",
        "margin": "&".join(m.value for m in d.margin),
        "echo_pattern": d.echo_pattern.value if d.echo_pattern else "",
        "posterior_features": d.posterior_features.value if d.posterior_features else "",
        "device": profile.name,
        "age": str(patient.age),
        "pixel_spacing_mm": f"{profile.pixel_spacing_mm:.4f}",
        "seed_x": str(seed_point[0]) if seed_point else "",
        "seed_y": str(seed_point[1]) if seed_point else "",
        "p_malignant": f"{lesion.p_malignant:.4f}" if lesion else "",
    }


def generate_site(
    out_dir: Path,
    *,
    site_index: int,
    cases: int,
    seed: int,
    sharpness: float = 1.0,
    progress: bool = False,
    batch: int = 1,
) -> Path:
    """Render one site's export into ``out_dir/site-<letter>``.

    Args:
        out_dir: the folder that holds the site folders (created if missing).
        site_index: 0 for ``site-a``, up to 25; also picks the scanner profile.
        cases: number of images; a two-view patient may be cut to one view at the end.
        seed: the generation seed.
        sharpness: log-odds multiplier of the malignancy model (:func:`malignancy_probability`).
        progress: show a progress bar.
        batch: which export of the site: batch ``b`` holds new patients, numbered from
            ``(b - 1) x BATCH_PATIENTS`` (ids ``ap10000`` … for batch 2), as a hospital's
            later export of newly confirmed cases would; batch 1 is the first export.

    Returns:
        The site folder. ``cases.csv`` is written last, by atomic rename.

    Raises:
        ValueError: if an argument is out of range.
    """
    _check_counts(cases, seed, batch)
    _check_sharpness(sharpness)
    site = site_name(site_index)
    profile = profile_for_site(site_index)
    site_dir = Path(out_dir) / site
    for sub in ("images", "masks"):
        (site_dir / sub).mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, str]] = []
    with tqdm(total=cases, desc=site, disable=not progress, unit="img") as bar:
        patient_index = (batch - 1) * BATCH_PATIENTS
        while len(rows) < cases:
            rng = np.random.default_rng([seed, site_index, patient_index])
            patient = _sample_patient(rng, sharpness)
            patient_id = f"{site[-1]}p{patient_index:05d}"
            for view in range(min(patient.views, cases - len(rows))):
                rng = np.random.default_rng([seed, site_index, patient_index, view + 1])
                image, mask = render_case(rng, profile, lesion=patient.lesion)
                case_id = f"{site[-1]}c{patient_index:05d}-{view + 1}"
                _write_png(site_dir / "images" / f"{case_id}.png", image)
                _write_png(site_dir / "masks" / f"{case_id}_mask.png", mask.astype(np.uint8) * 255)
                seed_point = _seed_point(rng, mask) if patient.lesion else None
                rows.append(_case_row(case_id, patient_id, patient, profile, seed_point))
                bar.update()
            patient_index += 1
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(site_dir / "cases.csv", buffer.getvalue().encode("utf-8"), durable=False)
    return site_dir


def generate_sites(
    out: Path,
    *,
    sites: int,
    cases: int,
    seed: int,
    sharpness: float = 1.0,
    progress: bool = False,
    batch: int = 1,
) -> list[Path]:
    """Render ``sites`` site exports of ``cases`` images each, plus ``phantom.json``.

    Args:
        out: output folder (created if missing).
        sites: number of sites, 1..26 (``site-a`` ...).
        cases: images per site, at least 1.
        seed: the generation seed (non-negative); the same seed gives identical bytes.
        sharpness: log-odds multiplier of the malignancy model (1: the lexicon's PPVs).
        progress: show a progress bar per site.
        batch: 1 for a first export; 2 or more for a later export of new patients of the
            same sites (see :func:`generate_site`).

    Returns:
        The site folders, in order.

    Raises:
        ValueError: if an argument is out of range.
    """
    if not 1 <= sites <= 26:
        raise ValueError(f"sites must be 1..26 (one letter per site), got {sites}")
    _check_counts(cases, seed, batch)
    _check_sharpness(sharpness)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dirs = [
        generate_site(
            out,
            site_index=i,
            cases=cases,
            seed=seed,
            sharpness=sharpness,
            progress=progress,
            batch=batch,
        )
        for i in range(sites)
    ]
    manifest = {
        "generator": "data_registry.phantom",
        "version": PHANTOM_VERSION,
        "seed": seed,
        "sites": sites,
        "cases": cases,
        "batch": batch,
        "sharpness": sharpness,
        "site_profiles": {site_name(i): profile_for_site(i).name for i in range(sites)},
        "profiles": {name: asdict(p) for name, p in SCANNER_PROFILES.items()},
    }
    manifest_text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    write_atomic(out / "phantom.json", manifest_text.encode("utf-8"), durable=False)
    return dirs
