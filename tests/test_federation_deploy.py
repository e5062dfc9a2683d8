"""A real deployment on localhost: the SuperLink with TLS, a database and node authentication
behind its nginx proxy, hospitals as separate SuperNode processes with registered EC P-384 keys
that run only their approved app, two federated rounds on phantom registries; a SuperNode with
an unregistered key is refused, a hospital that joined before the vendor registered its key is
admitted once it is (``join`` starts its refused SuperNode again), and a hospital whose ClientApp process dies mid-round is
recorded while the round completes with the others.

Deterministic on a loaded machine: ``federate --superlink --num-sites 4`` waits until all four
SuperNodes are online before it submits the run, so round 1 samples all of them (it used to start
as soon as ``min_clients`` were connected, and a slow fourth SuperNode missed round 1)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from federation import protocol
from federation.approval import executor_command
from federation.audit import read_audit
from federation.deployment import (
    NodeKeys,
    Pki,
    init_pki,
    make_node_keys,
    register_node,
    supernode_command,
)
from tests._deploy import (
    DEPLOY_TIMEOUT,
    REPO,
    Processes,
    process_env,
    sonofed,
    start_superlink,
    wait_for_text,
)


@pytest.mark.slow
@pytest.mark.timeout(DEPLOY_TIMEOUT)
def test_superlink_and_three_supernodes_run_two_rounds_and_refuse_an_unknown_key(
    tiny_world, tmp_path: Path
) -> None:
    env = process_env(tmp_path)
    processes = Processes(env, tmp_path)
    pki = init_pki(tmp_path / "pki")
    keys = [
        make_node_keys(tmp_path / "keys", name)
        for name in ("site-a", "site-b", "site-c", "dies", "rogue")
    ]
    approved = tmp_path / "approved-apps.json"
    done = subprocess.run(sonofed(
        "hospital", "approve-app", "--source", str(REPO), "--approved-apps", str(approved),
    ), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    try:
        superlink, _ = start_superlink(processes, tmp_path / "pki", tmp_path / "superlink.db")
        registered = subprocess.run(sonofed(
            "vendor", "register-hospital", "--public-key", str(keys[0].public_key),
            "--superlink", superlink, "--ca", str(pki.ca_cert),
            "--flwr-home", str(tmp_path / "vendor-home"), "--json",
        ), cwd=REPO, env=env, capture_output=True, text=True, timeout=180)  # fmt: skip
        assert registered.returncode == 0, registered.stderr[-2000:]
        assert json.loads(registered.stdout)["node_id"] > 0

        def register(key: NodeKeys) -> None:
            register_node(key.public_key, superlink=superlink, ca_cert=pki.ca_cert,
                          client=Pki.at(tmp_path / "pki").client(),
                          flwr_home=tmp_path / "vendor-home")  # fmt: skip

        for key in (keys[1], keys[3]):  # site-c's key comes later, the rogue's never
            register(key)
        for key, registry in zip(keys[:3], tiny_world.registries, strict=True):
            processes.start(key.private_key.stem, sonofed(
                "hospital", "join", "--superlink", superlink, "--registry", str(registry),
                "--key", str(key.private_key), "--ca", str(pki.ca_cert),
                "--port", str(processes.port()), "--approved-apps", str(approved),
            ), nice=5)  # fmt: skip
        # site-c joined before the vendor registered it: refused, its SuperNode is started again
        wait_for_text(tmp_path / "site-c.log", "flower-supernode exited with code 1; starting "
                      "it again", timeout=600)  # fmt: skip
        register(keys[2])
        dies_port = processes.port()
        processes.start("dies", supernode_command(
            superlink=superlink, ca_cert=pki.ca_cert, private_key=keys[3].private_key,
            registry=tiny_world.registries[0], site_id="site-dies", port=dies_port,
            extra_node_config={"fault": "exit:2"},
        ), nice=5)  # fmt: skip
        processes.start("dies-executor", executor_command(f"127.0.0.1:{dies_port}", approved),
                        nice=5)  # fmt: skip
        rogue = processes.start("rogue", sonofed(
            "hospital", "join", "--superlink", superlink, "--registry", str(tiny_world.registries[0]),
            "--key", str(keys[4].private_key), "--ca", str(pki.ca_cert),
            "--port", str(processes.port()), "--max-retries", "2",
            "--approved-apps", str(approved),
        ))  # fmt: skip
        params = tmp_path / "params.yaml"
        params.write_text("federate:\n  fraction_evaluate: 0.0\n  min_clients: 3\n")
        run_dir = tmp_path / "run"
        hospitals = ["site-a", "site-b", "site-c"]
        federate = processes.run_watching(sonofed(
            "vendor", "federate", "--superlink", superlink, "--ca", str(pki.ca_cert),
            "--testset", str(tiny_world.locked), "--cycle", "1", "--init", str(tiny_world.bundle),
            "--rounds", "2", "--num-sites", "4", "--params", str(params),
            "--run-dir", str(run_dir), "--flwr-home", str(tmp_path / "vendor-home"),
            "--no-package", "--json",
        ), watch=["superlink", *hospitals], timeout=2400)  # fmt: skip
        assert federate.returncode == 0, (federate.stderr[-3000:], processes.tails(hospitals))
        rogue_code = rogue.wait(timeout=180)
    finally:
        processes.stop()
    assert rogue_code != 0
    assert "Failed to activate" in processes.log("rogue")
    assert "starting it again" not in processes.log("rogue")  # --max-retries: no restarts
    assert "Failed to activate" in processes.log("site-c")  # before the vendor registered it
    assert "hospitals online: 4 of 4 needed" in federate.stderr

    history = json.loads(federate.stdout)["history"]
    assert [row["round"] for row in history] == [0, 1, 2]
    assert history[1]["sites"] == ["site-a", "site-b", "site-c", "site-dies"]
    assert history[1]["failed"] == []
    assert history[2]["sites"] == ["site-a", "site-b", "site-c"]
    assert [f["site"] for f in history[2]["failed"]] == ["site-dies"]
    assert all(row["auc"] is not None for row in history)
    received = read_audit(run_dir / "audit.jsonl")
    replies = [e for e in received if "error" not in e and e["message_type"] == "train"]
    assert len(replies) == 7
    # after the last round the three live hospitals returned calibration statistics
    assert sum(e["message_type"] == protocol.CALIBRATE for e in received) == 3
    for entry in replies:
        assert set(entry["metrics"][protocol.METRICS]) <= protocol.TRAIN_METRIC_KEYS
        assert set(entry["configs"][protocol.SITE]) <= protocol.SITE_KEYS
    # every hospital ran the approved app, and said so before running it
    assert "running approved app FAB sha256" in processes.log("site-a")
