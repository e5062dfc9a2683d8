"""Numpy-only image morphology for the console (no scipy, no scikit-image).

The console analyses a lesion with the ONNX network and a few classic image measures; loading
scipy and scikit-image for them costs more time than the analysis itself. These are vectorised
numpy equivalents of the few functions it needs, checked against the originals in the tests:

- :func:`label` (``scipy.ndimage.label``, 4-connectivity, same numbering),
- :func:`component_at` (the component of that labelling under a point, or nearest to it),
- :func:`fill_holes` (``scipy.ndimage.binary_fill_holes``) and :func:`largest_component`,
- :func:`gaussian_filter` (``scipy.ndimage.gaussian_filter``, ``mode="reflect"``),
- :func:`square_dilate` and :func:`max_chessboard_depth` (thresholds and maximum of
  ``scipy.ndimage.distance_transform_cdt(metric="chessboard")``),
- :func:`uniform_filter1d_wrap` (``scipy.ndimage.uniform_filter1d(mode="wrap")``),
- :func:`find_contours` (``skimage.measure.find_contours``: marching squares, same points, the
  start of a closed contour may differ),
- :func:`convex_hull` (area and perimeter, as ``scipy.spatial.ConvexHull``),
- :func:`region_moments` (centroid, axis lengths, orientation, eccentricity of
  ``skimage.measure.regionprops``),
- :func:`glcm` (``skimage.feature.graycomatrix`` for distance 1, angles 0 and 90°, symmetric).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "MIN_OUTLINE_PIXELS",
    "RegionMoments",
    "component_at",
    "convex_hull",
    "fill_holes",
    "find_contours",
    "gaussian_filter",
    "glcm",
    "label",
    "largest_component",
    "max_chessboard_depth",
    "region_moments",
    "square_dilate",
    "uniform_filter1d_wrap",
]

MIN_OUTLINE_PIXELS = 9
"""Fewest lesion pixels that have an outline to measure."""


def _runs(mask: NDArray[np.bool_]) -> tuple[NDArray, NDArray, NDArray]:
    """Horizontal runs of True pixels in raster order: (row, start column, end column)."""
    h, w = mask.shape
    flat = np.zeros(h * (w + 1) + 1, dtype=bool)  # a False before the rows and after each
    flat[1:].reshape(h, w + 1)[:, :w] = mask
    edges = np.flatnonzero(flat[1:] != flat[:-1])  # every run's first pixel, then its end
    rows, starts = np.divmod(edges[0::2], w + 1)
    return rows, starts, edges[1::2] - rows * (w + 1)


def _run_roots(mask: NDArray[np.bool_]) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """The mask's runs (:func:`_runs`) and, per run, the lowest-numbered run of its 4-connected
    component (union-find over the runs that overlap in neighbouring rows)."""
    rows, starts, ends = _runs(mask)
    n = rows.size
    stride = mask.shape[1] + 1
    start_key = rows * stride + starts
    end_key = rows * stride + ends
    # runs of the row above that overlap each run: a contiguous index range [lo, hi)
    lo = np.searchsorted(end_key, (rows - 1) * stride + starts, side="right")
    hi = np.searchsorted(start_key, (rows - 1) * stride + ends, side="left")
    counts = np.maximum(hi - lo, 0)
    below = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    above = np.repeat(lo, counts) + offsets
    parent = np.arange(n)
    while below.size:
        root_a, root_b = parent[above], parent[below]
        if np.array_equal(root_a, root_b):
            break
        low = np.minimum(root_a, root_b)
        np.minimum.at(parent, root_a, low)
        np.minimum.at(parent, root_b, low)
        while True:  # pointer jumping: every run points at its root
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return rows, starts, ends, parent


def label(mask: NDArray) -> tuple[NDArray[np.int32], int]:
    """Label the 4-connected components of a 2-D mask (numbered in raster order from 1).

    Returns:
        ``(labels, count)`` as ``scipy.ndimage.label`` with its default structure.
    """
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows, starts, ends, parent = _run_roots(mask)
    if rows.size == 0:
        return np.zeros((h, w), dtype=np.int32), 0
    roots, run_label = np.unique(parent, return_inverse=True)
    run_label = run_label.astype(np.float64) + 1.0
    flat = np.bincount(rows * w + starts, weights=run_label, minlength=h * w + 1)
    flat -= np.bincount(rows * w + ends, weights=run_label, minlength=h * w + 1)
    labels = np.rint(np.cumsum(flat[:-1])).astype(np.int32).reshape(h, w)
    return labels, int(roots.size)


def component_at(mask: NDArray, point: tuple[int, int]) -> NDArray[np.bool_]:
    """The 4-connected component of ``mask`` under ``point`` ``(x, y)``, or else the one holding
    the mask pixel nearest to it (the first in raster order on a tie), as
    ``label(mask) == label at that pixel``; all False for an empty mask.

    Only the chosen component's pixels are written: the cost follows the lesion, not the array.
    """
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends, parent = _run_roots(mask)
    if rows.size == 0:
        return np.zeros(mask.shape, dtype=bool)
    x, y = point
    dx = np.maximum(np.maximum(starts - x, x - (ends - 1)), 0)  # to the run's nearest pixel
    nearest = int(np.argmin((rows - y) ** 2 + dx**2))
    return _paint_runs(mask.shape, rows, starts, ends, np.flatnonzero(parent == parent[nearest]))


def _paint_runs(shape: tuple[int, int], rows, starts, ends, chosen) -> NDArray[np.bool_]:
    """A mask of the ``chosen`` runs only (cost: their pixels, not the array's)."""
    h, w = shape
    out = np.zeros(h * w, dtype=bool)
    lengths = ends[chosen] - starts[chosen]
    first = rows[chosen] * w + starts[chosen]
    within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[np.repeat(first, lengths) + within] = True
    return out.reshape(h, w)


def fill_holes(mask: NDArray) -> NDArray[np.bool_]:
    """Fill the holes of a 2-D mask: background regions (4-connected) that do not reach the edge."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    rows, starts, ends, parent = _run_roots(~mask)
    at_edge = (rows == 0) | (rows == h - 1) | (starts == 0) | (ends == w)
    holes = ~np.isin(parent, parent[at_edge])
    if not holes.any():
        return mask.copy()
    return mask | _paint_runs((h, w), rows, starts, ends, np.flatnonzero(holes))


def largest_component(mask: NDArray) -> NDArray[np.bool_]:
    """The mask's largest 4-connected component (the first in raster order on a tie)."""
    mask = np.asarray(mask, dtype=bool)
    rows, starts, ends, parent = _run_roots(mask)
    if rows.size == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(parent, weights=ends - starts, minlength=rows.size)
    return _paint_runs(mask.shape, rows, starts, ends, np.flatnonzero(parent == sizes.argmax()))


def _gaussian_kernel(sigma: float, truncate: float = 4.0) -> NDArray[np.float64]:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * x**2 / sigma**2)
    return weights / weights.sum()


