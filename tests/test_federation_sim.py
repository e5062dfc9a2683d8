"""Federated rounds in Flower's simulation (real ClientApps in Ray worker processes) on the tiny
phantom world: what leaves a hospital, per-round scoring and checkpoints, federated calibration
and packaging without the vendor opening a registry, and faults — a hospital process that dies,
a boosted update and a NaN update."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data_registry import Registry
from federation import protocol
from federation.audit import audit_violations, read_audit
from federation.calibrate import bins_of, read_calibration
from federation.candidate import package_candidate
from federation.checkpoint import CheckpointStore
from federation.config import FederationConfig, RunPaths, SiteSpec
from federation.server import AUDIT_FILE, ServerPlan
from federation.simulation import run_federation
from federation.task import exchanged_state, layout_of, packed_shapes
from tests._pipeline import tiny_config

ROUNDS = 2


def _plan(world, run_dir: Path, num_sites: int, **settings) -> ServerPlan:
    config = FederationConfig(rounds=ROUNDS, cycle=1, **settings)
    paths = RunPaths(run_dir=run_dir, testset=world.locked, init=world.bundle)
    return ServerPlan(config, paths, num_sites=num_sites)


def _no_registry(*args, **kwargs):
    raise AssertionError("the vendor process opened a hospital registry")


@pytest.fixture(scope="module")
def clean_run(tiny_world, tmp_path_factory):
    """Three honest hospitals, two rounds from the tiny bundle, local evaluation on, then the
    candidate packaged. In the vendor's process (the ServerApp thread and packaging) opening a
    registry fails; the hospitals' ClientApps run in Ray worker processes and read theirs."""
    run_dir = tmp_path_factory.mktemp("clean") / "run"
    sites = [SiteSpec(path) for path in tiny_world.registries]
    plan = _plan(tiny_world, run_dir, 3, fraction_evaluate=1.0, calibration_logit_limit=2.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Registry, "__init__", _no_registry)
        outcome = run_federation(plan, sites)
        package_candidate(run_dir, run_dir.parent / "candidate", testset=tiny_world.locked)
    return outcome


def test_every_round_is_scored_on_the_locked_set_and_checkpointed(clean_run) -> None:
    history = clean_run.history
    assert [row["round"] for row in history] == list(range(ROUNDS + 1))
    for row in history:
        for key in ("auc", "sensitivity", "specificity", "dice", "sites", "dropped", "modes"):
            assert key in row
        assert set(row["modes"]) == {"high-sensitivity", "high-accuracy", "high-specificity"}
        assert 0.0 <= row["auc"] <= 1.0
    for row in history[1:]:
        assert row["sites"] == ["site-a", "site-b", "site-c"]
        assert row["dropped"] == [] and row["failed"] == []
        assert row["client_train"]["clients"] == 3
        assert row["client_evaluate"]["clients"] == 3
    # each hospital kept its optimiser moments from round 1 (context.state), so its step count
    # went on growing instead of restarting
    steps = [row["client_train"]["optimizer-steps"] for row in history[1:]]
    assert steps[0] > 0 and steps[1] == pytest.approx(2 * steps[0])
    latest = CheckpointStore(clean_run.run_dir / "checkpoints").latest()
    assert latest is not None and latest.round == ROUNDS
    assert [r["round"] for r in latest.history] == list(range(ROUNDS + 1))


def test_nothing_case_level_leaves_a_hospital(clean_run, tiny_world) -> None:
    """Every message the server received holds only the model's weights, aggregate metrics
    and the registry version used: no images, masks, case or patient ids, per-case values."""
    from models.train import build_model

    expected = packed_shapes(layout_of(exchanged_state(build_model(tiny_config()))))
    identifiers: set[str] = set()
    for path in tiny_world.registries:
        for entry in Registry(path).entries:
            identifiers.update({entry.case.case_id, entry.case.patient_id, entry.case.image_sha256})
    entries = read_audit(clean_run.run_dir / AUDIT_FILE)
    calibration_shapes = protocol.calibration_array_shapes(
        bins_of(FederationConfig(calibration_logit_limit=2.0))
    )
    assert (
        audit_violations(
            entries,
            weight_shapes=expected,
            calibration_shapes={k: list(v) for k, v in calibration_shapes.items()},
        )
        == []
    )
    kinds = [e["message_type"] for e in entries]
    assert kinds.count("train") == 3 * ROUNDS and kinds.count("evaluate") == 3 * ROUNDS
    assert kinds.count(protocol.CALIBRATE) == 3
    bins = bins_of(FederationConfig(calibration_logit_limit=2.0))
    allowed_arrays = {k: list(v) for k, v in protocol.calibration_array_shapes(bins).items()}
    for entry in entries:
        assert "error" not in entry
        if entry["message_type"] == protocol.CALIBRATE:
            # two fixed-size class histograms and fixed confusion tables, whatever the number
            # of cases; a few counts; nothing else
            assert set(entry["arrays"]) == {protocol.CALIBRATION}
            record = entry["arrays"][protocol.CALIBRATION]
            assert {k: v["shape"] for k, v in record.items()} == allowed_arrays
            assert set(entry["metrics"]) == {protocol.METRICS}
            assert set(entry["metrics"][protocol.METRICS]) == protocol.CALIBRATE_METRIC_KEYS
            assert all(isinstance(v, int | float) for v in entry["metrics"]["metrics"].values())
            site = entry["configs"].get(protocol.SITE, {})
            assert set(entry["configs"]) <= {protocol.SITE} and set(site) <= protocol.SITE_KEYS
            assert not {str(v) for v in site.values()} & identifiers
            continue
        assert set(entry["configs"]) <= {protocol.SITE}
        assert set(entry["metrics"]) == {protocol.METRICS}
        allowed = (
            protocol.TRAIN_METRIC_KEYS
            if entry["message_type"] == "train"
            else protocol.EVALUATE_METRIC_KEYS
        )
        metrics = entry["metrics"][protocol.METRICS]
        assert set(metrics) <= allowed
        assert all(isinstance(v, int | float) for v in metrics.values()), "no per-case lists"
        site = entry["configs"].get(protocol.SITE, {})
        assert set(site) <= protocol.SITE_KEYS
        assert not {str(v) for v in site.values()} & identifiers
        if entry["message_type"] == "train":
            shapes = {k: v["shape"] for k, v in entry["arrays"][protocol.ARRAYS].items()}
            assert shapes == expected
        else:
            assert entry["arrays"] == {}


