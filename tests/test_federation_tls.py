"""The documented deployment's certificates and its checks (fast: real TLS servers on
127.0.0.1, real nginx, no Flower processes).

- ``pki init --host X`` names X plus loopback (the SuperLink's own executor connects there);
- connecting by a name the certificate lacks says so, and says how to fix it;
- a PKI made without loopback names is refused before the SuperLink starts;
- nginx accepts the generated proxy configuration; the approved-apps file is checked.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from federation.approval import approve, check_fab, load_approved
from federation.deployment import (
    LOOPBACK,
    Pki,
    certificate_names,
    check_tls,
    init_pki,
)
from federation.exceptions import AppApprovalError, DeploymentError, TlsCheckError
from federation.proxy import ProxyPlan, find_nginx, write_nginx_config
from tests._deploy import REPO, sonofed


@contextmanager
def _tls_server(cert: Path, key: Path) -> Iterator[int]:
    """A TLS server on 127.0.0.1 that completes handshakes (and nothing else)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_pki_init_names_every_host_given_plus_loopback(tmp_path: Path) -> None:
    done = subprocess.run(sonofed(
        "vendor", "pki", "init", "--out", str(tmp_path / "pki"), "--host",
        "superlink.example.org", "--host", "203.0.113.7", "--json",
    ), cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = json.loads(done.stdout)["server_names"]
    assert sorted(names) == sorted(["superlink.example.org", "203.0.113.7", *LOOPBACK])
    pki = Pki.at(tmp_path / "pki")
    assert certificate_names(pki.server_cert) == names
    pki.check()  # what `vendor superlink` checks first
    assert pki.client() == (pki.client_cert, pki.client_key)
    assert pki.operator_ca.read_bytes() != pki.ca_cert.read_bytes()  # a CA of its own


def test_a_name_the_certificate_lacks_is_reported_as_such(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki", hosts=["superlink.example.org"])
    with _tls_server(pki.server_cert, pki.server_key) as port:
        check_tls(f"127.0.0.1:{port}", pki.ca_cert)  # loopback is named: fine
        check_tls(f"localhost:{port}", pki.ca_cert)
    # a certificate naming only the public name (as `pki init --host X` used to make)
    old = _old_style_pki(tmp_path / "old", "superlink.example.org")
    with (
        _tls_server(old.server_cert, old.server_key) as port,
        pytest.raises(TlsCheckError) as error,
    ):
        check_tls(f"127.0.0.1:{port}", old.ca_cert)
    message = str(error.value)
    assert "does not name 127.0.0.1" in message
    assert "it names superlink.example.org" in message
    assert "pki init --host 127.0.0.1" in message
    with pytest.raises(DeploymentError, match=r"does not name localhost, 127\.0\.0\.1"):
        old.check()
    other = init_pki(tmp_path / "other")
    with (
        _tls_server(pki.server_cert, pki.server_key) as port,
        pytest.raises(TlsCheckError, match="not signed by"),
    ):
        check_tls(f"127.0.0.1:{port}", other.ca_cert)
    with pytest.raises(DeploymentError, match="nothing listens"):
        check_tls(f"127.0.0.1:{port}", pki.ca_cert)


def _old_style_pki(folder: Path, host: str) -> Pki:
    """A PKI whose server certificate names only ``host`` (no loopback)."""
    import datetime as dt

    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    from federation.deployment import _ca, _leaf

    pki = init_pki(folder)
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(days=1)
    ca_key, ca = _ca("old CA", until, now)
    key, server = _leaf(host, ca, ca_key, until, now, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                        hosts=[host])  # fmt: skip
    pem = serialization.Encoding.PEM
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    pki.server_key.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return pki


def test_join_stops_at_once_on_a_name_mismatch(tmp_path: Path) -> None:
    old = _old_style_pki(tmp_path / "old", "superlink.example.org")
    registry = tmp_path / "reg"
    registry.mkdir()
    (registry / "HEAD").write_text("0\n")
    key = tmp_path / "k.key"
    key.write_text("x")
    approved = tmp_path / "approved.json"
    approve(approved, "0" * 64)
    with _tls_server(old.server_cert, old.server_key) as port:
        done = subprocess.run(sonofed(
            "hospital", "join", "--superlink", f"127.0.0.1:{port}", "--registry", str(registry),
            "--key", str(key), "--ca", str(old.ca_cert), "--approved-apps", str(approved),
        ), cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert "does not name 127.0.0.1" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.skipif(not __import__("shutil").which("nginx", path="/usr/sbin:/usr/bin"),
                    reason="nginx not installed")  # fmt: skip
def test_nginx_accepts_the_proxy_configuration(tmp_path: Path) -> None:
    pki = init_pki(tmp_path / "pki")
    plan = ProxyPlan(pki=pki, host="127.0.0.1", port=9, upstream_port=10,
                     folder=tmp_path / "proxy")  # fmt: skip
    config = write_nginx_config(plan).read_text()
    assert find_nginx()
    assert "location ~ ^/v1/fleet/[a-z-]+$ {" in config
    assert "if ($ssl_client_verify != SUCCESS)" in config
    assert str(pki.operator_ca.resolve()) in config


def test_approved_apps_file(tmp_path: Path) -> None:
    path = tmp_path / "approved.json"
    with pytest.raises(AppApprovalError, match="no approved-apps file"):
        check_fab(b"fab", path)
    approve(path, hashlib.sha256(b"fab").hexdigest(), note="release 1")
    assert check_fab(b"fab", path) == hashlib.sha256(b"fab").hexdigest()
    with pytest.raises(AppApprovalError, match="refused a Flower app with FAB sha256"):
        check_fab(b"modified fab", path)
    with pytest.raises(AppApprovalError, match="64 hex digits"):
        approve(path, "abc")
    path.write_text('{"approved": [{"sha256": "xyz"}]}')
    with pytest.raises(AppApprovalError, match="not an approved-apps file"):
        load_approved(path)


def test_run_config_reaches_flower_intact() -> None:
    """``federate --superlink`` sends its settings as JSON in one run-config value; Flower must
    read back exactly what was sent (double quotes inside used to cut the value short)."""
    from flwr.common.config import parse_config_args

    from federation.deployment import _run_config_text

    sent = {"settings": json.dumps({"rounds": 2, "min_clients": 3}), "num-sites": 3,
            "run-dir": "/tmp/with space", "sites": "", "flag": True}  # fmt: skip
    assert parse_config_args([_run_config_text(sent)]) == sent
