"""The console benchmark, run the way bench.model runs it: in a process of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import console


def test_fresh_process_benchmark_times_every_case_and_stage(tiny_world) -> None:
    result = console.measure_in_fresh_process(
        tiny_world.bundle, tiny_world.locked, n_cases=2, timeout=600
    )
    for runtime in ("onnxruntime", "pytorch_eager"):
        block = result[runtime]
        assert block["cases"] == 2 and block["runs"] == 6
        stages = block["all_runs"]["stages_p50_ms"]
        assert set(stages) == set(console.STAGES)
        total = block["all_runs"]["total"]
        assert 0 < total["p50_ms"] <= total["p95_ms"]
        assert sum(stages.values()) <= total["p95_ms"] * 1.5
    assert result["one_image_process"]["runs"] == 5
    assert result["one_image_process"]["heavy_libraries_loaded"] == "[]"
    assert result["onnx_mb"] > 0


def test_fresh_process_benchmark_names_its_failure(tiny_world, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match=r"bench\.console failed.*no such folder"):
        console.measure_in_fresh_process(tmp_path / "absent", tiny_world.locked, 2, timeout=600)
