"""The console's analysis path: what it imports, and the numpy morphology it runs on.

The console answers a click in milliseconds only if its process does not first load torch,
scipy, scikit-learn, scikit-image or matplotlib (together about a second). The numpy
replacements in :mod:`models._morphology` must give the results the scipy/scikit-image
originals gave, so descriptors and masks do not change with the speed-up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import ConvexHull
from skimage import measure
from skimage.feature import graycomatrix

from models import _morphology as morph

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "scipy", "sklearn", "skimage", "matplotlib")


def _blobs(seed: int, n: int = 12, shape: tuple[int, int] = (60, 80)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [ndimage.gaussian_filter(rng.random(shape), 2.0) > 0.5 for _ in range(n)]


def test_label_and_fill_holes_match_scipy() -> None:
    for mask in _blobs(0):
        labels, count = morph.label(mask)
        expected, expected_count = ndimage.label(mask)
        assert count == expected_count
        assert np.array_equal(labels, expected)
        assert np.array_equal(morph.fill_holes(mask), ndimage.binary_fill_holes(mask))
        sizes = np.bincount(expected.ravel())[1:]
        largest = expected == 1 + int(np.argmax(sizes))  # the first of equal sizes
        assert np.array_equal(morph.largest_component(mask), largest)
    ring = np.zeros((9, 9), bool)
    ring[2:7, 2:7], ring[4, 4] = True, False
    assert morph.fill_holes(ring).all() == ring[2:7, 2:7].all() and morph.fill_holes(ring)[4, 4]
    assert not morph.largest_component(np.zeros((4, 4), bool)).any()
    assert morph.label(np.zeros((5, 5), bool))[1] == 0


def test_the_component_at_a_point_is_scipys_component_there_or_nearest() -> None:
    rng = np.random.default_rng(3)
    for mask in _blobs(4):
        labels, _ = ndimage.label(mask)
        ys, xs = np.nonzero(labels)
        for x, y in rng.integers(0, (80, 60), size=(8, 2)):
            nearest = int(np.argmin((xs - x) ** 2 + (ys - y) ** 2))  # first in raster order
            expected = labels == labels[ys[nearest], xs[nearest]]
            assert np.array_equal(morph.component_at(mask, (int(x), int(y))), expected)
    assert not morph.component_at(np.zeros((5, 5), bool), (2, 2)).any()


def test_square_dilation_and_depth_match_the_chessboard_distance() -> None:
    for mask in _blobs(1, n=6):
        outside = ndimage.distance_transform_cdt(~mask, metric="chessboard")
        inside = ndimage.distance_transform_cdt(mask, metric="chessboard")
        for k in (0, 1, 2, 5, 11):
            assert np.array_equal(morph.square_dilate(mask, k), outside <= k)
            assert np.array_equal(~morph.square_dilate(~mask, k), inside > k)
        assert morph.max_chessboard_depth(mask) == inside.max()
        assert morph.max_chessboard_depth(mask, limit=2) == min(inside.max(), 2)


def test_gaussian_uniform_hull_moments_and_glcm_match_the_originals() -> None:
    rng = np.random.default_rng(2)
    image = rng.random((37, 53)) * 255
    for sigma in (1.0, 2.3, 12.0):  # 12: the kernel is wider than the array, taps fold twice
        np.testing.assert_allclose(
            morph.gaussian_filter(image, sigma), ndimage.gaussian_filter(image, sigma), rtol=1e-12
        )
    values = rng.random(64)
    np.testing.assert_allclose(
        morph.uniform_filter1d_wrap(values, 17),
        ndimage.uniform_filter1d(values, 17, mode="wrap"),
        rtol=1e-12,
    )
    points = rng.normal(size=(300, 2))
    hull = ConvexHull(points)
    area, perimeter = morph.convex_hull(points)
    assert area == pytest.approx(hull.volume) and perimeter == pytest.approx(hull.area)
    assert morph.convex_hull(np.column_stack([np.arange(5.0), np.arange(5.0)])) is None
    mask = _blobs(3, n=1)[0]
    props = measure.regionprops(mask.astype(np.uint8))[0]
    ours = morph.region_moments(mask)
    assert ours.centroid == pytest.approx(props.centroid)
    assert ours.axis_major_length == pytest.approx(props.axis_major_length)
    assert ours.axis_minor_length == pytest.approx(props.axis_minor_length)
    assert ours.orientation == pytest.approx(props.orientation)
    assert ours.eccentricity == pytest.approx(props.eccentricity)
    assert ours.mu20 == pytest.approx(props.moments_central[2, 0])
    levels = rng.integers(0, 17, size=(30, 40)).astype(np.uint8)
    expected = graycomatrix(levels, [1], [0, np.pi / 2], levels=17, symmetric=True)
    assert np.array_equal(morph.glcm(levels, 17), expected.astype(np.float64))


def test_marching_squares_gives_skimage_contours() -> None:
    for mask in _blobs(4, n=8):
        smooth = ndimage.gaussian_filter(np.pad(mask, 2).astype(np.float64), 1.0)
        ours = morph.find_contours(smooth, 0.5)
        theirs = measure.find_contours(smooth, 0.5)
        assert len(ours) == len(theirs)
        longest = max(ours, key=len)
        expected = max(theirs, key=len)
        assert longest.shape == expected.shape
        np.testing.assert_allclose(longest, expected, atol=1e-12)  # same start, same order


def test_marching_squares_gives_every_skimage_contour_open_ones_included() -> None:
    """Unpadded smooth noise: contours that end at the array's edge, several per image."""
    rng = np.random.default_rng(9)
    for _ in range(20):
        image = ndimage.gaussian_filter(rng.random((30, 40)), 1.5)
        ours = morph.find_contours(image, 0.5)
        theirs = measure.find_contours(image, 0.5)
        assert len(ours) == len(theirs) > 1
        for got, expected in zip(ours, theirs, strict=True):
            assert got.shape == expected.shape
            np.testing.assert_allclose(got, expected, atol=1e-12)  # same order, same starts


