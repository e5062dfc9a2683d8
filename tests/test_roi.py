"""Seeded ROI layers: crops, their numpy twins, inverse mapping and augmentation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from models import geometry, roi
from models.data import LesionDataset, synthetic_lesions
from models.exceptions import ConfigError
from models.geometry import RoiSpec


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, size=(70, 90)).astype(np.uint8)


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32))[None, None]


def test_crop_centred_on_seed_reproduces_patch(image: np.ndarray) -> None:
    size, seed = 33, (40, 30)
    mat = geometry.crop_matrix(seed, size / 2.0, size)
    expected = image[30 - 16 : 30 + 17, 40 - 16 : 40 + 17].astype(np.float32)
    np.testing.assert_allclose(geometry.crop(image, mat, size), expected, atol=1e-4)
    torch_crop = roi.SeededCrop(size)(_t(image), [mat])[0, 0].numpy()
    np.testing.assert_allclose(torch_crop, expected, atol=1e-3)


def test_crop_outside_image_is_zero(image: np.ndarray) -> None:
    mat = geometry.crop_matrix((0, 0), 10.0, 20)
    out = geometry.crop(image, mat, 20)
    assert np.all(out[:9, :9] == 0.0)
    assert np.all(out[11:, 11:] > 0.0) or out[11:, 11:].mean() > 0


@pytest.mark.parametrize(
    "angle,flip,aspect", [(0.0, False, 1.0), (0.3, True, 1.2), (-0.2, False, 0.8)]
)
def test_numpy_and_torch_crops_agree(
    image: np.ndarray, angle: float, flip: bool, aspect: float
) -> None:
    mat = geometry.crop_matrix((37.3, 21.8), 27.5, 48, angle=angle, flip=flip, aspect=aspect)
    a = geometry.crop(image / 255.0, mat, 48)
    b = roi.SeededCrop(48)(_t(image / 255.0), [mat])[0, 0].numpy()
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_build_inputs_matches_torch_seeded_crops(image: np.ndarray) -> None:
    spec = RoiSpec(crop_size=32, scales=(1.0, 2.0), seed_sigma=3.0)
    img01 = image.astype(np.float32) / 255.0
    for flip in (False, True):
        a, _ = geometry.build_inputs(img01, (50, 33), 12.5, spec, flip=flip)
        b = roi.seeded_crops(_t(img01), (50, 33), 12.5, spec, flip=flip).numpy()
        assert a.shape == (spec.in_channels, 32, 32)
        np.testing.assert_allclose(a, b, atol=1e-4)
        peak = np.unravel_index(np.argmax(a[-1]), a[-1].shape)
        assert abs(peak[0] - 15.5) <= 0.5 and abs(peak[1] - 15.5) <= 0.5


def test_flip_is_a_mirror(image: np.ndarray) -> None:
    a = geometry.crop(image, geometry.crop_matrix((45, 35), 20.0, 40), 40)
    b = geometry.crop(image, geometry.crop_matrix((45, 35), 20.0, 40, flip=True), 40)
    np.testing.assert_allclose(a, b[:, ::-1], atol=1e-4)


def test_inverse_mapping_round_trip() -> None:
    h, w = 80, 100
    yy, xx = np.mgrid[:h, :w]
    mask = ((xx - 52) / 14.0) ** 2 + ((yy - 41) / 9.0) ** 2 <= 1.0
    mat = geometry.crop_matrix((50, 40), 24.0, 96, angle=0.25)
    crop = geometry.crop(mask.astype(np.float32), mat, 96)
    back = geometry.uncrop(crop, mat, (h, w)) > 0.5
    iou = (back & mask).sum() / (back | mask).sum()
    assert iou > 0.95
    full = np.vstack([mat, [0, 0, 1]]) @ np.vstack([geometry.invert_affine(mat), [0, 0, 1]])
    np.testing.assert_allclose(full, np.eye(3), atol=1e-9)
    torch_back = roi.crop_to_image(torch.from_numpy(crop)[None, None], [mat], (h, w))
    np.testing.assert_allclose(
        torch_back[0, 0].numpy(), geometry.uncrop(crop, mat, (h, w)), atol=1e-5
    )


def test_uncrop_is_zero_outside_footprint() -> None:
    mat = geometry.crop_matrix((20, 20), 5.0, 16)
    back = geometry.uncrop(np.ones((16, 16), np.float32), mat, (50, 50))
    assert back[15:25, 15:25].min() == pytest.approx(1.0)
    assert back.sum() == pytest.approx(100.0, abs=1e-3)


def test_augmentation_moves_but_keeps_seed_inside() -> None:
    spec = RoiSpec(crop_size=64)
    aug = roi.RoiAugmentation()
    rng = np.random.default_rng(0)
    seed, centers, halves = (60.0, 40.0), set(), set()
    for _ in range(200):
        params = roi.sample_roi_params(seed, 15.0, spec, aug, rng)
        uv = geometry.invert_affine(params.matrices(spec)[0]) @ np.array([*seed, 1.0])
        assert np.all(uv >= 0) and np.all(uv <= spec.crop_size - 1)
        centers.add(params.center)
        halves.add(round(params.half_width, 3))
    assert len(centers) > 150 and len(halves) > 150
    lo = min(halves) / 15.0 / spec.context_factor
    hi = max(halves) / 15.0 / spec.context_factor
    assert lo >= aug.wide_scale_range[0] - 1e-6 and hi <= aug.wide_scale_range[1] + 1e-6


def test_training_crop_seed_channel_marks_the_click() -> None:
    spec = RoiSpec(crop_size=48)
    sample = synthetic_lesions(1, seed=5)[0]
    image = torch.from_numpy(sample.image).float()[None, None] / 255.0
    mask = torch.from_numpy(sample.mask).float()[None, None]
    rng = np.random.default_rng(1)
    for _ in range(10):
        inputs, target = roi.training_crop(
            image, mask, sample.seed, 20.0, spec, roi.RoiAugmentation(), rng
        )
        assert inputs.shape == (spec.in_channels, 48, 48) and target.shape == (1, 48, 48)
        assert inputs[:-1].min() >= -1.0 and inputs[:-1].max() <= 1.0
        v, u = np.unravel_index(int(inputs[-1].argmax()), (48, 48))
        assert target[0, v, u] > 0.5  # the click lies in the lesion in the crop too


def test_inference_crops_are_deterministic() -> None:
    spec = RoiSpec(crop_size=48)
    samples = synthetic_lesions(4, seed=1)
    plain = LesionDataset(samples, spec)
    a, b = plain[2], plain[2]
    plain.set_epoch(5)
    c = plain[2]
    for key in ("inputs", "mask"):
        assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key])
    augmented = LesionDataset(samples, spec, augmentation=roi.RoiAugmentation(), seed=7)
    x, y = augmented[1], augmented[1]
    assert torch.equal(x["inputs"], y["inputs"])
    augmented.set_epoch(1)
    assert not torch.equal(x["inputs"], augmented[1]["inputs"])


def test_inference_crop_uses_context_factor_times_extent() -> None:
    spec = RoiSpec(crop_size=48, context_factor=2.0)
    params = roi.sample_roi_params((10.0, 12.0), 7.0, spec, None, np.random.default_rng(0))
    assert params.center == (10.0, 12.0) and params.half_width == pytest.approx(14.0)
    assert params.angle == 0.0 and not params.flip


def test_extent_and_component_helpers() -> None:
    mask = np.zeros((20, 30), bool)
    mask[5:10, 4:9] = True
    mask[15:18, 20:25] = True
    assert geometry.chebyshev_extent(mask, (6, 7)) == pytest.approx(18.5)
    comp = geometry.select_component(mask, (6, 7))
    assert comp.sum() == 25
    assert geometry.select_component(mask, (22, 19)).sum() == 15  # nearest component
    mat = geometry.crop_matrix((6, 7), 10.0, 20)
    crop = geometry.crop(comp.astype(np.float32), mat, 20) > 0.5
    assert geometry.extent_in_image(crop, mat, (6, 7)) == pytest.approx(2.5, abs=0.6)


def test_the_kept_component_has_its_holes_filled_as_on_the_whole_image() -> None:
    rng = np.random.default_rng(0)
    with_holes = 0
    for _ in range(50):  # speckled blobs with holes, some cut by the image border
        mask = ndimage.gaussian_filter(rng.random((60, 80)), 2.0) > 0.5
        seed = (int(rng.integers(80)), int(rng.integers(60)))
        kept = geometry.select_component(mask, seed, fill=False)
        expected = ndimage.binary_fill_holes(kept)
        assert np.array_equal(geometry.select_component(mask, seed), expected)
        with_holes += int((expected & ~kept).any())
    assert with_holes >= 10  # the draws do exercise the filling


def test_invalid_settings_raise() -> None:
    with pytest.raises(ConfigError):
        RoiSpec(scales=(2.0, 1.0))
    with pytest.raises(ConfigError):
        roi.RoiAugmentation(shift=0.6)
    with pytest.raises(ConfigError):
        geometry.crop_matrix((0, 0), 0.0, 16)
    spec = RoiSpec(crop_size=40, pass1_fractions=(0.1, 0.3))
    assert RoiSpec.from_json(spec.to_json()) == spec
    assert math.isclose(spec.in_channels, 3)


def test_uncrop_limited_to_a_region_matches_the_full_uncrop_there() -> None:
    rng = np.random.default_rng(1)
    crop_map = ndimage.gaussian_filter(rng.random((32, 32)), 2.0).astype(np.float32)
    mat = geometry.crop_matrix((40.3, 33.7), 21.0, 32, angle=0.2)
    full = geometry.uncrop(crop_map, mat, (70, 90))
    component = np.zeros((32, 32), bool)
    component[10:20, 12:25] = True
    region = geometry.image_box(component, mat, (70, 90))
    part = geometry.uncrop(crop_map, mat, (70, 90), region)
    np.testing.assert_array_equal(part[region], full[region])
    outside = np.ones((70, 90), bool)
    outside[region] = False
    assert not part[outside].any()
    vs, us = np.nonzero(component)  # every component pixel maps inside the region
    xy = np.stack([us, vs, np.ones_like(us)], axis=1) @ mat.T
    rows, cols = region
    assert (xy[:, 0] >= cols.start).all() and (xy[:, 0] < cols.stop).all()
    assert (xy[:, 1] >= rows.start).all() and (xy[:, 1] < rows.stop).all()
    assert geometry.image_box(np.zeros((32, 32), bool), mat, (70, 90)) is None


def test_the_component_labelled_inside_its_region_is_the_whole_image_one() -> None:
    from models.inference import _component_in

    rng = np.random.default_rng(4)
    for _ in range(40):  # blobs confined to a box; seeds inside, outside and off every blob
        mask = np.zeros((70, 90), bool)
        top, left = int(rng.integers(0, 30)), int(rng.integers(0, 40))
        rows, cols = slice(top, top + 35), slice(left, left + 45)
        mask[rows, cols] = ndimage.gaussian_filter(rng.random((35, 45)), 2.0) > 0.5
        seed = (int(rng.integers(90)), int(rng.integers(70)))
        expected = geometry.select_component(mask, seed)
        assert np.array_equal(_component_in(mask, seed, (rows, cols)), expected)


def test_pass2_proposals_in_order_smallest_whole_lesion_or_best_framing() -> None:
    from models.inference import _proposals, _View

    def view(half: float, extent: float, touches: bool = False) -> _View:
        return _View(
            half, np.eye(2, 3), np.zeros((4, 4)), {}, np.zeros((4, 4), bool), extent, touches
        )

    first = [view(10.0, 9.0), view(20.0, 11.0), view(40.0, 14.0)]  # ratios 0.9, 0.55, 0.35
    every = RoiSpec(pass2_proposals=0)
    assert _proposals(first, every) == [14.0, 11.0, 9.0]  # every distinct one, largest first
    framing = RoiSpec(pass2_proposals=1, proposal_order="framing")  # target ratio 0.5
    assert _proposals(first, framing) == [11.0]
    assert _proposals(first, dataclasses.replace(framing, pass2_proposals=2)) == [11.0, 14.0]
    one = RoiSpec(pass2_proposals=1)  # the smallest whole lesion first
    assert _proposals(first, one) == [9.0]
    touching = [view(10.0, 9.0, touches=True), *first[1:]]
    assert _proposals(touching, one) == [11.0]  # a lesion cut by its crop proposes nothing
    assert _proposals(first, RoiSpec(pass2_proposals=2)) == [9.0, 11.0]
    assert RoiSpec.from_json(one.to_json()) == one
    old = json.loads(every.to_json())
    del old["pass2_proposals"], old["proposal_order"]  # a bundle from before the settings
    assert RoiSpec.from_json(json.dumps(old)) == dataclasses.replace(
        every, proposal_order="framing"
    )
    with pytest.raises(ConfigError):
        RoiSpec(pass2_proposals=-1)
    with pytest.raises(ConfigError):
        RoiSpec(proposal_order="largest")


def test_a_batch_of_views_is_sampled_as_each_view_alone(image: np.ndarray) -> None:
    img01 = geometry.SamplingImage(image.astype(np.float32) / 255.0)
    spec = RoiSpec(crop_size=32, scales=(1.0, 2.0, 3.0))
    views = [(12.5, False), (12.5, True), (30.0, False), (5.0, True)]
    batch, matrices = geometry.build_batch(img01, (50, 33), views, spec)
    assert batch.shape == (4, spec.in_channels, 32, 32) and batch.dtype == np.float32
    for (half, flip), inputs, matrix in zip(views, batch, matrices, strict=True):
        alone, alone_matrix = geometry.build_inputs(img01, (50, 33), half, spec, flip=flip)
        np.testing.assert_array_equal(inputs, alone)
        np.testing.assert_array_equal(matrix, alone_matrix)


@pytest.mark.parametrize("flip", [False, True])
def test_the_separable_uncrop_of_an_axis_aligned_crop_is_the_bilinear_one(flip: bool) -> None:
    rng = np.random.default_rng(6)
    crop_map = rng.random((32, 32)).astype(np.float32)
    mat = geometry.crop_matrix((40.3, 33.7), 21.7, 32, flip=flip)
    got = geometry.uncrop(crop_map, mat, (70, 90))
    inv = geometry.invert_affine(mat)  # every image pixel's crop coordinates, sampled directly
    xs, ys = np.meshgrid(np.arange(90, dtype=np.float64), np.arange(70, dtype=np.float64))
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    inside = (u >= -0.5) & (u < 31.5) & (v >= -0.5) & (v < 31.5)
    values = geometry.sample_bilinear(crop_map, np.clip(u, 0, 31), np.clip(v, 0, 31))
    np.testing.assert_allclose(got, np.where(inside, values, 0.0), rtol=0, atol=1e-6)
    assert inside.sum() > 1500 and (got[~inside] == 0).all()


def test_several_grids_are_sampled_as_each_grid_alone(image: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    xs = np.sort(rng.uniform(-5.0, 95.0, size=(3, 16)), axis=1)
    ys = np.sort(rng.uniform(-5.0, 75.0, size=(3, 12)), axis=1)
    for data in (image.astype(np.float32) / 255.0, rng.random((2, 70, 90)).astype(np.float32)):
        sampler = geometry.SamplingImage(data)
        grids = sampler.sample_grids(xs, ys)
        assert grids.shape == (3, *data.shape[:-2], 12, 16)
        for x, y, grid in zip(xs, ys, grids, strict=True):
            np.testing.assert_array_equal(grid, sampler.sample_grid(x, y))


def test_the_closed_form_inverse_of_any_crop_matrix() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        center, half = rng.uniform(0, 500, 2), rng.uniform(1, 300)
        mat = geometry.crop_matrix(
            center, half, 64, angle=rng.uniform(-3, 3), flip=bool(rng.integers(2)),
            aspect=rng.uniform(0.5, 2.0),
        )  # fmt: skip
        expected = np.linalg.inv(np.vstack([mat, [0.0, 0.0, 1.0]]))[:2]
        np.testing.assert_allclose(geometry.invert_affine(mat), expected, rtol=1e-12, atol=1e-9)
        # the unrotated fast path is the general construction at a vanishing angle
        plain = geometry.crop_matrix(center, half, 64, flip=bool(rng.integers(2)))
        nearly = geometry.crop_matrix(center, half, 64, angle=1e-12, flip=plain[0, 0] < 0)
        np.testing.assert_allclose(plain, nearly, rtol=1e-9, atol=1e-9)


def test_grid_sampling_is_pointwise_sampling_on_the_grid(image: np.ndarray) -> None:
    img01 = geometry.SamplingImage(image.astype(np.float32) / 255.0)
    h, w = image.shape
    x = np.linspace(w + 3.0, -4.0, 37)  # mirrored, and beyond both edges
    y = np.linspace(-2.5, h + 1.5, 29)
    xs, ys = np.meshgrid(x, y)
    np.testing.assert_allclose(img01.sample_grid(x, y), img01.sample(xs, ys), rtol=0, atol=1e-6)


def test_final_scales_average_the_views_masks_as_the_whole_image_uncrop_does() -> None:
    from models.inference import _average_mask, _View

    rng = np.random.default_rng(5)
    views = []
    for half, angle in ((18.0, 0.0), (22.5, 0.0), (14.4, 0.1)):  # 0.8 / 1 / 1.25 of one framing
        mat = geometry.crop_matrix((44.0, 35.0), half, 32, angle=angle)
        uu, vv = np.meshgrid(np.arange(32), np.arange(32))
        prob = 1.0 / (1.0 + np.exp(np.hypot(uu - 16, vv - 16) - 9.0 * 22.5 / half))
        prob += ndimage.gaussian_filter(rng.normal(0, 0.6, (32, 32)), 1.5)
        component = geometry.select_component(prob > 0.5, (16, 16), fill=False)
        views.append(_View(half, mat, prob, {}, component, 1.0, False))
    seed, shape = (44, 35), (70, 90)
    for chosen in (views[:1], views):
        full = np.mean(
            [geometry.uncrop(v.prob.astype(np.float32), v.matrix, shape) for v in chosen], axis=0
        )
        expected = geometry.select_component(full > 0.5, seed)
        assert np.array_equal(_average_mask(chosen, seed, shape, 0.5)[0], expected)
    assert not np.array_equal(_average_mask(views[:1], seed, shape, 0.5)[0], expected)


def test_the_averaged_mask_is_one_component_without_holes() -> None:
    """What ``lesion_features(..., whole=True)`` relies on for the analyser's masks."""
    from models import _morphology as morph
    from models.inference import _average_mask, _View

    rng = np.random.default_rng(11)
    for trial in range(20):
        mat = geometry.crop_matrix((44.0, 35.0), 20.0, 32)
        prob = ndimage.gaussian_filter(rng.random((32, 32)), 1.2)  # several blobs, some holed
        prob = (prob - prob.min()) / (prob.max() - prob.min())
        component = geometry.select_component(prob > 0.5, (16, 16), fill=False)
        view = _View(20.0, mat, prob, {}, component, 1.0, False)
        mask, none = _average_mask([view], (44, 35), (70, 90), 0.5)
        assert none is None
        assert np.array_equal(morph.fill_holes(morph.largest_component(mask)), mask), trial


