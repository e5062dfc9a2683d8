"""The synthetic breast-ultrasound phantom: determinism, lexicon ground truth, sites, importer."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import TypeAdapter
from scipy import ndimage
from skimage.measure import find_contours, regionprops

from data_registry._phantom_render import speckle_envelope
from data_registry.exceptions import SourceError
from data_registry.importers.phantom import importer
from data_registry.phantom import (
    CSV_COLUMNS,
    SCANNER_PROFILES,
    LesionSpec,
    ScannerProfile,
    birads_for,
    generate_site,
    generate_sites,
    make_lesion,
    malignancy_probability,
    render_case,
    sample_lesion,
)
from data_registry.schema import (
    BiRads,
    Case,
    Descriptors,
    DeviceName,
    EchoPattern,
    Margin,
    Orientation,
    Pathology,
    PosteriorFeatures,
    Shape,
)

PROFILES = list(SCANNER_PROFILES.values())


def _descriptors(
    shape: Shape = Shape.OVAL,
    orientation: Orientation = Orientation.PARALLEL,
    margin: tuple[Margin, ...] = (Margin.CIRCUMSCRIBED,),
    echo: EchoPattern = EchoPattern.HYPOECHOIC,
    posterior: PosteriorFeatures = PosteriorFeatures.NONE,
) -> Descriptors:
    return Descriptors(
        shape=shape,
        orientation=orientation,
        margin=margin,
        echo_pattern=echo,
        posterior_features=posterior,
    )


def _renders(
    descriptors: Descriptors, count: int = 6
) -> list[tuple[ScannerProfile, np.ndarray, np.ndarray]]:
    """``count`` views of lesions with these descriptors, cycling through the profiles."""
    views = []
    for i in range(count):
        rng = np.random.default_rng([2024, i])
        profile = PROFILES[i % len(PROFILES)]
        image, mask = render_case(rng, profile, lesion=make_lesion(rng, descriptors))
        views.append((profile, image, mask))
    return views


def _fat_level(profile: ScannerProfile, image: np.ndarray, mask: np.ndarray) -> float:
    """Mean grey of subcutaneous fat: 2.6-4.5 mm deep is fat in every profile (skin <= 2.4 mm,
    fat >= 4 mm thick), away from the lesion's columns."""
    rows = slice(round(2.6 / profile.pixel_spacing_mm), round(4.5 / profile.pixel_spacing_mm))
    away = ~ndimage.binary_dilation(mask.any(axis=0), iterations=10)
    return float(image[rows][:, away].mean())


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _rows(site: Path) -> list[dict[str, str]]:
    with (site / "cases.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    generate_sites(out, sites=2, cases=8, seed=11)
    return out


# --- determinism and layout --------------------------------------------------------------


def test_same_seed_gives_identical_bytes(export: Path, tmp_path: Path) -> None:
    generate_sites(tmp_path / "again", sites=2, cases=8, seed=11)
    generate_sites(tmp_path / "other", sites=2, cases=8, seed=12)

    first, again, other = _files(export), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    assert first["site-a/cases.csv"] != other["site-a/cases.csv"]
    assert first["site-a/images/ac00000-1.png"] != other["site-a/images/ac00000-1.png"]


def test_a_case_does_not_depend_on_the_other_cases(export: Path, tmp_path: Path) -> None:
    site = generate_site(tmp_path, site_index=1, cases=3, seed=11)

    alone = _rows(site)
    assert alone == _rows(export / "site-b")[:3]
    for row in alone:
        assert (site / row["image"]).read_bytes() == (export / "site-b" / row["image"]).read_bytes()


def test_site_folder_holds_images_masks_and_csv(tmp_path: Path) -> None:
    site = generate_site(tmp_path, site_index=2, cases=60, seed=3)
    profile = PROFILES[2]
    rows = _rows(site)

    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 60
    for row in rows:
        image = np.asarray(Image.open(site / row["image"]))
        mask = np.asarray(Image.open(site / row["mask"]))
        assert image.dtype == np.uint8
        assert image.shape == mask.shape == (profile.height, profile.width)
        assert set(np.unique(mask)) <= {0, 255}
        assert row["device"] == profile.name
        if row["pathology"] == "normal":
            assert not mask.any()
            assert row["birads"] == "1" and row["seed_x"] == "" and row["margin"] == ""
        else:
            assert mask[int(row["seed_y"]), int(row["seed_x"])] == 255
    views = Counter(row["patient_id"] for row in rows)
    assert 0.05 <= sum(v == 2 for v in views.values()) / len(views) <= 0.4
    assert 0.02 <= sum(row["pathology"] == "normal" for row in rows) / len(rows) <= 0.25
    for patient, count in views.items():
        same = [r for r in rows if r["patient_id"] == patient]
        lexicon = {(r["pathology"], r["birads"], r["shape"], r["margin"]) for r in same}
        assert len(lexicon) == 1, f"views of {patient} disagree"
        assert len({r["image"] for r in same}) == count


def test_a_second_batch_holds_new_patients_of_the_same_sites(export: Path, tmp_path: Path) -> None:
    """A later export: same site folders and scanners, new patients, none of batch 1's images."""
    generate_sites(tmp_path, sites=2, cases=8, seed=11, batch=2)

    for site in ("site-a", "site-b"):
        first, second = _rows(export / site), _rows(tmp_path / site)
        assert len(second) == 8
        assert {r["patient_id"] for r in first}.isdisjoint({r["patient_id"] for r in second})
        assert second[0]["patient_id"] == f"{site[-1]}p10000"
        assert {r["device"] for r in first} == {r["device"] for r in second}
        old_images = {(export / site / r["image"]).read_bytes() for r in first}
        assert not old_images & {(tmp_path / site / r["image"]).read_bytes() for r in second}
    again = tmp_path / "again"
    generate_sites(again, sites=2, cases=8, seed=11, batch=2)
    assert _files(again / "site-a") == _files(tmp_path / "site-a")


def test_sharpness_makes_pathology_follow_the_lexicon_more_closely() -> None:
    """Sharper log-odds: the same terms, fewer benign-looking cancers (higher AUC ceiling)."""
    from sklearn.metrics import roc_auc_score

    def ceiling(sharpness: float) -> tuple[float, float]:
        rng = np.random.default_rng(5)
        drawn = [sample_lesion(rng, sharpness) for _ in range(3000)]
        y = [s.pathology is Pathology.MALIGNANT for s in drawn]
        return roc_auc_score(y, [s.p_malignant for s in drawn]), float(np.mean(y))

    (plain_auc, plain_share), (sharp_auc, sharp_share) = ceiling(1.0), ceiling(1.5)
    assert 0.93 < plain_auc < 0.96 and sharp_auc > plain_auc + 0.015
    assert abs(sharp_share - plain_share) < 0.05  # about a third malignant either way
    worst = _descriptors(Shape.IRREGULAR, Orientation.NOT_PARALLEL, (Margin.SPICULATED,))
    assert malignancy_probability(worst, 1.5) > malignancy_probability(worst)
    assert malignancy_probability(_descriptors(), 1.5) < malignancy_probability(_descriptors())


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda out: generate_sites(out, sites=0, cases=1, seed=0), "sites must be 1..26"),
        (lambda out: generate_sites(out, sites=27, cases=1, seed=0), "sites must be 1..26"),
        (lambda out: generate_sites(out, sites=1, cases=0, seed=0), "cases must be 1.."),
        (lambda out: generate_sites(out, sites=1, cases=1, seed=0, batch=0), "batch must be"),
        (lambda out: generate_sites(out, sites=1, cases=1, seed=-1), "seed must be"),
        (
            lambda out: generate_sites(out, sites=1, cases=1, seed=0, sharpness=0.0),
            "sharpness must lie",
        ),
        (lambda out: generate_site(out, site_index=26, cases=1, seed=0), "site_index must be"),
    ],
)
def test_bad_arguments_are_refused(
    tmp_path: Path, call: Callable[[Path], object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        call(tmp_path)
    assert not any(tmp_path.iterdir())


# --- the lexicon is rendered -----------------------------------------------------------


def test_not_parallel_lesions_are_taller_than_wide() -> None:
    upright = _descriptors(Shape.IRREGULAR, Orientation.NOT_PARALLEL, (Margin.SPICULATED,))
    for _, _, mask in _renders(upright) + _renders(_descriptors(orientation=upright.orientation)):
        rows, cols = ndimage.find_objects(mask.astype(np.uint8))[0]
        assert rows.stop - rows.start > cols.stop - cols.start
    for _, _, mask in _renders(_descriptors()):
        rows, cols = ndimage.find_objects(mask.astype(np.uint8))[0]
        assert rows.stop - rows.start < cols.stop - cols.start


def test_suspicious_margins_make_less_solid_outlines() -> None:
    def solidity(descriptors: Descriptors) -> list[float]:
        return [regionprops(m.astype(np.uint8))[0].solidity for _, _, m in _renders(descriptors)]

    smooth = solidity(_descriptors())
    spiculated = solidity(_descriptors(Shape.IRREGULAR, margin=(Margin.SPICULATED,)))
    angular = solidity(_descriptors(Shape.IRREGULAR, margin=(Margin.ANGULAR,)))
    assert min(smooth) > 0.95
    assert max(spiculated) < min(smooth) - 0.1
    assert max(angular) < min(smooth)


@pytest.mark.parametrize(
    ("echo", "low", "high"),
    [
        (EchoPattern.ANECHOIC, -255, -40),
        (EchoPattern.HYPOECHOIC, -255, -25),
        (EchoPattern.HYPERECHOIC, 20, 255),
    ],
)
def test_echo_pattern_is_relative_to_fat(echo: EchoPattern, low: float, high: float) -> None:
    for profile, image, mask in _renders(_descriptors(echo=echo)):
        interior = image[ndimage.binary_erosion(mask, iterations=2)].mean()
        assert low < interior - _fat_level(profile, image, mask) < high


def _below_and_beside(image: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """Mean grey below the lesion's left and right central quarters, and beside the lesion, in
    the rows just below it."""
    ys, xs = np.nonzero(mask)
    left, right = xs.min(), xs.max()
    quarter = (right - left) // 4
    rows = image[ys.max() + 3 : ys.max() + 3 + max(10, 2 * quarter)]
    beside = np.r_[
        max(0, left - 8 - 2 * quarter) : max(0, left - 8), right + 8 : right + 8 + 2 * quarter
    ]
    middle = (left + right) // 2
    return (
        float(rows[:, middle - quarter : middle].mean()),
        float(rows[:, middle + 1 : middle + 1 + quarter].mean()),
        float(rows[:, beside[beside < image.shape[1]]].mean()),
    )


@pytest.mark.parametrize(
    ("posterior", "low", "high"),
    [
        (PosteriorFeatures.SHADOWING, -255, -20),
        (PosteriorFeatures.ENHANCEMENT, 15, 255),
        (PosteriorFeatures.NONE, -15, 15),
    ],
)
def test_posterior_features_change_the_echoes_below(
    posterior: PosteriorFeatures, low: float, high: float
) -> None:
    for _, image, mask in _renders(_descriptors(echo=EchoPattern.ISOECHOIC, posterior=posterior)):
        left, right, beside = _below_and_beside(image, mask)
        assert low < (left + right) / 2 - beside < high


def test_combined_posterior_pattern_shadows_one_half_and_enhances_the_other() -> None:
    combined = _descriptors(echo=EchoPattern.ISOECHOIC, posterior=PosteriorFeatures.COMBINED)
    for _, image, mask in _renders(combined):
        left, right, _ = _below_and_beside(image, mask)
        assert abs(left - right) > 30


def test_speckle_is_fully_developed() -> None:
    rng = np.random.default_rng(5)
    envelope = speckle_envelope(rng, np.ones((256, 256), dtype=np.float32), PROFILES[0])

    assert envelope.mean() / envelope.std() == pytest.approx(1.913, abs=0.05)  # Rayleigh
    assert np.mean(envelope**2) == pytest.approx(1.0, abs=0.05)


# --- lesion size and margins at the image's resolution ----------------------------------

# The real sites' lesion boxes (largest component of each reader mask, bounding box over the
# image's longest side; quantiles 10/50/90 of width, then of height), measured on
# ../shared/data with ``_real_extents`` below:
#   .venv/bin/python -c "from tests.test_phantom import _real_extents; from pathlib import Path;
#   print(_real_extents(Path('../shared/data')))"
REAL_EXTENTS = {
    "busi": (511, (0.120, 0.312, 0.641), (0.078, 0.190, 0.435)),
    "bus_bra": (1493, (0.178, 0.341, 0.594), (0.112, 0.215, 0.385)),
    "breast_lesions_usg": (177, (0.133, 0.276, 0.560), (0.102, 0.201, 0.386)),
}


def _box_extent(mask: np.ndarray) -> tuple[float, float]:
    """Width and height of the largest component's bounding box over the longest image side."""
    labels, count = ndimage.label(mask)
    sizes = ndimage.sum(mask, labels, range(1, count + 1))
    rows, cols = ndimage.find_objects((labels == 1 + int(np.argmax(sizes))).astype(np.uint8))[0]
    side = max(mask.shape)
    return (cols.stop - cols.start) / side, (rows.stop - rows.start) / side


def _quantiles(values: list[float]) -> tuple[float, float, float]:
    q10, q50, q90 = np.quantile(values, [0.1, 0.5, 0.9])
    return round(float(q10), 3), round(float(q50), 3), round(float(q90), 3)


def _real_extents(root: Path) -> dict[str, tuple[int, tuple[float, ...], tuple[float, ...]]]:
    """:data:`REAL_EXTENTS`, measured again on the real sites' masks under ``root``."""
    masks = {
        "busi": [p for p in root.glob("busi/*/*_mask.png") if p.parent.name != "normal"],
        "bus_bra": list(root.glob("bus_bra/Masks/mask_*.png")),
        "breast_lesions_usg": list(root.glob("breast_lesions_usg/*/case*_tumor.png")),
    }
    measured = {}
    for site, paths in masks.items():
        boxes = []
        for path in sorted(paths):
            mask = np.asarray(Image.open(path).convert("L")) > 127
            if mask.any():
                boxes.append(_box_extent(mask))
        widths, heights = zip(*boxes, strict=True)
        measured[site] = (len(boxes), _quantiles(widths), _quantiles(heights))
    return measured


@pytest.mark.realdata
def test_the_cited_real_lesion_sizes_are_measured(real_data: Path) -> None:
    assert _real_extents(real_data) == REAL_EXTENTS


def test_lesion_sizes_follow_the_real_sites() -> None:
    """Phantom boxes over the longest side, drawn as the pipeline draws them, against the real
    sites' range: width quantiles within 0.04 of the real sites' span, heights a little taller
    (the lexicon's not-parallel masses stand upright more often than real ones)."""
    boxes = []
    for i in range(120):
        rng = np.random.default_rng([31, i])
        _, mask = render_case(rng, PROFILES[i % len(PROFILES)], lesion=sample_lesion(rng))
        boxes.append(_box_extent(mask))
    widths, heights = (_quantiles(v) for v in zip(*boxes, strict=True))
    real = list(REAL_EXTENTS.values())
    for k in range(3):
        real_w = [w[k] for _, w, _ in real]
        real_h = [h[k] for _, _, h in real]
        assert min(real_w) - 0.04 <= widths[k] <= max(real_w) + 0.04, (k, widths)
        assert min(real_h) - 0.04 <= heights[k] <= max(real_h) + 0.07, (k, heights)


def _outline(mask: np.ndarray) -> tuple[np.ndarray, object]:
    contour = max(find_contours(np.pad(mask, 1).astype(float), 0.5), key=len) - 1
    return contour, regionprops(mask.astype(np.uint8))[0]


def _outline_detail_px(mask: np.ndarray, orders: int = 6, bins: int = 360) -> float:
    """RMS (pixels) of the outline's radius about its moment ellipse beyond angular order
    ``orders``: what is left once shape and orientation are taken out."""
    contour, props = _outline(mask)
    cy, cx = props.centroid
    a, b = props.axis_major_length / 2, props.axis_minor_length / 2
    dy, dx = contour[:, 0] - cy, contour[:, 1] - cx
    major = dy * np.cos(props.orientation) + dx * np.sin(props.orientation)
    minor = -dy * np.sin(props.orientation) + dx * np.cos(props.orientation)
    index = ((np.arctan2(minor / b, major / a) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    radius = np.zeros(bins)
    np.maximum.at(radius, index, np.hypot(minor / b, major / a))
    seen = np.flatnonzero(radius > 0)
    radius = np.interp(np.arange(bins), seen, radius[seen], period=bins)
    spectrum = np.fft.rfft(radius)
    spectrum[: orders + 1] = 0
    return float(np.sqrt(np.mean(np.fft.irfft(spectrum, bins) ** 2)) * np.sqrt(a * b))


def _sharpest_corner_deg(mask: np.ndarray, chord_px: int = 8) -> float:
    """Largest turn of the outline's direction between chords ``chord_px`` long (degrees)."""
    contour, _ = _outline(mask)
    along = np.r_[0, np.cumsum(np.hypot(*np.diff(contour, axis=0).T))]
    steps = np.arange(int(along[-1]))
    points = np.c_[np.interp(steps, along, contour[:, 0]), np.interp(steps, along, contour[:, 1])]
    back = points - np.roll(points, chord_px, axis=0)
    ahead = np.roll(points, -chord_px, axis=0) - points
    cosine = np.sum(back * ahead, axis=1) / (np.hypot(*back.T) * np.hypot(*ahead.T))
    return float(np.degrees(np.arccos(np.clip(cosine, -1, 1))).max())


def _edge_width_px(image: np.ndarray, mask: np.ndarray) -> float:
    """Lesion-to-surround contrast over the steepest slope of the mean grey profile across
    the traced boundary (by signed distance): about the 12-88 % width of the transition."""
    inside = ndimage.distance_transform_edt(mask)
    outside = ndimage.distance_transform_edt(~mask)
    distance = np.round(np.where(mask, 0.5 - inside, outside - 0.5)).astype(int)
    profile = np.array([image[distance == d].mean() for d in range(-8, 9)])
    core = image[inside >= 0.6 * inside.max()].mean()
    ring = image[(outside > 12) & (outside <= 20)].mean()
    slope = np.abs(np.diff(ndimage.uniform_filter1d(profile, 3))).max()
    return float(abs(ring - core) / slope)


def _masks(descriptors: Descriptors) -> list[np.ndarray]:
    return [mask for _, _, mask in _renders(descriptors, count=8)]


def test_microlobulations_are_wider_than_a_few_pixels() -> None:
    """Microlobulated vs circumscribed ovals: detail beyond the 6th angular order >= 1.5 px
    RMS (a resolution cell), and notches sharper than any smooth outline's turn."""
    smooth = _masks(_descriptors())
    lobed = _masks(_descriptors(margin=(Margin.MICROLOBULATED,)))
    assert max(map(_outline_detail_px, smooth)) < 0.5 < 1.5 < min(map(_outline_detail_px, lobed))
    assert max(map(_sharpest_corner_deg, smooth)) + 40 < min(map(_sharpest_corner_deg, lobed))


def test_spicules_and_angles_are_drawn_large_enough_to_see() -> None:
    """Spiculated and angular vs circumscribed irregular masses: sharper corners than any
    circumscribed outline, and spicules several pixels large (median detail >= 4 px RMS)."""
    smooth = _masks(_descriptors(Shape.IRREGULAR))
    spiculated = _masks(_descriptors(Shape.IRREGULAR, margin=(Margin.SPICULATED,)))
    angular = _masks(_descriptors(Shape.IRREGULAR, margin=(Margin.ANGULAR,)))
    smooth_corner = max(map(_sharpest_corner_deg, smooth))
    assert smooth_corner < min(map(_sharpest_corner_deg, angular))
    assert smooth_corner + 60 < min(map(_sharpest_corner_deg, spiculated))
    assert np.median([_outline_detail_px(m) for m in spiculated]) >= 4.0


def test_indistinct_margins_blur_over_several_pixels() -> None:
    """The grey transition across an indistinct margin is >= 6 px wide, against the point
    spread function's 2-4 px for circumscribed margins of the same scanners."""
    sharp = [_edge_width_px(i, m) for _, i, m in _renders(_descriptors(), count=8)]
    blurred = [
        _edge_width_px(i, m)
        for _, i, m in _renders(_descriptors(margin=(Margin.INDISTINCT,)), count=8)
    ]
    assert max(sharp) < 4.0 and min(blurred) >= 6.0


def test_round_and_oval_differ_in_ellipse_aspect() -> None:
    def aspect(mask: np.ndarray) -> float:
        props = regionprops(mask.astype(np.uint8))[0]
        return props.axis_major_length / props.axis_minor_length

    assert max(map(aspect, _masks(_descriptors(Shape.ROUND)))) < 1.2
    assert min(map(aspect, _masks(_descriptors(Shape.OVAL)))) > 1.35


# --- malignancy ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lesions() -> list[LesionSpec]:
    rng = np.random.default_rng(77)
    return [sample_lesion(rng) for _ in range(3000)]


def _malignant_share(lesions: list[LesionSpec], having: Callable[[Descriptors], bool]) -> float:
    chosen = [s.pathology is Pathology.MALIGNANT for s in lesions if having(s.descriptors)]
    assert len(chosen) >= 50
    return float(np.mean(chosen))


def test_malignancy_follows_the_lexicon(lesions: list[LesionSpec]) -> None:
    def share(having: Callable[[Descriptors], bool]) -> float:
        return _malignant_share(lesions, having)

    assert 0.28 <= share(lambda d: True) <= 0.42
    assert share(lambda d: Margin.SPICULATED in d.margin) > 0.75
    assert (
        share(lambda d: d.shape is Shape.IRREGULAR) > 0.5 > share(lambda d: d.shape is Shape.OVAL)
    )
    not_parallel = share(lambda d: d.orientation is Orientation.NOT_PARALLEL)
    assert not_parallel > share(lambda d: d.orientation is Orientation.PARALLEL) + 0.3
    posterior = {p: share(lambda d, p=p: d.posterior_features is p) for p in PosteriorFeatures}
    assert (
        posterior[PosteriorFeatures.SHADOWING]
        > posterior[PosteriorFeatures.NONE]
        > posterior[PosteriorFeatures.ENHANCEMENT]
    )
    benign_looking = share(
        lambda d: (
            d.margin == (Margin.CIRCUMSCRIBED,)
            and d.shape is Shape.OVAL
            and d.orientation is Orientation.PARALLEL
        )
    )
    assert benign_looking < 0.05


def test_birads_rises_with_the_malignant_share(lesions: list[LesionSpec]) -> None:
    order = [BiRads.B2, BiRads.B3, BiRads.B4A, BiRads.B4B, BiRads.B4C, BiRads.B5]
    shares = [
        _malignant_share(lesions, lambda d, b=b: birads_for(malignancy_probability(d)) is b)
        for b in order
    ]
    assert shares == sorted(shares)
    assert shares[0] < 0.02 and shares[-1] > 0.9


def test_malignancy_probability_anchors() -> None:
    benign = malignancy_probability(_descriptors())
    worst = _descriptors(
        Shape.IRREGULAR,
        Orientation.NOT_PARALLEL,
        (Margin.SPICULATED, Margin.ANGULAR),
        posterior=PosteriorFeatures.SHADOWING,
    )
    assert 0.005 < benign < 0.04
    assert malignancy_probability(worst) > 0.95
    assert malignancy_probability(_descriptors(echo=EchoPattern.ANECHOIC)) < benign
    with pytest.raises(ValueError, match="every lexicon term"):
        malignancy_probability(Descriptors(shape=Shape.OVAL))


@pytest.mark.parametrize(
    ("p", "category"),
    [
        (0.004, BiRads.B2),
        (0.02, BiRads.B3),
        (0.021, BiRads.B4A),
        (0.5, BiRads.B4B),
        (0.94, BiRads.B4C),
        (0.96, BiRads.B5),
    ],
)
def test_birads_bands(p: float, category: BiRads) -> None:
    assert birads_for(p) is category


# --- sites -----------------------------------------------------------------------------


def _lateral_correlation(profile: ScannerProfile) -> float:
    """Correlation of neighbouring grey levels 3 columns apart in fat: the speckle's width."""
    image, _ = render_case(np.random.default_rng(8), profile, lesion=None)
    rows = slice(round(2.6 / profile.pixel_spacing_mm), round(4.5 / profile.pixel_spacing_mm))
    fat = image[rows].astype(float)
    fat -= fat.mean(axis=1, keepdims=True)
    return float(np.sum(fat[:, 3:] * fat[:, :-3]) / np.sum(fat * fat))


def test_scanner_profiles_make_sites_differ() -> None:
    assert len(PROFILES) >= 3
    for profile in PROFILES:
        TypeAdapter(DeviceName).validate_python(profile.name)
    by_beam_width = sorted(PROFILES, key=lambda p: p.lateral_sigma_px)
    correlations = [_lateral_correlation(p) for p in by_beam_width]
    assert correlations == sorted(correlations)
    assert correlations[-1] - correlations[0] > 0.3
    assert len({(p.pixel_spacing_mm, p.height, p.width) for p in PROFILES}) == len(PROFILES)


# --- importer --------------------------------------------------------------------------


def test_importer_yields_schema_cases(export: Path) -> None:
    site = export / "site-a"
    candidates = list(importer(site))

    assert importer.kind == "phantom" and importer.site_id_for(site) == "site-a"
    assert len(candidates) == 8
    for candidate in candidates:
        assert candidate.problem is None
        assert candidate.image_path.is_file()
        assert all(p.is_file() for p in candidate.mask_paths)
        width, height = Image.open(candidate.image_path).size
        case = Case(
            **candidate.fields,
            site_id=importer.site_id_for(site),
            image=candidate.source_key,
            image_sha256="0" * 64,
            source_sha256="0" * 64,
            width=width,
            height=height,
            masks=tuple(str(p.relative_to(site)) for p in candidate.mask_paths),
            ingested_at=datetime.now(UTC),
        )
        assert case.device == PROFILES[0].name
        assert (case.seed is None) == (case.pathology is Pathology.NORMAL)
        if case.is_lesion:
            assert case.descriptors.shape is not None and case.descriptors.margin


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("margin", "circumscribed&wobbly", "unknown-label"),
        ("pathology", "suspicious", "unknown-label"),
        ("age", "old", "invalid-field"),
        ("seed_x", "", "invalid-field"),
        ("image", "../elsewhere.png", "invalid-field"),
    ],
)
def test_a_bad_row_becomes_a_problem(
    export: Path, tmp_path: Path, column: str, value: str, reason: str
) -> None:
    site = tmp_path / "site-a"
    shutil.copytree(export / "site-a", site)
    rows = _rows(site)
    lesion_row = next(i for i, r in enumerate(rows) if r["pathology"] != "normal")
    rows[lesion_row][column] = value
    with (site / "cases.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

    candidates = list(importer(site))

    assert len(candidates) == len(rows)
    bad = candidates.pop(lesion_row)
    assert bad.problem is not None and bad.problem.reason == reason
    assert bad.problem.detail.startswith(column)
    assert all(c.problem is None for c in candidates)


def test_importer_needs_cases_csv(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"cases\.csv"):
        importer(tmp_path)
