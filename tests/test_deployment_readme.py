"""The README's deployment, command by command, on localhost: ``pki init --host
superlink.example.org`` (hospitals then connect to 127.0.0.1: loopback is named too), ``vendor
superlink`` (SuperLink + proxy), three hospitals making keys, approving the app by the hash
``vendor app-hash`` prints and joining, the vendor registering them, ``federate --superlink``
building a candidate without ``--sites`` (the vendor never opens a registry), then ``validate``
→ ``release`` → ``publish`` → a console ``update``.

The commands are checked against the README first, so the README cannot drift from what is
tested. Only the gate floors are a test protocol (the tiny model is barely trained; the
production protocol in params.yaml is untouched)."""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests._deploy import (
    DEPLOY_TIMEOUT,
    REPO,
    Processes,
    process_env,
    sonofed,
    start_superlink,
    wait_for_text,
)
from tests._release_world import TEST_PROTOCOL

README_COMMANDS = [
    ("vendor", "pki", "init", "--out", "--host"),
    ("vendor", "superlink", "--pki", "--database", "--host", "--port"),
    ("vendor", "app-hash"),
    ("hospital", "keys", "--out", "--name"),
    ("hospital", "approve-app", "--fab-sha256"),
    ("hospital", "join", "--superlink", "--registry", "--key", "--ca"),
    ("vendor", "register-hospital", "--public-key", "--superlink", "--ca"),
    ("vendor", "federate", "--superlink", "--ca", "--num-sites", "--testset", "--out"),
]


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("### Deployment: only the vendor runs the federation")
    return text[start : text.index("\n### ", start + 10)]


def test_the_readme_documents_these_commands() -> None:
    block = _readme_block().replace("\\\n", " ")
    lines = [line.strip() for line in block.splitlines() if line.strip().startswith("sonofed ")]
    for role, command, *flags in README_COMMANDS:
        found = [line for line in lines if line.startswith(f"sonofed {role} {command}")]
        assert found, f"README lacks `sonofed {role} {command}`"
        assert all(re.search(rf"{flag}\b", found[0]) for flag in flags), (found[0], flags)


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    done = subprocess.run(
        sonofed(*args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-3000:])
    return done


@pytest.mark.slow
@pytest.mark.timeout(DEPLOY_TIMEOUT)
def test_the_readme_deployment_from_pki_to_a_console_update(tiny_world, tmp_path: Path) -> None:
    env = process_env(tmp_path)
    processes = Processes(env, tmp_path)
    vendor, pki = tmp_path / "vendor", tmp_path / "vendor" / "pki"
    vendor.mkdir()
    params = vendor / "params.yaml"
    release_block = yaml.safe_load((REPO / "params.yaml").read_text())["release"]
    params.write_text(yaml.safe_dump({
        "federate": {"rounds": 2, "local_epochs": 1, "min_clients": 3, "fraction_evaluate": 0.0},
        "gates": TEST_PROTOCOL.model_dump(mode="json"), "release": release_block,
    }))  # fmt: skip
    _run(env, "vendor", "pki", "init", "--out", str(pki), "--host", "superlink.example.org")
    try:
        superlink, _ = start_superlink(processes, pki, vendor / "state.db")
        app_hash = _run(env, "vendor", "app-hash").stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", app_hash)
        for name, registry in zip(("site-a", "site-b", "site-c"), tiny_world.registries,
                                  strict=True):  # fmt: skip
            home = tmp_path / name
            home.mkdir()
            (home / "ca.crt").write_bytes((pki / "ca.crt").read_bytes())  # from the vendor
            _run(env, "hospital", "keys", "--out", str(home / "keys"), "--name", name)
            _run(env, "hospital", "approve-app", "--fab-sha256", app_hash, "--approved-apps",
                 str(home / "approved-apps.json"))  # fmt: skip
            processes.start(name, sonofed(
                "hospital", "join", "--superlink", superlink, "--registry", str(registry),
                "--key", str(home / "keys" / f"{name}.key"), "--ca", str(home / "ca.crt"),
                "--approved-apps", str(home / "approved-apps.json"),
                "--port", str(processes.port()),
            ), nice=5)  # fmt: skip
            # as in the README, the vendor registers the key the hospital sent after it joined
            (vendor / f"{name}.pub").write_bytes((home / "keys" / f"{name}.pub").read_bytes())
            _run(env, "vendor", "register-hospital", "--public-key", str(vendor / f"{name}.pub"),
                 "--superlink", superlink, "--ca", str(pki / "ca.crt"),
                 "--flwr-home", str(vendor / "flwr-home"))  # fmt: skip
        candidate = vendor / "candidate"
        federate = processes.run_watching(sonofed(
            "vendor", "federate", "--superlink", superlink, "--ca", str(pki / "ca.crt"),
            "--num-sites", "3", "--testset", str(tiny_world.locked), "--out", str(candidate),
            "--cycle", "1", "--init", str(tiny_world.bundle), "--params", str(params),
            "--flwr-home", str(vendor / "flwr-home"),
        ), watch=["superlink", "site-a", "site-b", "site-c"], timeout=2400)  # fmt: skip
        assert federate.returncode == 0, (
            federate.stderr[-3000:],
            processes.tails(["site-a", "site-b", "site-c"]),
        )
    finally:
        processes.stop()
    assert "hospitals online: 3 of 3 needed" in federate.stderr
    assert "candidate bundle" in federate.stdout
    assert (candidate / "metadata.json").is_file() or any(candidate.iterdir())
    for name in ("site-a", "site-b", "site-c"):
        assert "running approved app FAB sha256 " + app_hash in processes.log(name)

    gates_dir = vendor / "gates"
    _run(env, "vendor", "validate", "--candidate", str(candidate), "--testset",
         str(tiny_world.locked), "--out", str(gates_dir), "--params", str(params))  # fmt: skip
    release = vendor / "release"
    _run(env, "vendor", "release", "--candidate", str(candidate), "--gate-report",
         str(gates_dir / "gate-report.json"), "--out", str(release), "--params", str(params))  # fmt: skip
    repo = vendor / "repo"
    _run(env, "vendor", "publish", "--release", str(release), "--repo", str(repo),
         "--offline-keys", str(vendor / "offline"), "--online-keys", str(vendor / "online"),
         "--init", "--params", str(params))  # fmt: skip
    serve = processes.start("serve", sonofed(
        "vendor", "serve", "--repo", str(repo), "--port", "0",
        "--access-log", str(tmp_path / "access.log"),
    ))  # fmt: skip
    try:
        line = wait_for_text(tmp_path / "serve.log", "serving", timeout=120)
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", line).group(1)
        console = tmp_path / "console"
        _run(env, "console", "provision", "--root", str(repo / "metadata" / "root.json"),
             "--console-id", "readme-console", "--dir", str(console))  # fmt: skip
        deadline = time.monotonic() + 120
        update = _run(env, "console", "update", "--server", url, "--dir", str(console), "--json")
        assert time.monotonic() < deadline
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        processes.stop()
    result = json.loads(update.stdout)
    assert result.get("installed") or result.get("status") in ("installed", "updated"), result
