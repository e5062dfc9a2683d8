"""Console benchmark: image decode to report JSON, stage by stage, onnxruntime beside PyTorch.

For a model bundle and a locked test set, every case is analysed ``--repeats`` times (2 threads
each runtime) and timed by stage: ``decode`` (PNG to array), ``preprocess`` (crops),
``network``, ``postprocess`` (masks back to the image), ``descriptors`` (lexicon rules on the
mask) and ``report`` (the report dict and its JSON). Percentiles are given over all runs and
over each case's fastest run (what the case costs when nothing else competes for the cores; the
machine's load average is recorded beside them), and the CPU time the process spent (all its
threads), which other processes' load does not inflate: on an idle machine the wall time of a
run lies between half of it (both threads always busy) and all of it. It also times whole one-image
``sonofed console analyze`` processes, lists the heavy libraries such a process loaded, and
reports the ONNX model's size.

    python -m bench.console --bundle runs/bench-model/central --testset runs/bench-model/locked

Writes ``<out>/console.json`` and ``<out>/console.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("decode", "preprocess", "network", "postprocess", "fusion", "descriptors", "report")
HEAVY = ("torch", "scipy", "sklearn", "skimage", "matplotlib")
REPO = Path(__file__).resolve().parents[1]


class _TorchModel:
    """The bundle's PyTorch network behind the same ``analyze`` call as the ONNX model."""

    def __init__(self, bundle: Path) -> None:
        import torch

        from models.packaging import load_weights
        from models.train import torch_runner

        torch.set_num_threads(2)
        self.network, config = load_weights(bundle)
        self.spec = config.spec
        self.heads = self.network.head_vocabularies
        self.runner = torch_runner(self.network)

    def analyze(self, image, seed):
        from models.inference import analyze_image

        return analyze_image(image, seed, self.spec, self.runner, self.heads)


def _percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p95_ms": round(float(np.percentile(a, 95)), 2),
        "mean_ms": round(float(a.mean()), 2),
    }


def time_analyser(analyser: Any, cases: list[tuple[Path, tuple[int, int], str]], repeats: int):
    """Per-run stage timings of decode → analysis → report JSON for every case."""
    from data_registry.images import read_grey

    path, seed, case_id = cases[0]
    analyser.analyze(read_grey(path), seed, case_id=case_id)  # warm-up
    runs: list[list[dict[str, float]]] = []
    for path, seed, case_id in cases:
        per_case = []
        for _ in range(repeats):
            cpu = time.process_time()
            start = time.perf_counter()
            image = read_grey(path)
            decoded = time.perf_counter()
            analysis = analyser.analyze(image, seed, case_id=case_id)
            json.dumps(analysis.report)
            end = time.perf_counter()
            row = {"decode": (decoded - start) * 1000.0, **analysis.timings}
            row["report"] = (
                row.get("report", 0.0) + (end - decoded) * 1000.0 - sum(analysis.timings.values())
            )
            row["total"] = (end - start) * 1000.0
            row["cpu"] = (time.process_time() - cpu) * 1000.0
            per_case.append(row)
        runs.append(per_case)
    return runs


def summarise(runs: list[list[dict[str, float]]]) -> dict[str, Any]:
    """Percentiles over all runs and over each case's fastest run, total and per stage."""
    flat = [row for per_case in runs for row in per_case]
    best = [min(per_case, key=lambda r: r["total"]) for per_case in runs]
    out: dict[str, Any] = {"cases": len(runs), "runs": len(flat)}
    for name, rows in (("all_runs", flat), ("fastest_run_per_case", best)):
        out[name] = {
            "total": _percentiles([r["total"] for r in rows]),
            "cpu": _percentiles([r["cpu"] for r in rows]),
        }
        out[name]["stages_p50_ms"] = {
            s: round(float(np.median([r.get(s, 0.0) for r in rows])), 2) for s in STAGES
        }
    return out


