"""The lesion network, its losses, training loop, weight exchange and two-pass prediction."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from models.data import (
    HEAD_VOCABULARIES,
    LesionDataset,
    LesionSample,
    encode_descriptors,
    synthetic_lesions,
)
from models.exceptions import ConfigError, DataError, StateDictError
from models.geometry import RoiSpec
from models.losses import (
    LesionLoss,
    boundary_band,
    malignancy_loss,
    masked_cross_entropy,
    proximal_term,
    weighted_mask_bce,
)
from models.network import LesionNet, descriptor_output, weights_mb
from models.packaging import config_from_dict
from models.train import (
    TrainConfig,
    build_model,
    load_state_numpy,
    predict,
    state_to_numpy,
    train_epochs,
    train_model,
)

# A small, fast recipe for unit tests (the defaults are the real-data recipe).
FAST = TrainConfig(
    epochs=2,
    batch_size=8,
    lr=3e-3,
    encoder="residual",
    features=(8, 16, 32, 64),
    subunits=(1, 1, 1, 1),
    spec=RoiSpec(crop_size=48),
    seed=0,
)


@pytest.fixture(scope="module")
def samples() -> list[LesionSample]:
    return synthetic_lesions(40, seed=11, size=(96, 112))


def test_default_network_shapes_and_size() -> None:
    config = TrainConfig()
    model = build_model(config).eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n_params <= 2_500_000  # Lite0 to stride 16 and its decoder: 0.89 M
    assert weights_mb(model) <= 10.0
    x = torch.zeros(2, config.spec.in_channels, config.spec.crop_size, config.spec.crop_size)
    with torch.no_grad():
        out = model(x)
    assert out["mask"].shape == (2, 1, config.spec.crop_size, config.spec.crop_size)
    assert out["malignancy"].shape == (2,)
    for head, classes in HEAD_VOCABULARIES.items():
        assert out[descriptor_output(head)].shape == (2, len(classes))


def test_network_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError):
        LesionNet(2, 3, 1, features=(16,))
    with pytest.raises(ConfigError):
        LesionNet(2, 3, 1, descriptor_classes={"shape": 1})
    with pytest.raises(ConfigError):
        TrainConfig(
            encoder="residual",
            features=(8, 16, 32, 64, 128, 256, 512),
            subunits=(1,) * 7,
            spec=RoiSpec(crop_size=96),
        )
    with pytest.raises(ConfigError, match="subunits"):
        TrainConfig(subunits=(1, 1, 1, 1))  # Lite0 and four decoder widths: five levels
    with pytest.raises(ConfigError, match="operating_confidence"):
        TrainConfig(operating_confidence=1.0)


def test_configs_saved_by_older_bundles_still_load() -> None:
    saved = dataclasses.asdict(TrainConfig(epochs=7))
    saved.pop("operating_confidence")
    saved["operating_margin"] = 0.03  # thresholds used to be chosen with a fixed margin
    config = config_from_dict(json.loads(json.dumps(saved)))
    assert config == TrainConfig(epochs=7)
    residual = dataclasses.asdict(
        TrainConfig(encoder="residual", features=(8, 16, 32, 64, 96), subunits=(1, 1, 2, 2, 2))
    )
    del residual["encoder"]  # saved before the encoder choice existed: always the residual one
    assert config_from_dict(json.loads(json.dumps(residual))).encoder == "residual"


def test_descriptor_vocabularies_follow_the_schema() -> None:
    from data_registry.schema import Descriptors, Margin, Orientation, Shape

    assert len(HEAD_VOCABULARIES["shape"]) == 3
    assert len(HEAD_VOCABULARIES["orientation"]) == 2
    assert HEAD_VOCABULARIES["margin"] == ("circumscribed", "not circumscribed")
    assert len(HEAD_VOCABULARIES["echo_pattern"]) == 6
    assert len(HEAD_VOCABULARIES["posterior_features"]) == 4
    d = Descriptors(
        shape=Shape.IRREGULAR,
        orientation=Orientation.NOT_PARALLEL,
        margin=(Margin.SPICULATED, Margin.ANGULAR),
    )
    enc = encode_descriptors(d)
    assert enc["shape"] == 2 and enc["orientation"] == 1 and enc["margin"] == 1
    assert enc["margin_spiculated"] == 1 and enc["margin_angular"] == 1
    assert enc["margin_indistinct"] == 0 and "echo_pattern" not in enc
    assert encode_descriptors(Descriptors(margin=(Margin.CIRCUMSCRIBED,)))["margin"] == 0


def test_sample_validation() -> None:
    img = np.zeros((20, 20), np.uint8)
    mask = np.zeros((20, 20), bool)
    with pytest.raises(DataError):
        LesionSample("c1", "s", "g", img, mask, (25, 3), 0)
    with pytest.raises(DataError):
        LesionSample("c1", "s", "g", img.astype(float), mask, (2, 3), 0)
    with pytest.raises(DataError):
        LesionSample("c1", "s", "g", img, mask, (2, 3), 0, {"shape": 7})
    with pytest.raises(DataError):
        LesionDataset([LesionSample("c1", "s", "g", img, mask, (2, 3), 0)], RoiSpec())


def test_losses() -> None:
    logits = torch.randn(6, 3)
    unlabelled = torch.full((6,), -1)
    assert masked_cross_entropy(logits, unlabelled).item() == 0.0
    targets = torch.tensor([0, 1, -1, 2, -1, 0])
    keep = targets >= 0
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert torch.isclose(masked_cross_entropy(logits, targets), expected)
    z, y = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0])
    assert malignancy_loss(z, y, pos_weight=3.0) > malignancy_loss(z, y, pos_weight=1.0)
    assert malignancy_loss(z, y, gamma=2.0) < malignancy_loss(z, y)
    model = build_model(FAST)
    ref = {k: v.detach().clone() for k, v in model.named_parameters()}
    assert proximal_term(model, ref).item() == 0.0
    loss = LesionLoss(heads=("shape",))
    out = {
        "mask": torch.zeros(2, 1, 8, 8),
        "malignancy": torch.zeros(2),
        "desc_shape": torch.zeros(2, 3),
    }
    batch = {
        "mask": torch.ones(2, 1, 8, 8),
        "label": torch.tensor([1.0, 0.0]),
        "descriptors": torch.tensor([[-1], [-1]]),
    }
    parts = loss(out, batch)
    assert torch.isfinite(parts["total"]) and parts["descriptors"].item() == 0.0


def test_boundary_band_and_weighted_mask_bce() -> None:
    target = torch.zeros(1, 1, 16, 16)
    target[..., 4:12, 4:12] = 1.0
    band = boundary_band(target, radius=2)[0, 0]
    rows = torch.arange(16)[:, None].expand(16, 16)
    cols = torch.arange(16)[None, :].expand(16, 16)
    # chessboard distance to the square's outline (between pixels 3|4 and 11|12), both sides
    inside = torch.minimum(torch.minimum(rows - 4, 11 - rows), torch.minimum(cols - 4, 11 - cols))
    outside = torch.maximum(torch.maximum(4 - rows, rows - 11), torch.maximum(4 - cols, cols - 11))
    expected = torch.where(target[0, 0] > 0, inside < 2, outside <= 2).float()
    assert torch.equal(band, expected)
    assert boundary_band(torch.zeros(1, 1, 8, 8)).sum() == 0  # no lesion, no outline
    plain = torch.nn.functional.binary_cross_entropy_with_logits
    logits = torch.randn(1, 1, 16, 16)
    assert torch.isclose(weighted_mask_bce(logits, target), plain(logits, target))
    # errors only on the outline weigh more than the same errors far from it
    wrong_at_edge = torch.where(band > 0, -4.0 * (2 * target - 1), 4.0 * (2 * target - 1))
    wrong_far = torch.where(band > 0, 4.0 * (2 * target - 1), -4.0 * (2 * target - 1))
    edge, far = (
        weighted_mask_bce(wrong_at_edge, target, 3.0),
        weighted_mask_bce(wrong_far, target, 3.0),
    )
    assert edge > plain(wrong_at_edge, target) and far < plain(wrong_far, target)
    with pytest.raises(ConfigError, match="boundary_weight"):
        LesionLoss(boundary_weight=-1.0)


def test_state_dict_round_trip() -> None:
    a, b = build_model(FAST), build_model(TrainConfig(**{**FAST.__dict__, "seed": 1}))
    torch.manual_seed(5)
    b = build_model(FAST)
    arrays = state_to_numpy(a)
    assert all(isinstance(v, np.ndarray) for v in arrays.values())
    load_state_numpy(b, arrays)
    for k, v in b.state_dict().items():
        assert np.array_equal(v.numpy(), arrays[k])
    with pytest.raises(StateDictError):
        load_state_numpy(b, {k: v for k, v in arrays.items() if "malignancy" not in k})
    bad = dict(arrays)
    name = next(k for k in bad if k.endswith("weight"))
    bad[name] = np.zeros((1, 2, 3), np.float32)
    with pytest.raises(StateDictError):
        load_state_numpy(b, bad)


def test_tiny_training_reduces_loss_and_predicts(samples: list[LesionSample]) -> None:
    config = TrainConfig(**{**FAST.__dict__, "epochs": 3, "ema_decay": 0.9})
    result = train_model(samples[:32], samples[32:], config, progress=False)
    losses = [row["train_total"] for row in result.history]
    assert losses[-1] < losses[0]
    assert 0 <= result.best_epoch < 3 and "val_auc" in result.best_metrics
    assert set(result.state) == set(result.model.state_dict())
    preds = predict(result.model, samples[32:36])
    assert len(preds) == 4
    for p, s in zip(preds, samples[32:36], strict=True):
        assert p.mask.shape == s.image.shape and p.mask.dtype == bool
        assert 0.0 <= p.probability <= 1.0 and p.half_width > 0
        assert sum(p.descriptor_probs["shape"].values()) == pytest.approx(1.0, abs=1e-5)


def test_monitor_last_keeps_the_final_epoch(samples: list[LesionSample]) -> None:
    config = TrainConfig(**{**FAST.__dict__, "monitor": "last", "patience": None})
    result = train_model(samples[:16], samples[16:24], config, progress=False)
    assert len(result.history) == 2 and result.best_epoch == 1
    assert result.best_metrics["val_loss"] == result.history[-1]["val_loss"]


def test_train_epochs_is_reproducible_and_proximal_pulls_to_global(
    samples: list[LesionSample],
) -> None:
    config = TrainConfig(**{**FAST.__dict__, "batch_size": 8})
    torch.manual_seed(0)
    start = state_to_numpy(build_model(config))

    def run(mu: float) -> dict[str, np.ndarray]:
        model = build_model(config)
        load_state_numpy(model, start)
        cfg = TrainConfig(**{**config.__dict__, "proximal_mu": mu})
        hist = train_epochs(model, samples[:16], cfg, 1, proximal_to=start, progress=False)
        assert len(hist) == 1 and np.isfinite(hist[0]["train_total"])
        return state_to_numpy(model)

    def distance(state: dict[str, np.ndarray]) -> float:
        return sum(float(((state[k] - start[k]) ** 2).sum()) for k in start if "weight" in k)

    a, b = run(0.0), run(0.0)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    prox = run(100.0)
    assert distance(prox) < distance(a)


def test_kept_optimizer_moments_carry_over_between_calls(samples: list[LesionSample]) -> None:
    def steps(moments: dict[str, np.ndarray]) -> set[float]:
        return {float(v) for k, v in moments.items() if k.endswith("/step")}

    torch.manual_seed(0)
    model = build_model(FAST)
    moments: dict[str, np.ndarray] = {}
    train_epochs(model, samples[:16], FAST, 1, progress=False, optimizer_state=moments)
    assert steps(moments) == {2.0}  # 16 samples, batch 8: every parameter took 2 steps
    assert all(np.isfinite(v).all() for v in moments.values())
    train_epochs(model, samples[:16], FAST, 1, progress=False, optimizer_state=moments)
    assert steps(moments) == {4.0}  # continued, not restarted
    foreign = {"not-a-parameter/exp_avg": np.zeros(1)}
    train_epochs(model, samples[:16], FAST, 1, progress=False, optimizer_state=foreign)
    assert steps(foreign) == {2.0}  # moments that do not fit are ignored


def test_time_budget_ends_training_early(samples: list[LesionSample]) -> None:
    config = TrainConfig(**{**FAST.__dict__, "epochs": 50, "max_minutes": 1e-4})
    result = train_model(samples[:16], samples[16:20], config, progress=False)
    assert len(result.history) == 1
    assert result.history[0]["lr"] == pytest.approx(config.lr / 1000.0, rel=1e-3)