def test_final_scales_add_views_after_the_framing_is_settled() -> None:
    from models.inference import analyze_image
    from models.train import TrainConfig, build_model, torch_runner

    alone = RoiSpec(crop_size=48, pass1_fractions=(0.15, 0.3, 0.5), final_scales=(1.0,))
    config = TrainConfig(
        encoder="residual", features=(8, 16, 32, 64), subunits=(1, 1, 1, 1), spec=alone
    )
    torch.manual_seed(0)
    network = build_model(config).eval()
    heads = {h: tuple(c) for h, c in network.head_vocabularies.items()}
    sample = synthetic_lesions(1, seed=2, size=(96, 112))[0]
    crops = []

    def runner(batch: np.ndarray):
        crops.append(len(batch))
        return torch_runner(network)(batch)

    for flip in (True, False):
        spec = dataclasses.replace(alone, flip_tta=flip)
        crops.clear()
        single = analyze_image(sample.image, sample.seed, spec, runner, heads)
        counted = sum(crops)
        tta = dataclasses.replace(spec, final_scales=(0.8, 1.0, 1.25))
        crops.clear()
        averaged = analyze_image(sample.image, sample.seed, tta, runner, heads)
        assert sum(crops) == counted + (4 if flip else 2)  # two more framings (and mirrors)
        assert (averaged.extent, averaged.half_width) == (single.extent, single.half_width)
        assert averaged.malignancy_logit != single.malignancy_logit
    assert RoiSpec.from_json(tta.to_json()) == tta
    old = json.loads(tta.to_json())
    del old["final_scales"]  # a bundle exported before the setting existed: the view alone
    assert RoiSpec.from_json(json.dumps(old)).final_scales == (1.0,)
    for bad in ((0.8, 1.25), (0.0, 1.0)):
        with pytest.raises(ConfigError):
            RoiSpec(final_scales=bad)