_BLOCK = 64
"""Output rows per block of the banded filter product."""


@functools.lru_cache(maxsize=32)
def _gaussian_band(sigma: float) -> NDArray[np.float64]:
    """The banded matrix of :func:`_correlate_rows` for a Gaussian of ``sigma`` (read-only)."""
    weights = _gaussian_kernel(sigma)
    radius = len(weights) // 2
    band = np.zeros((_BLOCK, _BLOCK + 2 * radius))
    for i in range(_BLOCK):
        band[i, i : i + 2 * radius + 1] = weights
    band.flags.writeable = False
    return band


def _correlate_rows(values: NDArray[np.float64], band: NDArray[np.float64]) -> NDArray[np.float64]:
    """Correlate along axis 0 with the symmetric kernel of ``band``, reflect mode, as blocked
    products.

    Every block of output rows reads the block's rows plus ``radius`` on each side of the
    padded input (scipy's ``reflect`` is numpy's ``symmetric``), through one small banded
    matrix shared by all blocks: BLAS work proportional to the kernel, not to the image.
    """
    radius = (band.shape[1] - _BLOCK) // 2
    n, m = values.shape
    blocks = -(-n // _BLOCK)
    if radius <= n:  # one reflection each side (np.pad's generality costs more than the filter)
        padded = np.empty((blocks * _BLOCK + 2 * radius, m))
        padded[:radius] = values[:radius][::-1]
        padded[radius : radius + n] = values
        padded[radius + n : 2 * radius + n] = values[::-1][:radius]
        padded[2 * radius + n :] = 0.0  # read only by the rows cut off below
    else:
        padded = np.pad(values, [(radius, radius + blocks * _BLOCK - n), (0, 0)], mode="symmetric")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (_BLOCK + 2 * radius, m))
    out = np.matmul(band, windows[::_BLOCK, 0])
    return out.reshape(blocks * _BLOCK, m)[:n]


