"""A real deployment on localhost: a SuperLink with TLS, a database and node authentication,
hospitals as separate SuperNode processes with registered EC P-384 keys, two federated rounds
on phantom registries; a SuperNode with an unregistered key is refused, and a hospital whose
ClientApp process dies mid-round is recorded while the round completes with the others."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from federation import protocol
from federation.audit import read_audit
from federation.deployment import init_pki, make_node_keys, register_node, supernode_command

REPO = Path(__file__).resolve().parents[1]
SONOFED = [sys.executable, "-m", "sonofed.cli"]


def _sonofed(*args: str) -> list[str]:
    return [*SONOFED, *args]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


class _Processes:
    """Processes this test started; stopped (and their children) however the test ends.

    The SuperLink and SuperNodes start detached ``flower-superexec`` helpers that point at the
    ports given here; those are found by their ``--runtime-api-address`` and stopped too.
    """

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs, self.started, self.ports = env, logs, [], []

    def port(self) -> int:
        self.ports.append(_free_port())
        return self.ports[-1]

    def _helpers(self) -> list[psutil.Process]:
        addresses = {f"127.0.0.1:{port}" for port in self.ports}
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            cmdline = process.info["cmdline"] or []
            if process.pid != os.getpid() and addresses & set(cmdline):
                found.append(process)
        return found

    def start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append((process, log))
        return process

    def stop(self) -> None:
        family = self._helpers()
        for process, _ in self.started:
            with contextlib.suppress(psutil.NoSuchProcess):
                family += psutil.Process(process.pid).children(recursive=True)
        for process, _ in self.started:
            if process.poll() is None:
                process.terminate()
        for process, log in self.started:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        for child in family + self._helpers():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


@pytest.mark.slow
def test_superlink_and_three_supernodes_run_two_rounds_and_refuse_an_unknown_key(
    tiny_world, tmp_path: Path
) -> None:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    processes = _Processes(env, tmp_path)
    pki = init_pki(tmp_path / "pki")
    port = processes.port()
    superlink = f"127.0.0.1:{port}"
    keys = [
        make_node_keys(tmp_path / "keys", name)
        for name in ("site-a", "site-b", "site-c", "dies", "rogue")
    ]
    try:
        processes.start("superlink", _sonofed(
            "vendor", "superlink", "--pki", str(tmp_path / "pki"),
            "--database", str(tmp_path / "superlink.db"), "--port", str(port),
        ))  # fmt: skip
        _wait_for_port(port)
        time.sleep(1.0)
        registered = subprocess.run(_sonofed(
            "vendor", "register-hospital", "--public-key", str(keys[0].public_key),
            "--superlink", superlink, "--ca", str(pki.ca_cert),
            "--flwr-home", str(tmp_path / "vendor-home"), "--json",
        ), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert registered.returncode == 0, registered.stderr[-2000:]
        assert json.loads(registered.stdout)["node_id"] > 0
        for key in keys[1:4]:  # the rogue's key is never registered
            register_node(key.public_key, superlink=superlink, ca_cert=pki.ca_cert,
                          flwr_home=tmp_path / "vendor-home")  # fmt: skip
        for key, registry in zip(keys[:3], tiny_world.registries, strict=True):
            processes.start(key.private_key.stem, _sonofed(
                "hospital", "join", "--superlink", superlink, "--registry", str(registry),
                "--key", str(key.private_key), "--ca", str(pki.ca_cert),
                "--port", str(processes.port()),
            ))  # fmt: skip
        processes.start("dies", supernode_command(
            superlink=superlink, ca_cert=pki.ca_cert, private_key=keys[3].private_key,
            registry=tiny_world.registries[0], site_id="site-dies", port=processes.port(),
            extra_node_config={"fault": "exit:2"},
        ))  # fmt: skip
        rogue = processes.start("rogue", _sonofed(
            "hospital", "join", "--superlink", superlink, "--registry", str(tiny_world.registries[0]),
            "--key", str(keys[4].private_key), "--ca", str(pki.ca_cert),
            "--port", str(processes.port()), "--max-retries", "2",
        ))  # fmt: skip
        params = tmp_path / "params.yaml"
        params.write_text("federate:\n  fraction_evaluate: 0.0\n  min_clients: 3\n")
        run_dir = tmp_path / "run"
        federate = subprocess.run(_sonofed(
            "vendor", "federate", "--superlink", superlink, "--ca", str(pki.ca_cert),
            "--testset", str(tiny_world.locked), "--cycle", "1", "--init", str(tiny_world.bundle),
            "--rounds", "2", "--num-sites", "4", "--params", str(params),
            "--run-dir", str(run_dir), "--flwr-home", str(tmp_path / "vendor-home"),
            "--no-package", "--json",
        ), cwd=REPO, env=env, capture_output=True, text=True, timeout=540)  # fmt: skip
        assert federate.returncode == 0, federate.stderr[-3000:]
        rogue_code = rogue.wait(timeout=120)
    finally:
        processes.stop()
    assert rogue_code != 0
    assert "Failed to activate" in (tmp_path / "rogue.log").read_text(errors="replace")

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
