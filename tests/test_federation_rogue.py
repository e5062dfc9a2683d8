"""Only the vendor runs the federation: every attempt of a party that holds ``ca.crt`` (and a
registered hospital's key, or a client certificate of its own) is refused, with real processes
on 127.0.0.1: ``sonofed vendor superlink`` (flower-superlink on loopback + nginx), a hospital's
``sonofed hospital join``, and the attacker's own ``flwr`` CLI and Fleet client.

Each attempt records what refused it: ``proxy 403`` (nginx: Control API without the vendor's
client certificate), ``proxy 400`` (nginx: a client certificate of another CA), ``flower``
(the SuperLink: node (un)registration through the Fleet API is disabled with node auth), and
``hospital`` (the hospital's executor: FAB sha256 not approved, before any of its code ran)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from federation.deployment import (
    Pki,
    fab_hash,
    init_pki,
    list_nodes,
    make_node_keys,
    register_node,
    submit_run,
    wait_for_nodes,
)
from tests._deploy import (
    DEPLOY_TIMEOUT,
    REPO,
    Processes,
    flwr_json,
    process_env,
    sonofed,
    start_superlink,
    wait_for_text,
    write_flwr_connection,
)

MARKER_CODE = (
    "import sys as _s, pathlib as _p\n"
    "with _p.Path({marker!r}).open('a') as _f:\n"
    "    _f.write(_s.argv[0] + '\\n')\n"
)


def _modified_app(root: Path, marker: Path) -> Path:
    """A copy of this app whose ClientApp module writes ``marker`` as soon as it is imported."""
    for pattern in ("federation/**/*.py", "models/**/*.py", "data_registry/**/*.py"):
        for path in REPO.glob(pattern):
            target = root / path.relative_to(REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    shutil.copy2(REPO / "pyproject.toml", root / "pyproject.toml")
    client_app = root / "federation" / "client_app.py"
    text = client_app.read_text()
    head, sep, rest = text.partition("from __future__ import annotations\n")
    client_app.write_text(head + sep + MARKER_CODE.format(marker=str(marker)) + rest)
    return root


def _refused(payload: dict, status: int) -> bool:
    message = str(payload.get("error-message", ""))
    return payload.get("success") is False and f"{status} " in message


@pytest.mark.slow
@pytest.mark.timeout(DEPLOY_TIMEOUT)
def test_only_the_vendor_can_register_run_list_stop_or_pull_and_hospitals_refuse_other_apps(
    tiny_world, tmp_path: Path
) -> None:
    env = process_env(tmp_path)
    processes = Processes(env, tmp_path)
    pki = init_pki(tmp_path / "pki")
    vendor = Pki.at(tmp_path / "pki").client()
    attacker_pki = init_pki(tmp_path / "attacker-pki")  # its own CA and client certificate
    site, rogue = (make_node_keys(tmp_path / "keys", n) for n in ("site-a", "rogue"))
    approved = tmp_path / "approved-apps.json"
    done = subprocess.run(sonofed(
        "hospital", "approve-app", "--source", str(REPO), "--approved-apps", str(approved),
    ), cwd=REPO, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    vendor_home = tmp_path / "vendor-home"
    refusals: dict[str, str] = {}
    try:
        superlink, _ = start_superlink(processes, tmp_path / "pki", tmp_path / "state.db")
        node_id = register_node(site.public_key, superlink=superlink, ca_cert=pki.ca_cert,
                                client=vendor, flwr_home=vendor_home)  # fmt: skip
        attacker = write_flwr_connection(tmp_path / "attacker-home", superlink, pki.ca_cert)

        # 1. the Control API with only ca.crt (what a hospital, or anyone it gave ca.crt, has)
        attempts = {
            "supernode register": ["supernode", "register", str(rogue.public_key), "x"],
            "supernode unregister": ["supernode", "unregister", str(node_id), "x"],
            "supernode list": ["supernode", "list", "x"],
            "ls": ["ls", "x"],
            "run": ["run", str(REPO), "x"],
            "stop": ["stop", "1", "x"],
        }
        for name, args in attempts.items():
            payload = flwr_json(args, attacker)
            assert _refused(payload, 403), (name, payload)
            refusals[f"flwr {name} with ca.crt only"] = "proxy 403"
        pulled = subprocess.run(  # `flwr pull` has no JSON output
            [str(Path(sys.executable).parent / "flwr"), "pull", "1", "x"],
            env=attacker, capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        assert "403 Forbidden" in pulled.stdout + pulled.stderr, pulled.stdout[-1500:]
        refusals["flwr pull with ca.crt only"] = "proxy 403"

        # 2. the same CLI presenting a client certificate of the attacker's own CA
        own = dict(attacker, SONOFED_CLIENT_CERT=str(attacker_pki.client_cert),
                   SONOFED_CLIENT_KEY=str(attacker_pki.client_key))  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "federation._flwr_mtls", "ls", "x", "--format", "json"],
            env=own, capture_output=True, text=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        assert "400 Bad Request" in done.stdout, done.stdout[-1500:]
        refusals["flwr ls with a client certificate of another CA"] = "proxy 400"

        # 3. the Fleet API with the registered hospital's own key: no (un)registration
        from flwr.proto.fleet_pb2 import (
            RegisterNodeFleetRequest,
            UnregisterNodeFleetRequest,
        )
        from flwr.supernode.fleet_http_client import FleetHttpClient
        from flwr.supernode.node_auth_http_interceptor import NodeAuthHttpInterceptor

        private = serialization.load_ssh_private_key(site.private_key.read_bytes(), None)
        fleet = FleetHttpClient.from_server_address(
            superlink, False, pki.ca_cert.read_bytes(),
            [NodeAuthHttpInterceptor(private, private.public_key())],
        )  # fmt: skip
        rogue_public = serialization.load_ssh_public_key(rogue.public_key.read_bytes())
        rogue_bytes = rogue_public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for name, call in (
            ("register a new key", lambda: fleet.RegisterNode(
                RegisterNodeFleetRequest(public_key=rogue_bytes))),
            ("unregister itself", lambda: fleet.UnregisterNode(
                UnregisterNodeFleetRequest(node_id=node_id))),
        ):  # fmt: skip
            with pytest.raises(httpx.HTTPStatusError) as refused:
                call()
            assert refused.value.response.status_code >= 400
            refusals[f"Fleet API with the hospital's key: {name}"] = (
                f"flower {refused.value.response.status_code}"
            )

        # 4. the SuperLink's own Runtime API and its direct port from outside the proxy
        response = httpx.post(f"https://{superlink}/v1/runtime/acquire-task",
                              verify=str(pki.ca_cert), timeout=30)  # fmt: skip
        assert response.status_code == 403
        refusals["Runtime API through the proxy"] = "proxy 403"

        nodes = list_nodes(superlink=superlink, ca_cert=pki.ca_cert, client=vendor,
                           flwr_home=vendor_home)  # fmt: skip
        assert [int(n["node-id"]) for n in nodes] == [node_id]  # nothing (un)registered

        # 5. a modified app sent to a hospital that approved only this checkout's bundle
        marker = tmp_path / "modified-app-ran.txt"
        modified = _modified_app(tmp_path / "modified-app", marker)
        assert fab_hash(modified) != fab_hash(REPO)
        processes.start("site-a", sonofed(
            "hospital", "join", "--superlink", superlink, "--registry",
            str(tiny_world.registries[0]), "--key", str(site.private_key), "--ca",
            str(pki.ca_cert), "--port", str(processes.port()), "--approved-apps", str(approved),
        ), nice=5)  # fmt: skip
        wait_for_nodes(1, superlink=superlink, ca_cert=pki.ca_cert, client=vendor,
                       flwr_home=vendor_home, timeout=300)  # fmt: skip
        settings = {"rounds": 1, "min_clients": 1, "fraction_evaluate": 0.0, "cycle": 1,
                    "round_timeout": 120.0}  # fmt: skip
        run_config = {
            "settings": json.dumps(settings), "num-sites": 1, "sites": "", "out": "",
            "testset": str(tiny_world.locked), "init": str(tiny_world.bundle),
            "run-dir": str(tmp_path / "modified-run"), "params": str(REPO / "params.yaml"),
        }  # fmt: skip
        started = time.monotonic()
        submit_run(superlink=superlink, ca_cert=pki.ca_cert, client=vendor,
                   flwr_home=vendor_home, run_config=run_config, app=modified,
                   log=tmp_path / "modified-run.log", timeout=600)  # fmt: skip
        log = wait_for_text(tmp_path / "site-a.log", "refused a Flower app", timeout=60)
        refusals["a modified app sent to the hospital"] = "hospital (FAB sha256 not approved)"
        assert fab_hash(modified) in log
        assert time.monotonic() - started < 600
    finally:
        processes.stop()
    ran = marker.read_text().splitlines() if marker.is_file() else []
    assert not [line for line in ran if "clientapp" in line], ran  # none of its code ran there
    print("\n".join(f"{attempt}: refused by {who}" for attempt, who in refusals.items()))