@pytest.mark.parametrize(
    ("refine_passes", "batches"), [(0, [2, 1, 2]), (1, [2, 1, 3]), (2, [2, 1, 1, 3])]
)
def test_the_settling_refinement_runs_with_its_rescaled_views(
    refine_passes: int, batches: list[int]
) -> None:
    """A lesion wider than every crop: each framing touches the border and is refined. The
    last refinement settles the framing, so its 0.8× and 1.25× views share its batch."""
    from models.inference import analyze_image

    spec = RoiSpec(
        crop_size=16, scales=(1.0,), pass1_fractions=(0.2, 0.4), flip_tta=False,
        final_scales=(0.8, 1.0, 1.25), refine_passes=refine_passes,
    )  # fmt: skip
    seen: list[int] = []

    def everywhere_lesion(batch: np.ndarray) -> dict[str, np.ndarray]:
        seen.append(len(batch))
        n = len(batch)
        return {"mask": np.full((n, 1, 16, 16), 5.0), "malignancy": np.zeros(n)}

    out = analyze_image(np.full((64, 80), 100, np.uint8), (40, 30), spec, everywhere_lesion, {})
    assert seen == batches
    assert out.mask.any()


def _bright_lesion(crops: np.ndarray) -> dict[str, np.ndarray]:
    """A stand-in network: the mask is the crop's bright part (the lesion below is bright)."""
    first = crops[:, :1]
    logits = 40.0 * (first - 0.5 * (first.max(axis=(2, 3), keepdims=True)))
    return {"mask": logits, "malignancy": np.zeros(len(crops))}