def test_gaussian_filter_at_the_reflection_limits() -> None:
    """Arrays as short as the kernel radius (one reflection) and shorter (the taps fold)."""
    rng = np.random.default_rng(8)
    for shape in ((4, 9), (3, 5), (5, 4), (1, 7), (70, 129)):
        image = rng.random(shape) * 255
        np.testing.assert_allclose(
            morph.gaussian_filter(image, 1.0), ndimage.gaussian_filter(image, 1.0), rtol=1e-12
        )


def test_console_analyze_loads_no_heavy_library(tiny_world, tmp_path: Path) -> None:
    """``sonofed console analyze`` end to end (rules descriptors included) in a fresh process."""
    from data_registry.registry import Registry

    registry = Registry(tiny_world.registries[0])
    entry = next(e for e in registry.entries if e.case.is_lesion)
    image = tiny_world.registries[0] / entry.case.image
    truth = tiny_world.registries[0] / entry.case.masks[0]
    seed = entry.case.seed
    script = textwrap.dedent(
        f"""
        import json, sys
        import numpy as np
        from data_registry.images import read_grey
        from pathlib import Path
        from sonofed.cli import main
        code = main(["console", "analyze", "--model", {str(tiny_world.bundle)!r},
                     "--image", {str(image)!r}, "--seed", "{seed.x},{seed.y}",
                     "--out", {str(tmp_path / "report")!r}])
        from models.analysis import descriptors_from_rules
        mask = np.asarray(read_grey(Path({str(truth)!r}))) > 0
        rules = descriptors_from_rules(read_grey(Path({str(image)!r})), mask)
        print(json.dumps({{"code": code, "rules": sorted(rules),
                           "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] == 0
    assert result["loaded"] == []
    assert "shape" in result["rules"]  # the rules ran, on numpy alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc settings")
def test_the_console_process_keeps_freed_memory_for_the_next_lesion() -> None:
    """Three 1 MiB arrays freed together: glibc trims them off the heap, and every round
    faults their pages in again, until the analyser's setting keeps them."""
    script = textwrap.dedent(
        """
        import resource, numpy as np
        from models.heap import keep_freed_memory

        def faults():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            for _ in range(30):
                arrays = [np.ones(2**17) for _ in range(3)]
                del arrays
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

        faults()
        default = faults()
        took = keep_freed_memory()
        faults()
        print(default, faults(), took)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    default, kept, took = result.stdout.split()
    if took != "True":
        pytest.skip("this C library has no mallopt")
    assert int(default) > 30 * 256  # at least a page fault per 4 KiB of one array per round
    assert int(kept) < int(default) // 10