def gaussian_filter(image: NDArray, sigma: float) -> NDArray[np.float64]:
    """Gaussian blur of a 2-D array (``scipy.ndimage.gaussian_filter``, reflect mode, truncate 4)."""
    values = np.asarray(image, dtype=np.float64)
    band = _gaussian_band(float(sigma))
    rows = _correlate_rows(values, band)
    return np.ascontiguousarray(_correlate_rows(np.ascontiguousarray(rows.T), band).T)


def uniform_filter1d_wrap(values: NDArray, size: int) -> NDArray[np.float64]:
    """Circular moving average of odd ``size`` (``uniform_filter1d(mode="wrap")``)."""
    values = np.asarray(values, dtype=np.float64)
    half = size // 2
    padded = np.concatenate([values[-half:], values, values[:half]]) if half else values
    return np.convolve(padded, np.full(size, 1.0 / size), mode="valid")


def _dilate_axis0(values: NDArray[np.bool_], k: int) -> NDArray[np.bool_]:
    """OR over the window ``[i - k, i + k]`` along axis 0 (outside the array: False).

    The array is padded with ``k`` False rows on each side; ORing it with itself shifted by
    1, 2, 4, ... rows leaves in row ``j`` the OR of the ``span`` rows from ``j``, and one more
    shifted OR widens that to the ``2k + 1`` rows of the window: ~log2(k) passes over booleans.
    """
    n = values.shape[0]
    width = 2 * k + 1
    acc = np.zeros((n + 2 * k, *values.shape[1:]), dtype=bool)
    acc[k : k + n] = values
    span = 1
    while 2 * span <= width:
        acc[:-span] |= acc[span:]
        span *= 2
    if span < width:
        return acc[:n] | acc[width - span : width - span + n]
    return acc[:n].copy()


def square_dilate(mask: NDArray, k: int) -> NDArray[np.bool_]:
    """Pixels within chessboard distance ``k`` of a True pixel (a (2k+1)-square dilation).

    Outside the array counts as False, so ``~square_dilate(~m, k)`` is where
    ``distance_transform_cdt(m, metric="chessboard") > k``.
    """
    out = np.asarray(mask, dtype=bool)
    if k <= 0:
        return out.copy()
    rows = _dilate_axis0(out, k)
    return np.ascontiguousarray(_dilate_axis0(rows.T, k).T)


def max_chessboard_depth(mask: NDArray, limit: int | None = None) -> int:
    """Largest chessboard distance of a True pixel to a False one inside the array (0 if none).

    Args:
        mask: 2-D boolean array.
        limit: when given, the answer is ``min(depth, limit)`` (fewer dilations).
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any() or mask.all():
        return 0
    high = max(mask.shape) if limit is None else max(int(limit), 1)
    if limit is not None and (~square_dilate(~mask, high - 1)).any():
        return high
    low = 0  # the depth exceeds low and does not exceed high
    while high - low > 1:
        mid = (low + high) // 2
        if (~square_dilate(~mask, mid)).any():
            low = mid
        else:
            high = mid
    return high


def _crossing(low: NDArray[np.float64], high: NDArray[np.float64], level: float) -> NDArray:
    """Where ``level`` lies between the values at an edge's two ends (0 at the first, 1 at the
    second; 0 when they are equal)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(high == low, 0.0, (level - low) / (high - low))


