"""Federation benchmarks: federated vs central vs single-site, Flower's overhead, aggregation
cost, and forgetting across continual-learning cycles.

    python -m bench.federation --data ../shared/data --out bench/results
    python -m bench.federation --only aggregation,overhead      # some sections only

Sections (each is merged into ``<out>/federation.json`` as soon as it finishes; plots and a
summary ``federation.md`` are written beside it):

- ``aggregation``: screening + FedProx aggregation time and peak extra memory for 10, 100 and
  1,000 client updates of the real network's size (plus MultiKrum for 10 and 100), each count in
  a fresh process.
- ``overhead``: wall time of a Flower round (simulation, warm) against the same local training,
  local validation, screening and aggregation without Flower (a 2-process pool, as Ray uses).
- ``compare``: the three real sites (BUSI, BUS-BRA, BrEaST), one locked patient-disjoint test
  slice (``bench.model.prepare``): federated vs centrally trained vs each site alone, pooled and
  per-site AUC, same recipe and epoch budget.
- ``continual``: each site's cases arrive in three registry versions (BUS-BRA by scanner model,
  the others by case number); three cycles with rehearsal and with naive fine-tuning; AUC on
  the locked set and on every earlier cycle's held-out cases after each cycle, forgetting and
  backward transfer.

- ``calibration``: one model (the ``central`` bundle of ``compare`` when present, else a short
  central training of ``--epochs``), the three real sites' local validation splits: the
  temperature and three operating points computed on the pooled validation cases (exact) and
  federated, from the sites' summed histograms (what the vendor receives), and the sensitivity
  and specificity each set of thresholds reaches on the locked test slice; then the same with
  ε-differentially private histograms (Laplace noise; ``--dp-epsilons``, ``--dp-bins``,
  ``--dp-draws`` noise draws each): their spread and the validation AUC they report.

Every training uses one torch thread per process (two cores shared: more threads oversubscribe).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

SECTIONS = ("aggregation", "overhead", "compare", "continual", "calibration")


# -- shared helpers ------------------------------------------------------------------------


def _recipe(params: Path | None, **overrides: Any):
    from federation.task import train_config_from_params

    return train_config_from_params(params, num_threads=1, **overrides)


def _auc(model, samples) -> dict[str, Any]:
    """AUC (with a 95 % bootstrap interval) and mean Dice of ``model`` on ``samples``."""
    from models import metrics
    from models.train import predict

    predictions = predict(model, samples, engine="onnx")
    y = np.array([s.label for s in samples])
    logits = np.array([p.malignancy_logit for p in predictions])
    auc = metrics.auc_with_ci(y, logits, n_bootstrap=500)
    dice = metrics.dice_scores([p.mask for p in predictions], [s.mask for s in samples])
    return {"n": len(samples), "auc": auc.auc, "ci": [auc.ci_low, auc.ci_high],
            "dice": float(np.mean(dice))}  # fmt: skip


def compare_summary(result: dict[str, Any]) -> dict[str, Any]:
    """The targets of the comparison: federated >= 0.98 x central (pooled), and on every site's
    patients federated >= the best single-site model there (any site's) + 0.02."""
    fed, cen = result["federated"]["auc"], result["central"]["auc"]
    local = result["local_only"]
    fed_sites = result["federated"]["per_site"]
    margin = {
        site: fed_sites[site]["auc"] - max(m["per_site"][site]["auc"] for m in local.values())
        for site in fed_sites
        if all(site in m["per_site"] for m in local.values())
    }
    return {
        "federated_over_central": fed / cen,
        "target_098_central": fed >= 0.98 * cen,
        "federated_minus_best_local": fed - max(m["auc"] for m in local.values()),
        "per_site_federated_minus_best_single_site": margin,
        "target_best_single_site_plus_002": bool(margin) and min(margin.values()) >= 0.02,
    }


def _locked_summary(metadata) -> dict[str, Any]:
    test = metadata.metrics["locked_test"]
    pooled = test["pooled"]
    return {
        "auc": pooled["auc"]["auc"],
        "ci": [pooled["auc"]["ci_low"], pooled["auc"]["ci_high"]],
        "dice": pooled.get("dice_mean"),
        "per_site": {
            site: {"n": block["n"], "auc": block["auc"]["auc"], "dice": block.get("dice_mean")}
            for site, block in test["groups"]["site"].items()
        },
    }


def _write(out: Path, section: str, payload: dict[str, Any]) -> None:
    path = out / "federation.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[section] = payload
    results["machine"] = f"{os.cpu_count()} CPUs, Python {platform.python_version()}"
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")


# -- aggregation ---------------------------------------------------------------------------


class _RssSampler:
    """Peak resident memory of this process while a block runs (sampled every 5 ms)."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> _RssSampler:
        self.start = self.process.memory_info().rss
        self.peak = self.start
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def aggregate_once(n: int, strategy: str) -> dict[str, Any]:
    """Screen and aggregate ``n`` real-sized updates with the vendor's strategy (one process)."""
    import torch
    from flwr.app import ConfigRecord, Message, MessageType, MetricRecord, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from federation import protocol
    from federation.config import FederationConfig
    from federation.screening import Update, screen_updates
    from federation.strategy import build_strategy
    from federation.task import RecordArrays, exchanged_state, layout_of, pack
    from models.train import TrainConfig, build_model

    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    base = exchanged_state(build_model(TrainConfig()))
    size_mb = sum(v.nbytes for v in base.values()) / 1e6
    rng = np.random.default_rng(0)
    replies = []
    for node in range(1, n + 1):
        request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
        arrays = {
            k: v + np.float32(1e-3) * rng.standard_normal(v.shape, dtype=np.float32)
            for k, v in base.items()
        }
        content = RecordDict(
            {
                protocol.ARRAYS: pack(arrays),
                protocol.METRICS: MetricRecord(
                    {k: 1.0 for k in protocol.TRAIN_METRIC_KEYS} | {protocol.WEIGHT: 100}
                ),
                protocol.SITE: ConfigRecord({"site-id": f"site-{node:04d}"}),
            }
        )
        replies.append(Message(content=content, reply_to=request))
    config = FederationConfig(strategy=strategy, min_clients=2, num_malicious=max(1, n // 10))
    layout = layout_of(base)
    vendor = build_strategy(config, num_sites=n, layout=layout)
    reference = pack(base)
    updates = [
        Update(
            m.metadata.src_node_id, f"s{i}", RecordArrays(m.content[protocol.ARRAYS], layout), 100.0
        )
        for i, m in enumerate(replies)
    ]
    vendor.expect(1, reference, range(1, n + 1))
    with _RssSampler() as memory:
        start = time.perf_counter()
        arrays, _ = vendor.aggregate_train(1, replies)
        total = time.perf_counter() - start
    start = time.perf_counter()  # screening alone, for the split (after the warm-up above)
    screen_updates(base, updates, norm_factor=config.screen_norm_factor)
    screening = time.perf_counter() - start
    assert arrays is not None
    return {
        "updates": n,
        "strategy": strategy,
        "update_mb": round(size_mb, 2),
        "updates_held_mb": round(size_mb * n, 1),
        "screening_seconds": round(screening, 3),
        "screen_and_aggregate_seconds": round(total, 3),
        "peak_extra_mb": round((memory.peak - memory.start) / 1e6, 1),
        "rss_before_mb": round(memory.start / 1e6, 1),
    }


def aggregation(args: argparse.Namespace) -> dict[str, Any]:
    import psutil

    rows = []
    for strategy, counts in (("fedprox", (10, 100, 1000)), ("multikrum", (10, 100))):
        for n in counts:
            need = n * 8.0e6 * 1.3 + 2e9
            if psutil.virtual_memory().available < need:
                rows.append({"updates": n, "strategy": strategy, "skipped": "not enough memory"})
                continue
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.federation",
                    "--aggregate-once",
                    str(n),
                    "--strategy",
                    strategy,
                ],
                capture_output=True,
                text=True,
                timeout=3600,
            )
            if done.returncode != 0:
                rows.append({"updates": n, "strategy": strategy, "error": done.stderr[-500:]})
            else:
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    fedprox = [
        r for r in rows if r.get("strategy") == "fedprox" and "screen_and_aggregate_seconds" in r
    ]
    per_update = [r["screen_and_aggregate_seconds"] / r["updates"] for r in fedprox]
    return {
        "rows": rows,
        "seconds_per_update": per_update,
        "linear": bool(per_update) and max(per_update) <= 2.0 * min(per_update),
    }


# -- overhead ------------------------------------------------------------------------------


def _local_round(args: tuple) -> float:
    """The client's work of one round without Flower; returns its seconds."""
    registry, recipe_json, global_npz, epochs, seed = args
    import torch

    from federation.client import local_validation
    from federation.site import load_site, site_seed
    from federation.task import decode_train_config, exchanged_state, load_exchanged
    from models.train import build_model, train_epochs

    torch.set_num_threads(1)
    start = time.perf_counter()
    recipe = decode_train_config(recipe_json)
    site = load_site(
        Path(registry), since=None, rehearsal_size=0, val_fraction=0.15, seed=seed, cycle=0
    )
    with np.load(global_npz) as archive:
        arrays = {k: archive[k] for k in archive.files}
    import dataclasses

    local = dataclasses.replace(recipe, proximal_mu=0.01, seed=site_seed(site.site_id, seed))
    model = build_model(local)
    load_exchanged(model, arrays)
    train_epochs(model, site.train, local, epochs, proximal_to=arrays, progress=False)
    local_validation(model, site.val)
    exchanged_state(model)
    return time.perf_counter() - start


def overhead(args: argparse.Namespace) -> dict[str, Any]:
    from bench.model import prepare
    from federation.config import FederationConfig, RunPaths, SiteSpec
    from federation.server import ServerPlan
    from federation.simulation import run_federation
    from federation.task import encode_train_config, exchanged_state
    from models.train import build_model

    locked, registries = prepare(args.data, args.work, 0.2, 0)
    recipe = _recipe(args.params)
    rounds = args.overhead_rounds
    config = FederationConfig(rounds=rounds, local_epochs=1, fraction_evaluate=0.0)
    run_dir = args.work / "overhead-run"
    plan = ServerPlan(
        config, RunPaths(run_dir, locked), len(registries), recipe=recipe, restart=True
    )
    # Without Flower first: the same clients' work in one process per site, all at once, as the
    # simulation runs them (the sites share the CPUs when they outnumber them).
    global_npz = args.work / "overhead-global.npz"
    np.savez(global_npz, **exchanged_state(build_model(recipe)))
    jobs = [(str(r), encode_train_config(recipe), str(global_npz), 1, 0) for r in registries]
    baseline = []
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter, like a Ray worker
    with ProcessPoolExecutor(max_workers=len(registries), mp_context=spawn) as pool:
        for _ in range(rounds):
            t0 = time.perf_counter()
            client_seconds = list(pool.map(_local_round, jobs))
            baseline.append({"wall": time.perf_counter() - t0, "clients": client_seconds,
                             "load": os.getloadavg()[0]})  # fmt: skip
    start = time.perf_counter()
    outcome = run_federation(plan, [SiteSpec(r) for r in registries])
    total = time.perf_counter() - start
    history = outcome.history
    flower_rounds = [
        history[i]["time"] - history[i - 1]["time"] - history[i]["score_seconds"]
        for i in range(1, len(history))
    ]
    flower_load = os.getloadavg()[0]
    warm_flower = float(np.mean(flower_rounds[1:])) if len(flower_rounds) > 1 else flower_rounds[0]
    warm_plain = float(np.mean([b["wall"] for b in baseline[1:]]))
    return {
        "sites": [Path(r).name for r in registries],
        "rounds": rounds,
        "flower_round_seconds": [round(x, 2) for x in flower_rounds],
        "flower_total_seconds_including_startup": round(total, 1),
        "without_flower_round_seconds": [round(b["wall"], 2) for b in baseline],
        "client_seconds_without_flower": [[round(x, 2) for x in b["clients"]] for b in baseline],
        "load_average_without_flower": [round(b["load"], 2) for b in baseline],
        "load_average_after_flower": round(flower_load, 2),
        "warm_flower_round": round(warm_flower, 2),
        "warm_plain_round": round(warm_plain, 2),
        "overhead_fraction": round(warm_flower / warm_plain - 1.0, 4),
        "note": "round = send weights, 3 local trainings (1 epoch, all at once) + local validation, "
        "receive, screen, aggregate; locked-test scoring excluded on both sides; first round "
        "(Ray start, data load) excluded from the warm means",
    }


# -- compare -------------------------------------------------------------------------------


def _baseline(registries: list[Path], out: Path, recipe, locked: Path, reuse: bool):
    """A centrally trained bundle (all registries, or one: local-only); reused if asked."""
    from models.bundle import load_metadata
    from models.central import train_central

    if reuse and (out / "metadata.json").is_file():
        return load_metadata(out), None
    start = time.perf_counter()
    metadata = train_central(registries, out, config=recipe, testset=locked, progress=False)
    return metadata, time.perf_counter() - start


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from bench.model import prepare
    from federation.candidate import package_candidate
    from federation.config import FederationConfig, RunPaths, SiteSpec
    from federation.server import ServerPlan
    from federation.simulation import run_federation

    locked, registries = prepare(args.data, args.work, 0.2, 0)
    epochs = args.epochs
    recipe = _recipe(args.params, epochs=epochs, patience=max(4, epochs // 2))
    path = args.out / "federation.json"
    previous = (json.loads(path.read_text()) if path.is_file() else {}).get("compare", {})
    result: dict[str, Any] = {"epochs": epochs, "recipe": {"features": recipe.features,
                              "crop": recipe.spec.crop_size, "batch": recipe.batch_size}}  # fmt: skip
    timings = dict(previous.get("seconds", {})) if args.reuse else {}
    central, seconds = _baseline(registries, args.work / "central", recipe, locked, args.reuse)
    if seconds is not None:
        timings["central"] = seconds
    result["central"] = _locked_summary(central)
    print("central", result["central"]["auc"], flush=True)
    result["local_only"] = {}
    for registry in registries:
        out = args.work / f"local-{registry.name}"
        local, seconds = _baseline([registry], out, recipe, locked, args.reuse)
        if seconds is not None:
            timings[f"local-{registry.name}"] = seconds
        result["local_only"][registry.name] = _locked_summary(local)
        print("local", registry.name, result["local_only"][registry.name]["auc"], flush=True)
    rounds, local_epochs = args.fed_rounds, args.fed_local_epochs
    label = f"{rounds} rounds x {local_epochs} epochs, lr {args.fed_lr:g} {args.fed_schedule}"
    label += ", moments kept" if args.fed_keep_optimizer else ", fresh moments each round"
    config = FederationConfig(rounds=rounds, local_epochs=local_epochs, lr=args.fed_lr,
                              lr_schedule=args.fed_schedule, fraction_evaluate=0.0,
                              keep_optimizer=args.fed_keep_optimizer)  # fmt: skip
    run_dir = args.work / "federated-run"
    plan = ServerPlan(
        config, RunPaths(run_dir, locked), len(registries), recipe=recipe, restart=True
    )
    start = time.perf_counter()
    sites = [SiteSpec(r) for r in registries]
    outcome = run_federation(plan, sites)
    metadata = package_candidate(run_dir, args.work / "federated", testset=locked,
                                 history_path=args.work / "federated-history.json")  # fmt: skip
    timings[f"federated ({label})"] = time.perf_counter() - start
    result["federated"] = {"settings": label, **_locked_summary(metadata)}
    result["federated_history"] = [
        {k: row.get(k) for k in ("round", "auc", "dice", "sensitivity", "specificity")}
        for row in outcome.history
    ]
    variants = dict(previous.get("federated_variants", {})) if args.reuse else {}
    if args.reuse and "federated" in previous:
        earlier = previous["federated"]
        variants.setdefault(earlier.get("settings", "first run"), earlier)
    variants[label] = result["federated"]
    result["federated_variants"] = variants
    result["summary"] = compare_summary(result)
    result["seconds"] = {k: round(v, 1) for k, v in timings.items()}
    return result


# -- calibration: federated (histograms) vs pooled (exact) ----------------------------------


def _rates(y: np.ndarray, prob: np.ndarray, points) -> dict[str, dict[str, float]]:
    out = {}
    for mode, threshold in points.thresholds().items():
        called = prob >= threshold
        out[mode] = {
            "threshold": threshold,
            "sensitivity": float(np.mean(called[y == 1])),
            "specificity": float(np.mean(~called[y == 0])),
        }
    return out


def calibration(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from bench.model import prepare
    from federation.site import load_site
    from models import evaluation
    from models.calibration import (
        LogitBins,
        apply_temperature,
        choose_operating_points,
        fit_temperature,
    )
    from models.exceptions import CalibrationError
    from models.inference import OnnxLesionModel
    from models.samples import samples_from_testset
    from models.validation_stats import add_laplace_noise, fit_calibration, validation_statistics

    torch.set_num_threads(1)
    locked, registries = prepare(args.data, args.work, 0.2, 0)
    recipe = _recipe(args.params, epochs=args.epochs, patience=max(4, args.epochs // 2))
    bundle = args.work / "central"
    trained = None
    if not (bundle / "metadata.json").is_file():
        _, trained = _baseline(registries, bundle, recipe, locked, False)
    model = OnnxLesionModel(bundle / "model.onnx", num_threads=1)
    val_fraction = args.val_fraction
    per_site, pooled_samples, pooled_outputs = {}, [], []
    bins = LogitBins(low=-args.logit_limit, high=args.logit_limit, count=args.bins)
    summed = None
    for registry in registries:
        val = load_site(registry, since=None, rehearsal_size=0, val_fraction=val_fraction,
                        seed=0, cycle=0).val  # fmt: skip
        outputs = evaluation.analyse_all(val, model.analyze)
        stats = validation_statistics(val, outputs, bins)
        summed = stats if summed is None else summed.merge(stats)
        per_site[registry.name] = {"benign": stats.benign_cases, "malignant": stats.malignant_cases}
        pooled_samples += val
        pooled_outputs += outputs
    y = np.array([s.label for s in pooled_samples])
    z = np.array([o.malignancy_logit for o in pooled_outputs])
    confidence = recipe.operating_confidence
    t_exact = fit_temperature(z, y)
    exact = choose_operating_points(y, apply_temperature(z, t_exact), confidence=confidence)
    sources_exact, _ = evaluation.choose_descriptor_sources(pooled_samples, pooled_outputs)
    fed = fit_calibration(summed, confidence=confidence)
    from data_registry import LockedTestSet

    test = samples_from_testset(LockedTestSet(locked))
    test_outputs = evaluation.analyse_all(test, model.analyze)
    yt = np.array([s.label for s in test])
    zt = np.array([o.malignancy_logit for o in test_outputs])
    from models import metrics

    result: dict[str, Any] = {
        "model": str(bundle),
        "train_seconds": trained,
        "validation": {
            "fraction": val_fraction,
            "sites": per_site,
            "cases": len(y),
            "malignant": int(y.sum()),
        },
        "bins": bins.model_dump(),
        "locked_cases": len(yt),
        "locked_auc": metrics.auc_with_ci(yt, zt, n_bootstrap=200).auc,
        "pooled_exact": {
            "temperature": t_exact,
            "validation": exact.to_dict(),
            "locked": _rates(yt, apply_temperature(zt, t_exact), exact),
            "descriptor_sources": sources_exact,
        },
        "federated_histograms": {
            "temperature": fed.temperature,
            "validation": fed.operating_points,
            "locked": _rates(yt, apply_temperature(zt, fed.temperature), fed.points()),
            "descriptor_sources": fed.descriptor_sources,
            "validation_auc": fed.validation["auc"]["auc"],
        },
        "validation_auc_exact": metrics.auc_with_ci(y, z, n_bootstrap=200).auc,
    }
    gaps = {}
    for mode in ("high-sensitivity", "high-accuracy", "high-specificity"):
        a, b = (
            result["pooled_exact"]["locked"][mode],
            result["federated_histograms"]["locked"][mode],
        )
        gaps[mode] = {k: b[k] - a[k] for k in ("sensitivity", "specificity")}
    result["federated_minus_pooled_on_locked"] = gaps
    print("calibration: pooled T", t_exact, "federated T", fed.temperature, gaps, flush=True)
    rng = np.random.default_rng(0)
    dp = {}
    bounds = np.cumsum([0] + [sum(v.values()) for v in per_site.values()])
    for count in args.dp_bins:
        coarse = LogitBins(low=-args.logit_limit, high=args.logit_limit, count=count)
        site_stats = [
            validation_statistics(pooled_samples[lo:hi], pooled_outputs[lo:hi], coarse)
            for lo, hi in itertools.pairwise(bounds)
        ]
        for eps in [0.0, *args.dp_epsilons]:
            draws = []
            for _ in range(args.dp_draws if eps else 1):
                total = None
                for stats in site_stats:  # every hospital noises its own; the vendor sums
                    noisy = add_laplace_noise(stats, eps, rng) if eps else stats
                    total = noisy if total is None else total.merge(noisy)
                try:
                    fit = fit_calibration(total, confidence=confidence, n_bootstrap=100)
                except CalibrationError as e:  # a draw the fit cannot use is counted
                    draws.append({"error": str(e)})
                    continue
                rates = _rates(yt, apply_temperature(zt, fit.temperature), fit.points())
                draws.append(
                    {
                        "temperature": fit.temperature,
                        "validation_auc": fit.validation["auc"]["auc"],
                        "locked_sens_at_high_sensitivity": rates["high-sensitivity"]["sensitivity"],
                        "locked_spec_at_high_sensitivity": rates["high-sensitivity"]["specificity"],
                        "locked_spec_at_high_specificity": rates["high-specificity"]["specificity"],
                        "locked_sens_at_high_specificity": rates["high-specificity"]["sensitivity"],
                    }
                )
            ok = [d for d in draws if "error" not in d]
            summary: dict[str, Any] = {"draws": len(draws), "failed": len(draws) - len(ok)}
            for key in ok[0] if ok else {}:
                values = np.array([d[key] for d in ok])
                summary[key] = {
                    "mean": float(values.mean()),
                    "sd": float(values.std()),
                    "p05": float(np.quantile(values, 0.05)),
                }
            label = f"{count} bins, epsilon {eps:g}" if eps else f"{count} bins, exact"
            dp[label] = summary
            print("calibration dp", label, {k: v["mean"] if isinstance(v, dict) else v
                                            for k, v in summary.items()}, flush=True)  # fmt: skip
    result["differential_privacy"] = dp
    return result


# -- continual -----------------------------------------------------------------------------


def _chunks(kind: str, candidates: Sequence[Any]) -> list[list[Any]]:
    """Three arrival batches: by scanner model where the export names it, else by case number."""
    devices = sorted({str(c.fields.get("device")) for c in candidates if c.fields.get("device")})
    if len(devices) >= 3:
        groups = [devices[i::3] for i in range(3)]  # interleave so each batch has cases
        return [[c for c in candidates if str(c.fields.get("device")) in g] for g in groups]
    ordered = sorted(candidates, key=lambda c: str(c.fields.get("case_id", c.source_key)))
    third = -(-len(ordered) // 3)
    return [ordered[i * third : (i + 1) * third] for i in range(3)]


def continual(args: argparse.Namespace) -> dict[str, Any]:
    import shutil

    from bench.model import SITES, prepare
    from data_registry import Exclusion, ingest
    from data_registry.importers import get_importer
    from data_registry.testset import site_id_for
    from federation.candidate import package_candidate
    from federation.config import FederationConfig, RunPaths, SiteSpec
    from federation.server import ServerPlan
    from federation.simulation import run_federation
    from federation.site import load_site
    from models.packaging import load_weights

    locked, _ = prepare(args.data, args.work, 0.2, 0)
    exclusion = Exclusion.load(locked / "exclusion.json")
    root = args.work / "continual"
    shutil.rmtree(root, ignore_errors=True)
    batches = {}
    for kind, folder, assume in SITES:
        candidates = list(get_importer(kind)(args.data / folder, assume_reference=assume))
        batches[site_id_for(kind, args.data / folder)] = (kind, _chunks(kind, candidates))
    registries = [root / "registries" / site for site in batches]
    recipe = _recipe(args.params)
    val_fraction = 0.25
    rounds, local_epochs = args.cycle_rounds, 2

    def arrive(cycle: int) -> dict[str, int]:
        counts = {}
        for site, (kind, chunks) in batches.items():
            summary = ingest(chunks[cycle], root / "registries" / site, site_id=site,
                             source=f"{kind}:batch{cycle}", exclusion=exclusion)  # fmt: skip
            counts[site] = summary.eligible
        return counts

    def held_out(cycle: int) -> list:
        """Validation cases of the batch that arrived in ``cycle`` (never trained on)."""
        from data_registry import Registry

        samples = []
        for path in registries:
            registry = Registry(path)
            ids = {
                e.case.case_id for e in registry.eligible(since=cycle) if e.added_in == cycle + 1
            }
            site = load_site(
                path, since=None, rehearsal_size=0, val_fraction=val_fraction, seed=0, cycle=0
            )
            samples += [s for s in site.val if s.case_id in ids]
        return samples

    def run_cycle(cycle: int, init: Path | None, rehearsal: int, name: str) -> Path:
        config = FederationConfig(rounds=rounds, local_epochs=local_epochs, cycle=cycle,
                                  rehearsal_size=rehearsal, val_fraction=val_fraction,
                                  lr=recipe.lr / (1 if cycle == 0 else 3), fraction_evaluate=0.0)  # fmt: skip
        run_dir = root / f"{name}-run"
        plan = ServerPlan(config, RunPaths(run_dir, locked, init=init), len(registries),
                          recipe=recipe, restart=True)  # fmt: skip
        sites = [SiteSpec(r) for r in registries]
        run_federation(plan, sites)
        package_candidate(run_dir, root / name, testset=locked,
                          history_path=root / f"{name}-history.json")  # fmt: skip
        return root / name

    arrivals = {0: arrive(0)}
    bundles = {("both", 0): run_cycle(0, None, 0, "cycle0")}
    evaluation_sets = {0: held_out(0)}
    for cycle in (1, 2):
        arrivals[cycle] = arrive(cycle)
        evaluation_sets[cycle] = held_out(cycle)
        for arm, rehearsal in (("rehearsal", args.rehearsal), ("naive", 0)):
            parent = bundles.get((arm, cycle - 1)) or bundles[("both", 0)]
            bundles[(arm, cycle)] = run_cycle(cycle, parent, rehearsal, f"{arm}-cycle{cycle}")
            print("cycle", cycle, arm, flush=True)
    result: dict[str, Any] = {
        "arrivals_eligible": arrivals,
        "evaluation_cases": {k: len(v) for k, v in evaluation_sets.items()},
        "rounds_per_cycle": rounds,
        "local_epochs": local_epochs,
        "rehearsal_size": args.rehearsal,
        "arms": {},
    }
    from models.bundle import load_metadata

    for arm in ("rehearsal", "naive"):
        matrix, locked_aucs = [], []
        for t in range(3):
            bundle = bundles[("both", 0)] if t == 0 else bundles[(arm, t)]
            model, _ = load_weights(bundle)
            row = [_auc(model, evaluation_sets[k])["auc"] for k in range(t + 1)]
            matrix.append(row + [None] * (2 - t))
            locked_aucs.append(_locked_summary(load_metadata(bundle))["auc"])
        from federation.continual import forgetting_summary

        result["arms"][arm] = {
            "auc_matrix": matrix,
            "locked_auc_after_cycle": locked_aucs,
            **forgetting_summary(matrix),
        }
    return result


# -- plots and summary ---------------------------------------------------------------------


def plots(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads((out / "federation.json").read_text())
    if "aggregation" in results:
        rows = [r for r in results["aggregation"]["rows"] if "screen_and_aggregate_seconds" in r]
        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for strategy in sorted({r["strategy"] for r in rows}):
            mine = [r for r in rows if r["strategy"] == strategy]
            n = [r["updates"] for r in mine]
            axes[0].loglog(
                n, [r["screen_and_aggregate_seconds"] for r in mine], "o-", label=strategy
            )
            axes[1].loglog(n, [max(r["peak_extra_mb"], 1.0) for r in mine], "o-", label=strategy)
        axes[0].set(xlabel="client updates", ylabel="seconds", title="screening + aggregation")
        axes[1].set(xlabel="client updates", ylabel="MB", title="peak extra memory")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "federation-aggregation.png", dpi=120)
        plt.close(fig)
    if "compare" in results:
        c = results["compare"]
        names = ["federated", "central", *[f"local {k}" for k in c["local_only"]]]
        values = [c["federated"]["auc"], c["central"]["auc"],
                  *[v["auc"] for v in c["local_only"].values()]]  # fmt: skip
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(names, values, color=["C0", "C1", "C2", "C2", "C2"][: len(names)])
        ax.set(
            ylabel="locked-test AUC", ylim=(0.5, 1.0), title="federated vs central vs single site"
        )
        fig.tight_layout()
        fig.savefig(out / "federation-compare.png", dpi=120)
        plt.close(fig)
    if "continual" in results:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for arm, block in results["continual"]["arms"].items():
            first = [row[0] for row in block["auc_matrix"]]
            ax.plot([0, 1, 2], first, "o-", label=f"{arm}: cycle-0 cases")
            ax.plot([0, 1, 2], block["locked_auc_after_cycle"], "s--", label=f"{arm}: locked set")
        ax.set(xlabel="after cycle", ylabel="AUC", title="forgetting across cycles")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "federation-continual.png", dpi=120)
        plt.close(fig)


def _markdown(results: dict[str, Any]) -> str:
    lines = ["# Federation benchmarks", "", f"Machine: {results.get('machine')}", ""]
    if "compare" in results:
        c = results["compare"]
        lines += ["## Federated vs central vs single site (locked-test AUC)", "",
                  "| model | pooled AUC [95% CI] | " + " | ".join(c["central"]["per_site"]) + " |",
                  "|---|---|" + "---|" * len(c["central"]["per_site"])]  # fmt: skip
        models = {"federated": c["federated"], "central": c["central"],
                  **{f"local {k}": v for k, v in c["local_only"].items()}}  # fmt: skip
        for name, block in models.items():
            sites = " | ".join(
                f"{block['per_site'][s]['auc']:.3f}" for s in c["central"]["per_site"]
            )
            lines.append(
                f"| {name} | {block['auc']:.3f} [{block['ci'][0]:.3f}, {block['ci'][1]:.3f}] | {sites} |"
            )
        for label, block in c.get("federated_variants", {}).items():
            lines.append(f"- federated, {label}: pooled AUC {block['auc']:.3f}")
        lines += ["", f"Summary (latest federated run): `{json.dumps(c['summary'])}`", ""]
    if "overhead" in results:
        o = results["overhead"]
        lines += ["## Flower overhead", "",
                  f"warm round with Flower {o['warm_flower_round']} s, without {o['warm_plain_round']} s: "
                  f"overhead {100 * o['overhead_fraction']:.1f} % (target <= 15 %)", ""]  # fmt: skip
    if "aggregation" in results:
        lines += [
            "## Screening + aggregation",
            "",
            "| strategy | updates | held MB | seconds | peak extra MB |",
            "|---|---|---|---|---|",
        ]
        for r in results["aggregation"]["rows"]:
            if "screen_and_aggregate_seconds" in r:
                lines.append(
                    f"| {r['strategy']} | {r['updates']} | {r['updates_held_mb']} | {r['screen_and_aggregate_seconds']} | {r['peak_extra_mb']} |"
                )
            else:
                lines.append(
                    f"| {r['strategy']} | {r['updates']} | – | {r.get('skipped') or 'error'} | – |"
                )
        lines.append("")
    if "continual" in results:
        lines += ["## Continual cycles", ""]
        for arm, block in results["continual"]["arms"].items():
            lines.append(f"- {arm}: AUC matrix {block['auc_matrix']}, locked {block['locked_auc_after_cycle']}, "
                         f"forgetting {block['forgetting']}, BWT {block['bwt']}")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/bench-federation"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--params",
        type=Path,
        help="a params file whose `train` block sets the recipe (default: the code's validated "
        "real-data recipe; params.yaml holds the phantom pipeline's compact one)",
    )
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--epochs", type=int, default=12, help="epoch budget (compare)")
    parser.add_argument("--fed-rounds", type=int, default=6, help="federated rounds (compare)")
    parser.add_argument("--fed-local-epochs", type=int, default=2)
    parser.add_argument("--fed-lr", type=float, default=3e-3, help="peak local rate")
    parser.add_argument(
        "--fed-schedule", choices=("onecycle", "cosine", "constant"), default="onecycle"
    )
    parser.add_argument(
        "--fed-keep-optimizer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="hospitals keep their AdamW moments across rounds",
    )
    parser.add_argument("--reuse", action="store_true", help="reuse trained baselines (compare)")
    parser.add_argument("--overhead-rounds", type=int, default=3)
    parser.add_argument("--cycle-rounds", type=int, default=3)
    parser.add_argument("--rehearsal", type=int, default=64)
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="each site's validation share (calibration; params.yaml's)")  # fmt: skip
    parser.add_argument("--bins", type=int, default=4000, help="logit bins (calibration)")
    parser.add_argument("--logit-limit", type=float, default=20.0, help="binned logit range ±")
    parser.add_argument("--dp-epsilons", type=lambda t: [float(v) for v in t.split(",")],
                        default=[0.5, 1.0, 2.0, 4.0, 8.0], help="Laplace epsilons (calibration)")  # fmt: skip
    parser.add_argument("--dp-bins", type=lambda t: [int(v) for v in t.split(",")],
                        default=[40, 160], help="coarse bin counts tried with noise")  # fmt: skip
    parser.add_argument("--dp-draws", type=int, default=50, help="noise draws per setting")
    parser.add_argument("--aggregate-once", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="fedprox", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.aggregate_once:
        print(json.dumps(aggregate_once(args.aggregate_once, args.strategy)))
        return
    chosen = [s for s in (args.only or ",".join(SECTIONS)).split(",") if s]
    needs_data = {"overhead", "compare", "continual", "calibration"} & set(chosen)
    if needs_data and not args.data.is_dir():
        raise SystemExit(f"no real data at {args.data}; sections {sorted(needs_data)} need it")
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    for section in chosen:
        start = time.perf_counter()
        payload = globals()[section](args)
        payload["section_seconds"] = round(time.perf_counter() - start, 1)
        _write(args.out, section, payload)
        plots(args.out)
        results = json.loads((args.out / "federation.json").read_text())
        (args.out / "federation.md").write_text(_markdown(results))
        print(f"{section}: done in {payload['section_seconds']} s", flush=True)


if __name__ == "__main__":
    main()