def test_the_outline_is_the_tightest_final_views_own_mask(monkeypatch) -> None:
    import models.inference as inference

    image = np.full((120, 140), 30, np.uint8)
    rows, cols = np.ogrid[:120, :140]
    lobes = np.hypot(rows - 60, cols - 70) < 22 + 4 * np.sin(6 * np.arctan2(rows - 60, cols - 70))
    image[lobes] = 220
    seen: list[tuple] = []
    average = inference._average_mask

    def spy(views, seed, shape, threshold, own=None):
        seen.append((list(views), own))
        return average(views, seed, shape, threshold, own)

    monkeypatch.setattr(inference, "_average_mask", spy)
    spec = RoiSpec(crop_size=32, scales=(1.0,), seed_sigma=0.0, final_scales=(0.8, 1.0, 1.25))
    out = inference.analyze_image(image, (70, 60), spec, _bright_lesion, {})
    ((views, own),) = seen
    assert len(views) == 3 and views[own] is min(views, key=lambda v: v.half)
    assert np.array_equal(out.mask, average(views, (70, 60), image.shape, 0.5)[0])
    assert np.array_equal(out.outline_mask, average([views[own]], (70, 60), image.shape, 0.5)[0])
    assert not np.array_equal(out.outline_mask, out.mask)

    seen.clear()
    same = inference.analyze_image(
        image, (70, 60), dataclasses.replace(spec, outline_view="average"), _bright_lesion, {}
    )
    assert seen[0][1] is None and same.outline is None and same.outline_mask is same.mask
    assert np.array_equal(same.mask, out.mask)
    seen.clear()
    alone = dataclasses.replace(spec, final_scales=(1.0,))  # one view: its mask is the outline
    assert inference.analyze_image(image, (70, 60), alone, _bright_lesion, {}).outline is None
    assert seen[0][1] is None

    old = json.loads(spec.to_json())
    del old["outline_view"]  # a bundle exported before the setting: the shown mask
    assert RoiSpec.from_json(json.dumps(old)).outline_view == "average"
    assert RoiSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ConfigError, match="outline_view"):
        RoiSpec(outline_view="widest")  # type: ignore[arg-type]


def test_a_tightest_view_without_a_lesion_leaves_the_outline_to_the_shown_mask() -> None:
    from models.inference import analyze_image

    spec = RoiSpec(crop_size=16, scales=(1.0,), pass1_fractions=(0.2, 0.4), refine_passes=0)
    batches: list[int] = []

    def no_lesion_in_the_tightest_view(batch: np.ndarray) -> dict[str, np.ndarray]:
        batches.append(len(batch))
        logits = np.full((len(batch), 1, 16, 16), 5.0)
        if len(batches) == 3:  # the rescaled views, 0.8x first
            logits[0] = -5.0
        return {"mask": logits, "malignancy": np.zeros(len(batch))}

    image = np.full((64, 80), 100, np.uint8)
    out = analyze_image(image, (40, 30), spec, no_lesion_in_the_tightest_view, {})
    assert batches == [2, 1, 2]
    assert out.mask.any() and out.outline is None and out.outline_mask is out.mask