def find_contours(image: NDArray, level: float) -> list[NDArray[np.float64]]:
    """Iso-contours of a 2-D array at ``level`` by marching squares (``(row, col)`` points).

    The points and their connectivity are those of ``skimage.measure.find_contours`` (low
    values fully connected); a closed contour repeats its first point at the end.
    """
    img = np.asarray(image, dtype=np.float64)
    h, w = img.shape
    if h < 2 or w < 2:
        return []
    ul, ur = img[:-1, :-1] > level, img[:-1, 1:] > level
    ll, lr = img[1:, :-1] > level, img[1:, 1:] > level
    case = ul.astype(np.int8) + 2 * ur + 4 * ll + 8 * lr
    # edge ids: top = horizontal edge (r, c), bottom = horizontal (r + 1, c),
    # left = vertical edge (r, c), right = vertical (r, c + 1); vertical ids are offset
    nh = h * (w - 1)
    r, c = np.nonzero((case != 0) & (case != 15))
    k = case[r, c]
    top = r * (w - 1) + c
    bottom = (r + 1) * (w - 1) + c
    left = nh + r * w + c
    right = nh + r * w + c + 1
    table = {  # case -> segments as pairs of (edge name) following skimage's orientation
        1: [("top", "left")],
        2: [("right", "top")],
        3: [("right", "left")],
        4: [("left", "bottom")],
        5: [("top", "bottom")],
        6: [("right", "top"), ("left", "bottom")],  # saddle: low values fully connected
        7: [("right", "bottom")],
        8: [("bottom", "right")],
        9: [("top", "left"), ("bottom", "right")],  # saddle: low values fully connected
        10: [("bottom", "top")],
        11: [("bottom", "left")],
        12: [("left", "right")],
        13: [("top", "right")],
        14: [("left", "top")],
    }
    ids = {"top": top, "bottom": bottom, "left": left, "right": right}
    seg_from, seg_to, seg_order = [], [], []
    order = r * (w - 1) + c
    for code, segments in table.items():
        sel = k == code
        if not sel.any():
            continue
        for j, (a, b) in enumerate(segments):
            seg_from.append(ids[a][sel])
            seg_to.append(ids[b][sel])
            seg_order.append(order[sel] * 2 + j)
    if not seg_from:
        return []
    src = np.concatenate(seg_from)
    dst = np.concatenate(seg_to)
    sort = np.argsort(np.concatenate(seg_order), kind="stable")
    src, dst = src[sort], dst[sort]
    out = []
    for path in _segment_paths(src, dst, nh + h * w):
        e = np.append(src[path], dst[path[-1]])  # the path's edges, its end included
        horizontal = e < nh
        pts = np.empty((e.size, 2))
        hr, hc = np.divmod(e[horizontal], w - 1)
        pts[horizontal, 0] = hr
        pts[horizontal, 1] = hc + _crossing(img[hr, hc], img[hr, hc + 1], level)
        vr, vc = np.divmod(e[~horizontal] - nh, w)
        pts[~horizontal, 0] = vr + _crossing(img[vr, vc], img[vr + 1, vc], level)
        pts[~horizontal, 1] = vc
        out.append(pts)
    return out


def _segment_paths(src: NDArray, dst: NDArray, n_edges: int) -> list[list[int]]:
    """Chain the marching-squares segments ``src[i] → dst[i]`` (in scan order) into contours.

    Every edge starts at most one segment and ends at most one, so the segments form open paths
    and cycles. They come out in the order of their first segment in scan order, each as its
    segment indices: an open path from where no segment leads in, a cycle from the segment after
    its last one in scan order (where scikit-image starts it).
    """
    n = src.size
    lookup = np.full(n_edges + 1, -1, dtype=np.int64)
    lookup[src] = np.arange(n)
    following = lookup[dst]
    led_into = np.zeros(n, dtype=bool)
    led_into[following[following >= 0]] = True
    nxt = following.tolist()
    done = bytearray(n)
    paths: list[tuple[int, list[int]]] = []
    for head in np.flatnonzero(~led_into).tolist():  # open contours
        path = [head]
        done[head] = 1
        while (head := nxt[head]) >= 0:
            path.append(head)
            done[head] = 1
        paths.append((min(path), path))
    for first in range(n):  # the rest are closed
        if done[first]:
            continue
        path = [first]
        done[first] = 1
        node = nxt[first]
        while node != first:
            path.append(node)
            done[node] = 1
            node = nxt[node]
        at = path.index(max(path)) + 1
        paths.append((first, path[at:] + path[:at]))
    paths.sort(key=lambda item: item[0])
    return [path for _, path in paths]


