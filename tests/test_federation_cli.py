"""The federation commands: argument errors, PKI and keys, and a vendor process killed mid-run
that resumes from its checkpoint to the planned round and writes the candidate bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from federation.continual import since_from_bundle
from sonofed.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_federate_refuses_a_later_cycle_without_the_released_model(tiny_world, capsys) -> None:
    sites = ",".join(str(p) for p in tiny_world.registries)
    code = main(["vendor", "federate", "--sites", sites, "--testset", str(tiny_world.locked),
                 "--cycle", "1"])  # fmt: skip
    assert code == 2
    assert "--init" in capsys.readouterr().err
    code = main(["vendor", "federate", "--sites", "nowhere", "--testset", str(tiny_world.locked)])
    assert code == 2
    assert "not a registry" in capsys.readouterr().err


@pytest.mark.slow
def test_federate_prints_one_line_per_round_and_a_calibrated_candidate(
    tiny_world, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "candidate"
    code = main(["vendor", "federate", "--sites", ",".join(str(p) for p in tiny_world.registries),
                 "--testset", str(tiny_world.locked), "--cycle", "1", "--init", str(tiny_world.bundle),
                 "--rounds", "1", "--out", str(out), "--params", str(tmp_path / "none.yaml")])  # fmt: skip
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    assert len(rounds) == 2 and "locked-test AUC" in rounds[0]
    assert rounds[1].endswith("sites site-a,site-b,site-c")
    assert any(
        line.startswith("calibrated at the hospitals (site-a, site-b, site-c") for line in lines
    )
    metadata = json.loads((out / "metadata.json").read_text())
    assert metadata["lineage"]["calibration"]["round"] == 1
    assert "histograms" in metadata["metrics"]["validation"]["from"]


def test_pki_and_keys_commands(tmp_path: Path, capsys) -> None:
    assert main(["vendor", "pki", "init", "--out", str(tmp_path / "pki"), "--json"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert Path(paths["ca_cert"]).is_file() and Path(paths["server_key"]).is_file()
    assert main(["vendor", "pki", "init", "--out", str(tmp_path / "pki")]) == 2
    assert "already holds a CA" in capsys.readouterr().err
    assert (
        main(["hospital", "keys", "--out", str(tmp_path / "keys"), "--name", "site-a", "--json"])
        == 0
    )
    keys = json.loads(capsys.readouterr().out)
    assert Path(keys["public_key"]).read_text().startswith("ecdsa-sha2-nistp384 ")
    code = main(["hospital", "join", "--superlink", "127.0.0.1:1", "--registry", str(tmp_path),
                 "--key", keys["private_key"], "--ca", paths["ca_cert"]])  # fmt: skip
    assert code == 2 and "not a registry" in capsys.readouterr().err


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_a_killed_vendor_resumes_from_its_checkpoint(tiny_world, tmp_path: Path) -> None:
    out = tmp_path / "candidate"
    command = [
        sys.executable, "-m", "sonofed.cli", "vendor", "federate",
        "--sites", ",".join(str(p) for p in tiny_world.registries),
        "--testset", str(tiny_world.locked),
        "--cycle", "1", "--init", str(tiny_world.bundle),
        "--rounds", "2", "--out", str(out), "--params", str(tmp_path / "none.yaml"),
        "--json",
    ]  # fmt: skip
    latest = out.with_name("candidate-run") / "checkpoints" / "LATEST"
    first = subprocess.Popen(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    family: list[psutil.Process] = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and first.poll() is None:
        family = _descendants(first.pid) or family
        if latest.is_file() and int(latest.read_text() or 0) >= 1:
            break
        time.sleep(0.2)
    assert first.poll() is None, "the run ended before it could be killed"
    family += _descendants(first.pid)
    os.killpg(first.pid, signal.SIGKILL)  # the vendor process and everything it started
    first.wait(timeout=30)
    for process in family:
        if process.is_running():
            process.kill()
    killed_at = int(latest.read_text())
    assert killed_at == 1
    assert not (out / "metadata.json").exists()

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert second.returncode == 0, second.stderr[-3000:]
    result = json.loads(second.stdout)
    assert result["resumed_from"] == killed_at
    assert result["final_round"] == 2
    assert [row["round"] for row in result["history"]] == [0, 1, 2]
    for row in result["history"]:
        assert {"round", "auc", "sensitivity", "specificity", "dice", "sites", "dropped"} <= set(
            row
        )
    metadata = json.loads((out / "metadata.json").read_text())
    lineage = metadata["lineage"]
    assert lineage["kind"] == "federated" and lineage["cycle"] == 1 and lineage["rounds"] == 2
    assert lineage["resumed_from"] == killed_at
    assert lineage["parent"]["version"] == "1.0.0" and metadata["version"] == "1.1.0"
    assert set(lineage["registries"]) == {"site-a", "site-b", "site-c"}
    assert lineage["locked_test_manifest"] == tiny_world.locked_set.verify()
    # the next cycle trains on what each registry gained after these versions
    assert since_from_bundle(out) == {"site-a": 1, "site-b": 1, "site-c": 1}
    saved = json.loads((tmp_path / "federate-history.json").read_text())
    assert [row["round"] for row in saved] == [0, 1, 2]