def test_the_candidate_is_calibrated_from_the_hospitals_statistics(clean_run, tiny_world) -> None:
    """The bundle's temperature, modes and descriptor sources are those the vendor fitted from
    the three hospitals' summed validation statistics of the final round's model, and they are
    what the hospitals' pooled validation cases give (computed here by the test)."""
    import json

    from federation.site import load_site
    from federation.task import model_from_arrays
    from models.calibration import LogitBins
    from models.packaging import load_weights
    from models.train import predict
    from models.validation_stats import fit_calibration, validation_statistics

    calibration = read_calibration(clean_run.run_dir)
    assert calibration.round == ROUNDS and sorted(calibration.sites) == [
        "site-a",
        "site-b",
        "site-c",
    ]
    assert calibration.dropped == [] and calibration.failed == []
    metadata = json.loads((clean_run.run_dir.parent / "candidate" / "metadata.json").read_text())
    fitted = calibration.fitted
    assert metadata["temperature"] == fitted.temperature
    assert metadata["operating_points"] == fitted.operating_points
    assert metadata["descriptor_sources"] == fitted.descriptor_sources
    assert metadata["training_data"]["validation_cases"] == fitted.validation["n"]
    assert metadata["lineage"]["calibration"]["sites"] == calibration.sites
    _, recipe = load_weights(tiny_world.bundle)
    final = CheckpointStore(clean_run.run_dir / "checkpoints").load(ROUNDS)
    model = model_from_arrays(recipe, final.arrays)
    bins = LogitBins(low=-2.0, high=2.0, count=fitted.bins.count)
    pooled = None
    for registry in tiny_world.registries:
        val = load_site(registry, since=None, rehearsal_size=0, val_fraction=0.15, seed=0,
                        cycle=1).val  # fmt: skip
        stats = validation_statistics(val, predict(model, val), bins)
        pooled = stats if pooled is None else pooled.merge(stats)
    assert pooled.cases == fitted.validation["n"]
    expected = fit_calibration(pooled, confidence=recipe.operating_confidence)
    assert expected.descriptor_sources == fitted.descriptor_sources
    assert expected.temperature == pytest.approx(fitted.temperature, rel=1e-3)
    for mode, point in expected.operating_points.items():
        assert point == pytest.approx(fitted.operating_points[mode], abs=1e-3)


def test_dead_boosted_and_nan_hospitals_do_not_change_the_model(
    clean_run, tiny_world, tmp_path
) -> None:
    """Three honest hospitals plus one whose training crashes mid-round, one that multiplies
    its weights by 50 and one that sends NaN: the rounds complete with the honest three, the
    failure and the two dropped updates are recorded, and the final model is the clean run's.
    (A hospital *process* that dies is tested with real SuperNodes in test_federation_deploy.)"""
    a, b, c = tiny_world.registries
    sites = [
        SiteSpec(a),
        SiteSpec(b),
        SiteSpec(c),
        SiteSpec(a, site_id="site-crashes", fault="crash:1"),
        SiteSpec(b, site_id="site-boost", fault="scale:50"),
        SiteSpec(c, site_id="site-nan", fault="nan"),
    ]
    plan = _plan(tiny_world, tmp_path / "run", len(sites), fraction_evaluate=0.0, min_clients=3)
    outcome = run_federation(plan, sites)
    # calibration: the hospital that failed the last round is not asked; the NaN and boosted
    # ones corrupted weights, not statistics, so they are counted
    calibration = read_calibration(outcome.run_dir)
    assert sorted(calibration.sites) == ["site-a", "site-b", "site-boost", "site-c", "site-nan"]
    assert calibration.dropped == [] and len(calibration.failed) == 1
    for row in outcome.history[1:]:
        assert row["sites"] == ["site-a", "site-b", "site-c"]
        assert {(d["site"], d["reason"]) for d in row["dropped"]} == {
            ("site-boost", "norm"),
            ("site-nan", "non-finite"),
        }
        assert len(row["failed"]) == 1 and "injected crash" in row["failed"][0]["reason"]
    clean = {row["round"]: row["auc"] for row in clean_run.history}
    final = outcome.history[-1]
    assert abs(final["auc"] - clean[ROUNDS]) <= 0.02
    ours = CheckpointStore(outcome.run_dir / "checkpoints").latest()
    theirs = CheckpointStore(clean_run.run_dir / "checkpoints").latest()
    for name, value in theirs.arrays.items():
        np.testing.assert_allclose(ours.arrays[name], value, rtol=1e-5, atol=1e-6)