def _hull_chain(points: NDArray[np.float64]) -> NDArray[np.float64]:
    """One monotone chain of the hull (left turns kept), by rounds of vectorised removal.

    A point that does not turn left between its current neighbours lies inside their hull, so
    all such points can be dropped at once; rounds repeat until every turn is a left turn.
    """
    chain = points
    while len(chain) > 2:
        a, b, c = chain[:-2], chain[1:-1], chain[2:]
        cross = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (
            c[:, 0] - a[:, 0]
        )
        drop = cross <= 0
        if not drop.any():
            break
        keep = np.ones(len(chain), dtype=bool)
        keep[1:-1] = ~drop
        chain = chain[keep]
    return chain


def convex_hull(points: NDArray) -> tuple[float, float] | None:
    """Area and perimeter of the convex hull of 2-D points; None when they are collinear."""
    pts = np.asarray(points, dtype=np.float64)
    pts = pts[np.lexsort((pts[:, 1], pts[:, 0]))]  # sorted by x then y, duplicates dropped
    pts = pts[np.concatenate([[True], np.any(pts[1:] != pts[:-1], axis=1)])]
    if len(pts) < 3:
        return None
    hull = np.vstack([_hull_chain(pts)[:-1], _hull_chain(pts[::-1])[:-1]])
    if len(hull) < 3:
        return None
    x, y = hull[:, 0], hull[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
    if area <= 1e-12:
        return None
    perimeter = float(np.sum(np.hypot(np.diff(x, append=x[0]), np.diff(y, append=y[0]))))
    return float(area), perimeter


@dataclass(frozen=True)
class RegionMoments:
    """Second-moment description of a binary region (``skimage.measure.regionprops`` terms).

    Attributes:
        centroid: ``(row, col)``.
        mu20: sum of squared row offsets; ``mu02``: of column offsets; ``mu11``: of products.
        axis_major_length: length of the major axis of the equal-moment ellipse.
        axis_minor_length: length of its minor axis.
        orientation: angle (radians) between the row axis and the major axis.
        eccentricity: of the ellipse.
    """

    centroid: tuple[float, float]
    mu20: float
    mu02: float
    mu11: float
    axis_major_length: float
    axis_minor_length: float
    orientation: float
    eccentricity: float


def region_moments(mask: NDArray) -> RegionMoments:
    """Centroid, central moments and the equal-moment ellipse of a binary region."""
    rows, cols = np.nonzero(mask)
    r0, c0 = float(rows.mean()), float(cols.mean())
    dr, dc = rows - r0, cols - c0
    m00 = float(rows.size)
    mu20, mu02, mu11 = float(np.sum(dr * dr)), float(np.sum(dc * dc)), float(np.sum(dr * dc))
    a, b, c = mu02 / m00, -mu11 / m00, mu20 / m00  # inertia tensor [[a, b], [b, c]]
    mean, spread = (a + c) / 2, math.hypot((a - c) / 2, b)
    evs = (max(mean + spread, 0.0), max(mean - spread, 0.0))
    if a - c == 0:
        orientation = math.pi / 4 if b < 0 else -math.pi / 4
    else:
        orientation = 0.5 * math.atan2(-2 * b, c - a)
    eccentricity = 0.0 if evs[0] == 0 else math.sqrt(1 - evs[1] / evs[0])
    return RegionMoments(
        centroid=(r0, c0),
        mu20=mu20,
        mu02=mu02,
        mu11=mu11,
        axis_major_length=4 * math.sqrt(evs[0]),
        axis_minor_length=4 * math.sqrt(evs[1]),
        orientation=orientation,
        eccentricity=eccentricity,
    )


def glcm(levels: NDArray, n_levels: int) -> NDArray[np.float64]:
    """Symmetric co-occurrence counts at distance 1, angles 0 and 90 degrees.

    Returns:
        array ``(n_levels, n_levels, 1, 2)`` as ``graycomatrix(levels, [1], [0, pi/2],
        levels=n_levels, symmetric=True)``.
    """
    img = np.asarray(levels, dtype=np.int64)
    out = np.zeros((n_levels, n_levels, 1, 2))
    for a, (i, j) in enumerate(((img[:, :-1], img[:, 1:]), (img[1:, :], img[:-1, :]))):
        counts = np.bincount((i * n_levels + j).ravel(), minlength=n_levels * n_levels)
        counts = counts.reshape(n_levels, n_levels).astype(np.float64)
        out[:, :, 0, a] = counts + counts.T
    return out