def process_seconds(bundle: Path, image: Path, seed: tuple[int, int], n: int) -> dict[str, Any]:
    """Wall time of whole one-image ``sonofed console analyze`` processes, and what they load."""
    script = (
        "import sys\nfrom sonofed.cli import main\ncode = main(sys.argv[1:])\n"
        f"print('LOADED', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    times, loaded = [], None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            args = [
                sys.executable, "-c", script, "console", "analyze", "--model", str(bundle),
                "--image", str(image), "--seed", f"{seed[0]},{seed[1]}", "--out", f"{tmp}/{i}",
            ]  # fmt: skip
            start = time.perf_counter()
            proc = subprocess.run(args, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if proc.returncode != 0:
                raise SystemExit(f"console analyze failed: {proc.stderr.strip()[-500:]}")
            line = [x for x in proc.stderr.splitlines() if x.startswith("LOADED")][-1]
            loaded = line.split(" ", 1)[1]
    return {
        "runs": n,
        "median_s": round(float(np.median(times)), 3),
        "min_s": round(float(min(times)), 3),
        "max_s": round(float(max(times)), 3),
        "heavy_libraries_loaded": loaded,
    }


def measure(bundle: Path, testset: Path, n_cases: int, repeats: int = 3, processes: int = 5):
    """The whole console benchmark for one bundle (see the module docstring)."""
    from data_registry import LockedTestSet
    from models.analysis import LesionAnalyser

    locked = LockedTestSet(testset)
    cases = [
        (locked.root / r["image"], (r["seed"]["x"], r["seed"]["y"]), r["case_id"])
        for r in locked.cases[:n_cases]
    ]
    load_before = os.getloadavg()
    onnx = LesionAnalyser(bundle, num_threads=2)
    result: dict[str, Any] = {"onnxruntime": summarise(time_analyser(onnx, cases, repeats))}
    eager = LesionAnalyser(bundle, num_threads=2)
    eager.model = _TorchModel(bundle)
    result["pytorch_eager"] = summarise(time_analyser(eager, cases, repeats))
    result["speedup_p50"] = round(
        result["pytorch_eager"]["all_runs"]["total"]["p50_ms"]
        / result["onnxruntime"]["all_runs"]["total"]["p50_ms"],
        2,
    )
    path, seed, _ = cases[0]
    result["one_image_process"] = process_seconds(bundle, path, seed, processes)
    result["onnx_mb"] = round((bundle / "model.onnx").stat().st_size / 1e6, 2)
    result["load_average_1min"] = [round(load_before[0], 2), round(os.getloadavg()[0], 2)]
    result["threads"] = 2
    result["cpus"] = os.cpu_count()
    return result


def measure_in_fresh_process(
    bundle: Path, testset: Path, n_cases: int, timeout: float | None = None
) -> dict[str, Any]:
    """:func:`measure` run by ``python -m bench.console`` in a new process.

    A console process never trained a network: measured inside the training process, the same
    bundle ran p50 19.1 / p95 22.1 ms against 15.6 / 18.6 ms in a process of its own (the cause
    was not isolated; torch is loaded there, with its thread pools and the training's memory).
    """
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "bench.console", "--bundle", str(bundle)]
        command += ["--testset", str(testset), "--cases", str(n_cases), "--out", out]
        proc = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"bench.console failed (exit {proc.returncode}): {tail}")
        return json.loads((Path(out) / "console.json").read_text())


def markdown(result: dict[str, Any]) -> str:
    """The benchmark as a markdown section."""
    lines = [
        "| runtime (2 threads) | runs | p50 ms | p95 ms | fastest run per case: p50 / p95 ms "
        "| CPU time p50 / p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("onnxruntime", "pytorch_eager"):
        block = result[name]
        a, b = block["all_runs"]["total"], block["fastest_run_per_case"]["total"]
        lines.append(
            f"| {name} | {block['runs']} | {a['p50_ms']} | {a['p95_ms']} | "
            f"{b['p50_ms']} / {b['p95_ms']} | "
            f"{block['all_runs']['cpu']['p50_ms']} / {block['all_runs']['cpu']['p95_ms']} |"
        )
    lines += ["", "| stage (p50 ms, all runs) | " + " | ".join(STAGES) + " |"]
    lines.append("|---" * (len(STAGES) + 1) + "|")
    for name in ("onnxruntime", "pytorch_eager"):
        stages = result[name]["all_runs"]["stages_p50_ms"]
        lines.append(f"| {name} | " + " | ".join(str(stages.get(s, "n/a")) for s in STAGES) + " |")
    proc = result["one_image_process"]
    lines += [
        "",
        f"One-image `sonofed console analyze` process: median {proc['median_s']} s "
        f"(min {proc['min_s']}, max {proc['max_s']}, {proc['runs']} runs); heavy libraries "
        f"loaded: {proc['heavy_libraries_loaded']}. ONNX model: {result['onnx_mb']} MB. "
        f"Load average (1 min) before/after: {result['load_average_1min']} on "
        f"{result['cpus']} CPUs.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("runs/bench-model/central"))
    parser.add_argument("--testset", type=Path, default=Path("runs/bench-model/locked"))
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=5)
    args = parser.parse_args()
    for path in (args.bundle, args.testset):
        if not path.is_dir():
            raise SystemExit(f"{path}: no such folder (run python -m bench.model first)")
    result = measure(args.bundle, args.testset, args.cases, args.repeats, args.processes)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "console.json").write_text(json.dumps(result, indent=2) + "\n")
    text = "# Console latency (image decode to report JSON)\n\n" + markdown(result)
    (args.out / "console.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
