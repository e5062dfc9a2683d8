"""Real deployment: certificates, hospital keys, registration, SuperLink and SuperNodes.

- The vendor makes two CAs (:func:`init_pki`): the TLS CA that signs the server certificate
  (``ca.crt`` goes to the hospitals) and a vendor-only operator CA that signs the vendor's client
  certificate (``operator.pem``). The server certificate names every host given plus loopback,
  which the SuperLink's own executor uses.
- The SuperLink listens on loopback only; :mod:`federation.proxy` puts nginx in front of it: the
  Fleet API is open to anyone with TLS (Flower then admits only registered node keys), the
  Control API (register nodes, submit/stop/list runs, pull results) only to a client
  certificate of the operator CA. The vendor's ``flwr`` CLI presents it through
  :mod:`federation._flwr_mtls`.
- Each hospital makes an EC P-384 key pair (:func:`make_node_keys`) and sends only the public
  key to the vendor, who registers it (:func:`register_node`, i.e. ``flwr supernode register``).
- :func:`check_tls` tries a connection first and says what is wrong (a certificate that does not
  name the host, another CA, a refused client certificate, nothing listening).
- :func:`superlink_command` and :func:`supernode_command` build the real ``flower-superlink``
  and ``flower-supernode`` command lines; :class:`federation.services.ProcessGroup` runs
  several as one service.
- :func:`submit_run` starts the app on a SuperLink with ``flwr run``; :func:`wait_for_nodes`
  prints who is online until enough hospitals are.

Flower keeps its CLI configuration in ``$FLWR_HOME/config.toml``; the functions here write a
connection named :data:`CONNECTION` into a FLWR_HOME of their own, never the user's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import ipaddress
import json
import os
import random
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.exceptions import DeploymentError, RegistrationError, TlsCheckError

__all__ = [
    "CLIENT_CHECK_PATH",
    "CONNECTION",
    "LOOPBACK",
    "NodeKeys",
    "Pki",
    "certificate_names",
    "check_tls",
    "fab_hash",
    "flower_env",
    "flwr_command",
    "free_port",
    "init_pki",
    "list_nodes",
    "make_node_keys",
    "parse_address",
    "project_root",
    "register_node",
    "submit_run",
    "superlink_command",
    "supernode_command",
    "vendor_env",
    "wait_for_nodes",
    "wait_for_port",
    "write_connection",
]

CONNECTION = "sonofed"
"""Name of the SuperLink connection written to the private FLWR_HOME."""
CURVE = ec.SECP384R1()
_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


LOOPBACK = ("localhost", "127.0.0.1", "::1")
"""Names every server certificate carries: the SuperLink's own executor connects over loopback."""
CLIENT_CHECK_PATH = "/sonofed/client-check"
"""Proxy path that answers how it judged the client certificate (``SUCCESS`` or why not)."""


@dataclass(frozen=True)
class Pki:
    """The vendor's TLS material (PEM files).

    ``ca_cert`` (public, handed to the hospitals) signs ``server_cert``; the operator CA, which
    never leaves the vendor, signs ``client_cert``, the certificate the proxy requires for the
    Control API.
    """

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    operator_ca: Path
    operator_ca_key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def at(cls, folder: Path) -> Pki:
        """The files of a ``pki init`` folder."""
        f = Path(folder)
        return cls(
            f / "ca.crt", f / "ca.key", f / "server.pem", f / "server.key",
            f / "operator-ca.crt", f / "operator-ca.key", f / "operator.pem", f / "operator.key",
        )  # fmt: skip

    def check(self) -> None:
        """Raises DeploymentError when a file the SuperLink and its proxy need is missing, or the
        server certificate lacks the loopback names (a PKI made before they were added)."""
        needed = (self.ca_cert, self.server_cert, self.server_key, self.operator_ca)
        missing = [str(p) for p in needed if not p.is_file()]
        if missing:
            raise DeploymentError(
                f"missing TLS file(s): {', '.join(missing)}; run `sonofed vendor pki init` first"
            )
        names = certificate_names(self.server_cert)
        lacking = [n for n in LOOPBACK[:2] if n not in names]
        if lacking:
            raise DeploymentError(
                f"{self.server_cert}: does not name {', '.join(lacking)} (the SuperLink's own "
                "executor connects over loopback); re-run `sonofed vendor pki init --overwrite` "
                "with your --host values"
            )

    def client(self) -> tuple[Path, Path]:
        """The vendor's client certificate and key; DeploymentError when missing."""
        missing = [str(p) for p in (self.client_cert, self.client_key) if not p.is_file()]
        if missing:
            raise DeploymentError(
                f"missing the vendor's client certificate: {', '.join(missing)} "
                "(made by `sonofed vendor pki init`)"
            )
        return self.client_cert, self.client_key


@dataclass(frozen=True)
class NodeKeys:
    """A hospital's key pair: OpenSSH private key (stays home) and public key (to the vendor)."""

    private_key: Path
    public_key: Path


def _write_secret(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sonofed"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        if _is_ip(host):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        else:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def certificate_names(cert: Path | bytes) -> list[str]:
    """The DNS names and IP addresses a PEM certificate (file or bytes) is valid for."""
    data = cert if isinstance(cert, bytes) else Path(cert).read_bytes()
    certificate = x509.load_pem_x509_certificate(data)
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = san.get_values_for_type(x509.DNSName)
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return [*dns, *ips]


def _ca(common_name: str, until: dt.datetime, now: dt.datetime):
    key = ec.generate_private_key(CURVE)
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def _leaf(subject: str, issuer, issuer_key, until, now, *, usage, hosts: Sequence[str] = ()):
    key = ec.generate_private_key(CURVE)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if hosts:
        builder = builder.add_extension(_san(hosts), critical=False)
    return key, builder.sign(issuer_key, hashes.SHA384())


def init_pki(
    folder: Path,
    *,
    hosts: Sequence[str] = (),
    days: int = 365,
    overwrite: bool = False,
) -> Pki:
    """Create the TLS CA, the server certificate, the operator CA and the vendor's client
    certificate (EC P-384, SHA-384).

    Args:
        folder: where to write the files of :class:`Pki`.
        hosts: names and IP addresses hospitals use to reach the SuperLink; the certificate
            names all of them plus :data:`LOOPBACK`.
        days: validity of all certificates.
        overwrite: replace an existing PKI (hospitals then need the new ``ca.crt``).

    Returns:
        the paths written.

    Raises:
        DeploymentError: the folder already holds a CA and ``overwrite`` is false.
    """
    pki = Pki.at(folder)
    if pki.ca_cert.exists() and not overwrite:
        raise DeploymentError(f"{folder}: already holds a CA (ca.crt); pass --overwrite to replace")
    names = list(dict.fromkeys([h.strip() for h in hosts if h.strip()] + list(LOOPBACK)))
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(days=days)
    ca_key, ca = _ca("sonofed federation CA", until, now)
    key, server = _leaf(names[0], ca, ca_key, until, now, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                        hosts=names)  # fmt: skip
    op_key, op_ca = _ca("sonofed vendor operator CA", until, now)
    client_key, client = _leaf("sonofed vendor operator", op_ca, op_key, until, now,
                               usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # fmt: skip
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    Path(folder).mkdir(parents=True, exist_ok=True)
    for path, cert in ((pki.ca_cert, ca), (pki.server_cert, server), (pki.operator_ca, op_ca),
                       (pki.client_cert, client)):  # fmt: skip
        path.write_bytes(cert.public_bytes(pem))
    for path, private in ((pki.ca_key, ca_key), (pki.server_key, key),
                          (pki.operator_ca_key, op_key), (pki.client_key, client_key)):  # fmt: skip
        _write_secret(path, private.private_bytes(pem, pkcs8, none))
    return pki


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) → ``(host, port)``.

    Raises:
        DeploymentError: no port, or a port that is not a number.
    """
    host, sep, port = str(address).rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit():
        raise DeploymentError(f"{address!r}: expected HOST:PORT (e.g. superlink.example.org:9093)")
    return host, int(port)


_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
_UNKNOWN_ISSUER = (2, 7, 18, 19, 20, 21)  # no issuer, or one of the same name that did not sign it


def _presented_names(host: str, port: int, timeout: float) -> list[str]:
    with contextlib.suppress(OSError, ValueError):
        pem = ssl.get_server_certificate((host, port), timeout=timeout)
        return certificate_names(pem.encode())
    return []


def check_tls(
    address: str,
    ca_cert: Path,
    *,
    client: tuple[Path, Path] | None = None,
    timeout: float = 15.0,
) -> None:
    """Connect to ``address`` the way Flower will and say plainly what is wrong.

    Args:
        address: ``HOST:PORT`` of the SuperLink's proxy.
        ca_cert: the CA that must have signed its certificate.
        client: the vendor's client certificate and key; then the proxy must accept it.
        timeout: seconds for the connection.

    Raises:
        TlsCheckError: the certificate does not name HOST, is signed by another CA, or the
            proxy refused the client certificate.
        DeploymentError: nothing answers at ``address``.
    """
    host, port = parse_address(address)
    if not Path(ca_cert).is_file():
        raise DeploymentError(f"{ca_cert}: no such CA certificate file")
    context = ssl.create_default_context(cafile=str(ca_cert))
    if client is not None:
        context.load_cert_chain(str(client[0]), str(client[1]))
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=timeout)
    try:
        connection.connect()
        if client is None:
            return
        connection.request("GET", CLIENT_CHECK_PATH)
        response = connection.getresponse()
        verdict = response.read().decode(errors="replace").strip()
    except ssl.SSLCertVerificationError as e:
        if e.verify_code in _NAME_MISMATCH:
            names = ", ".join(_presented_names(host, port, timeout)) or "other names"
            raise TlsCheckError(
                f"the certificate of {address} does not name {host} (it names {names}); "
                f"connect with one of those names, or re-run `sonofed vendor pki init --host "
                f"{host}` (every name and address hospitals use) and restart the SuperLink"
            ) from e
        if e.verify_code in _UNKNOWN_ISSUER:
            raise TlsCheckError(
                f"the certificate of {address} is not signed by {ca_cert}: use the ca.crt of "
                "the `pki init` folder the SuperLink was started with"
            ) from e
        raise TlsCheckError(f"the certificate of {address} failed its check: {e}") from e
    except ssl.SSLError as e:
        raise TlsCheckError(f"TLS with {address} failed: {e}") from e
    except ConnectionRefusedError as e:
        raise DeploymentError(
            f"nothing listens on {address} (is `sonofed vendor superlink` running there?)"
        ) from e
    except socket.gaierror as e:
        raise DeploymentError(f"cannot resolve {host}: {e}") from e
    except TimeoutError as e:
        raise DeploymentError(
            f"{address} did not answer within {timeout:g} s (network, firewall or host down)"
        ) from e
    except OSError as e:
        raise DeploymentError(f"cannot connect to {address}: {e}") from e
    finally:
        connection.close()
    if response.status == 404:
        raise TlsCheckError(
            f"{address} is not the sonofed proxy (no {CLIENT_CHECK_PATH}): start the SuperLink "
            "with `sonofed vendor superlink`, which puts the proxy in front of it"
        )
    if verdict != "SUCCESS":
        raise TlsCheckError(
            f"the proxy at {address} refused the client certificate {client[0]} ({verdict}): "
            "use the operator.pem of the `pki init` folder the SuperLink was started with"
        )


def make_node_keys(folder: Path, name: str = "supernode", *, overwrite: bool = False) -> NodeKeys:
    """Create a hospital's EC P-384 key pair in OpenSSH format (what Flower's node auth reads).

    Raises:
        DeploymentError: the key exists and ``overwrite`` is false.
    """
    keys = NodeKeys(Path(folder) / f"{name}.key", Path(folder) / f"{name}.pub")
    if keys.private_key.exists() and not overwrite:
        raise DeploymentError(f"{keys.private_key} exists; pass --overwrite to replace it")
    private = ec.generate_private_key(CURVE)
    _write_secret(
        keys.private_key,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    keys.public_key.write_bytes(public + f" {name}\n".encode())
    return keys


def flower_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for Flower processes: this interpreter's ``bin`` first on ``PATH``."""
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.update(extra or {})
    return env


def _exe(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def write_connection(flwr_home: Path, superlink: str, ca_cert: Path) -> Path:
    """Write ``[superlink.sonofed]`` (address + CA) into ``flwr_home/config.toml``."""
    flwr_home = Path(flwr_home)
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f"[superlink.{CONNECTION}]\n"
        f'address = "{superlink}"\n'
        f'root-certificates = "{Path(ca_cert).resolve()}"\n'
    )
    return path


def flwr_command(args: Sequence[str]) -> list[str]:
    """``flwr ARGS`` presenting the client certificate of the environment
    (:mod:`federation._flwr_mtls`; see :func:`vendor_env`)."""
    return [sys.executable, "-m", "federation._flwr_mtls", *args]


def vendor_env(flwr_home: Path, client: tuple[Path, Path]) -> dict[str, str]:
    """Environment for :func:`flwr_command`: a private FLWR_HOME and the client certificate."""
    from federation._flwr_mtls import CERT_ENV, KEY_ENV

    return flower_env(
        {
            "FLWR_HOME": str(Path(flwr_home).resolve()),
            CERT_ENV: str(Path(client[0]).resolve()),
            KEY_ENV: str(Path(client[1]).resolve()),
        }
    )


def _json_payload(text: str) -> dict[str, Any]:
    start = text.find("{")
    try:
        payload = json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        payload = {}
    return payload if isinstance(payload, dict) else {}


def _control(
    args: Sequence[str],
    *,
    superlink: str,
    ca_cert: Path,
    client: tuple[Path, Path],
    flwr_home: Path,
    timeout: float,
    what: str,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """Run one Control API command of the ``flwr`` CLI as the vendor (after :func:`check_tls`)."""
    check_tls(superlink, ca_cert, client=client)
    write_connection(flwr_home, superlink, ca_cert)
    try:
        done = subprocess.run(
            flwr_command(args), env=vendor_env(flwr_home, client), capture_output=True,
            text=True, timeout=timeout,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DeploymentError(f"{what} did not finish: {e}") from e
    return done, _json_payload(done.stdout)


def register_node(
    public_key: Path,
    *,
    superlink: str,
    ca_cert: Path,
    client: tuple[Path, Path],
    flwr_home: Path,
    name: str | None = None,
    timeout: float = 120.0,
) -> int:
    """Register a hospital's public key with the SuperLink (``flwr supernode register``).

    Args:
        public_key: the hospital's ``.pub`` file (OpenSSH, EC P-384).
        superlink: ``HOST:PORT`` of the SuperLink's proxy.
        ca_cert: the vendor's CA certificate.
        client: the vendor's client certificate and key (the proxy requires them).
        flwr_home: a folder for Flower's CLI configuration (the connection is written there).
        name: a name shown by ``flwr supernode list``.
        timeout: seconds to wait for the CLI.

    Returns:
        the node id the SuperLink assigned.

    Raises:
        TlsCheckError: the certificates do not fit (see :func:`check_tls`).
        RegistrationError: the CLI failed (bad key, already registered).
    """
    if not Path(public_key).is_file():
        raise RegistrationError(f"{public_key}: no such public key file")
    args = [
        "supernode",
        "register",
        str(Path(public_key).resolve()),
        CONNECTION,
        "--format",
        "json",
    ]
    if name:
        args += ["--name", name]
    done, payload = _control(
        args, superlink=superlink, ca_cert=ca_cert, client=client, flwr_home=flwr_home,
        timeout=timeout, what="flwr supernode register",
    )  # fmt: skip
    if done.returncode != 0 or not payload.get("success"):
        detail = (payload.get("error-message") or done.stderr or done.stdout).strip()
        raise RegistrationError(f"registering {public_key} failed: {detail[-500:]}")
    return int(payload["node-id"])


def list_nodes(
    *,
    superlink: str,
    ca_cert: Path,
    client: tuple[Path, Path],
    flwr_home: Path,
    timeout: float = 120.0,
) -> list[dict[str, Any]]:
    """The registered SuperNodes as ``flwr supernode list --format json`` reports them
    (``node-id``, ``status``: ``registered``/``online``/``offline``…).

    Raises:
        DeploymentError: the CLI failed.
    """
    args = ["supernode", "list", CONNECTION, "--format", "json"]
    done, payload = _control(
        args, superlink=superlink, ca_cert=ca_cert, client=client, flwr_home=flwr_home,
        timeout=timeout, what="flwr supernode list",
    )  # fmt: skip
    if done.returncode != 0 or not payload.get("success"):
        detail = (payload.get("error-message") or done.stderr or done.stdout).strip()
        raise DeploymentError(f"listing the SuperNodes of {superlink} failed: {detail[-500:]}")
    return list(payload.get("nodes", []))


def wait_for_nodes(
    count: int,
    *,
    superlink: str,
    ca_cert: Path,
    client: tuple[Path, Path],
    flwr_home: Path,
    timeout: float = 1800.0,
    poll: float = 3.0,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Wait until ``count`` registered SuperNodes are online; report every change.

    Returns:
        the online nodes.

    Raises:
        DeploymentError: fewer than ``count`` were online after ``timeout`` seconds.
    """
    say = progress or (lambda line: None)
    deadline = time.monotonic() + timeout
    last: tuple[int, int] | None = None
    while True:
        nodes = list_nodes(superlink=superlink, ca_cert=ca_cert, client=client,
                           flwr_home=flwr_home)  # fmt: skip
        online = [n for n in nodes if n.get("status") == "online"]
        state = (len(online), len(nodes))
        if state != last:
            ids = ", ".join(str(n.get("node-id")) for n in online) or "none"
            say(f"hospitals online: {len(online)} of {count} needed ({len(nodes)} registered; "
                f"online node ids: {ids})")  # fmt: skip
            last = state
        if len(online) >= count:
            return online
        if time.monotonic() > deadline:
            raise DeploymentError(
                f"only {len(online)} of {count} hospitals came online within {timeout:g} s; "
                "check that each ran `sonofed hospital join` with a registered key"
            )
        time.sleep(poll)


def superlink_command(
    pki: Pki,
    database: Path,
    *,
    port: int,
    log_file: Path | None = None,
) -> list[str]:
    """``flower-superlink`` on loopback (``127.0.0.1:port``) with TLS, a database (runs survive
    a restart; see :mod:`federation._flwr_superlink` for its lock timeout) and node
    authentication. Only the proxy (:mod:`federation.proxy`) faces the
    network; the SuperLink's own executor connects to this loopback address."""
    pki.check()
    command = [
        sys.executable, "-m", "federation._flwr_superlink",  # flower-superlink, longer DB waits
        "--ssl-ca-certfile", str(pki.ca_cert),
        "--ssl-certfile", str(pki.server_cert),
        "--ssl-keyfile", str(pki.server_key),
        "--database", str(database),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    if log_file is not None:
        command += ["--log-file", str(log_file)]
    return command


def supernode_command(
    *,
    superlink: str,
    ca_cert: Path,
    private_key: Path,
    registry: Path,
    site_id: str | None = None,
    port: int = 9094,
    max_retries: int | None = None,
    extra_node_config: Mapping[str, str] | None = None,
    isolation: str = "process",
) -> list[str]:
    """``flower-supernode`` for a hospital: TLS to the SuperLink, its key, its registry.

    Args:
        superlink: ``HOST:PORT`` of the SuperLink's proxy.
        ca_cert: the vendor's CA certificate (verifies the SuperLink).
        private_key: the hospital's private key (OpenSSH).
        registry: the hospital's registry folder (node config ``registry``).
        site_id: the name it reports (node config ``site-id``).
        port: the SuperNode's own local Runtime API port (one per SuperNode on a host).
        max_retries: give up after this many failed connection attempts.
        extra_node_config: more node-config keys (e.g. ``fault`` in tests).
        isolation: ``process`` (default): the SuperNode starts no app itself; the hospital's
            executor (:mod:`federation.approval`) runs only approved apps. ``subprocess``:
            Flower's own executor runs whatever app it is sent.
    """
    config = {"registry": str(Path(registry).resolve())}
    if site_id:
        config["site-id"] = site_id
    config.update(extra_node_config or {})
    node_config = " ".join(f'{k}="{v}"' for k, v in config.items())
    command = [
        _exe("flower-supernode"),
        "--superlink", superlink,
        "--root-certificates", str(ca_cert),
        "--auth-supernode-private-key", str(private_key),
        "--node-config", node_config,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--isolation", isolation,
    ]  # fmt: skip
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    return command


def project_root() -> Path:
    """The source checkout holding ``pyproject.toml`` (the Flower app ``flwr run`` builds)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise DeploymentError(
            f"{root}: no pyproject.toml; running on a SuperLink needs a source checkout"
        )
    return root


def _run_config_text(run_config: Mapping[str, Any]) -> str:
    """``--run-config`` text: Flower reads each ``key=value`` as TOML, a quoted value whole;
    strings holding ``"`` (JSON settings) go in single quotes (TOML literal strings).

    Raises:
        DeploymentError: a string holds both kinds of quote.
    """
    pairs = []
    for key, value in run_config.items():
        if isinstance(value, bool):
            pairs.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            pairs.append(f"{key}={value}")
        elif '"' not in str(value):
            pairs.append(f'{key}="{value}"')
        elif "'" not in str(value):
            pairs.append(f"{key}='{value}'")
        else:
            raise DeploymentError(f"run config {key}: cannot pass a value with both quote kinds")
    return " ".join(pairs)


def submit_run(
    *,
    superlink: str,
    ca_cert: Path,
    client: tuple[Path, Path],
    flwr_home: Path,
    run_config: Mapping[str, Any],
    log: Path | None = None,
    timeout: float | None = None,
    app: Path | None = None,
    wait_for: int = 0,
    wait_timeout: float = 1800.0,
    progress: Callable[[str], None] | None = None,
) -> int:
    """Start the app on a SuperLink (``flwr run <checkout> sonofed --stream``) and wait.

    Args:
        superlink: ``HOST:PORT`` of the SuperLink's proxy.
        ca_cert: the vendor's CA certificate.
        client: the vendor's client certificate and key.
        flwr_home: folder for Flower's CLI configuration.
        run_config: ``[tool.flwr.app.config]`` overrides (paths should be absolute).
        log: file for the streamed log (default: inherit this process's stderr).
        timeout: seconds to wait.
        app: the app folder to build and send (default: :func:`project_root`).
        wait_for: first wait until this many hospitals are online (:func:`wait_for_nodes`), so
            that the first round samples all of them.
        wait_timeout: seconds to wait for them.
        progress: called with one line per step (connected, hospitals online, submitted).

    Returns:
        the exit code of ``flwr run``.

    Raises:
        TlsCheckError: the certificates do not fit (see :func:`check_tls`).
    """
    say = progress or (lambda line: None)
    check_tls(superlink, ca_cert, client=client)
    say(f"connected to the SuperLink at {superlink} (TLS verified, vendor certificate accepted)")
    if wait_for > 0:
        wait_for_nodes(wait_for, superlink=superlink, ca_cert=ca_cert, client=client,
                       flwr_home=flwr_home, timeout=wait_timeout, progress=say)  # fmt: skip
    write_connection(flwr_home, superlink, ca_cert)
    app = Path(app) if app is not None else project_root()
    say(f"submitting the app {app} (FAB sha256 {fab_hash(app)[:16]}…); log: {log or 'stderr'}")
    deadline = None if timeout is None else time.monotonic() + timeout
    env = vendor_env(flwr_home, client)
    handle = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    try:
        code, run_id = _stream(["run", str(app), CONNECTION, "--stream", "--run-config",
                                _run_config_text(run_config)], env, handle, deadline)  # fmt: skip
        if run_id is None:
            return code or 1
        say(f"run {run_id} started on the SuperLink")
        for _ in range(_REATTACH):
            status = _run_status(run_id, env, deadline)
            if status.startswith("finished"):
                say(f"run {run_id}: {status}")
                return 0 if status == "finished:completed" else 1
            say(f"run {run_id} is {status} but its log stream ended; re-attaching")
            _stream(["log", str(run_id), CONNECTION, "--stream"], env, handle, deadline)
        raise DeploymentError(f"run {run_id}: its log stream kept ending; see `flwr ls`")
    finally:
        if handle:
            handle.close()


_REATTACH = 50
_STARTED = re.compile(rb"Successfully started run (\d+)")


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeploymentError("the run on the SuperLink did not finish in time")
    return left


def _stream(
    args: Sequence[str], env: Mapping[str, str], handle: Any, deadline: float | None
) -> tuple[int, int | None]:
    """Run ``flwr ARGS``, copying its output to ``handle`` (else stderr); returns its exit code
    and the run id it announced."""
    sink = handle or sys.stderr.buffer
    run_id = None
    process = subprocess.Popen(
        flwr_command(args), env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            sink.write(line)
            sink.flush()
            if run_id is None and (found := _STARTED.search(line)):
                run_id = int(found.group(1))
            _remaining(deadline)
        return process.wait(timeout=_remaining(deadline)), run_id
    except (DeploymentError, subprocess.TimeoutExpired) as e:
        process.kill()
        process.wait()
        raise DeploymentError(f"flwr {args[0]} did not finish in time") from e


def _run_status(run_id: int, env: Mapping[str, str], deadline: float | None) -> str:
    """``pending``/``starting``/``running``/``finished:completed``… of a run (``flwr ls``)."""
    for _ in range(10):
        done = subprocess.run(
            flwr_command(["ls", CONNECTION, "--run-id", str(run_id), "--format", "json"]),
            env=dict(env), capture_output=True, text=True, timeout=_remaining(deadline),
        )  # fmt: skip
        runs = _json_payload(done.stdout).get("runs") or []
        if runs:
            return str(runs[0].get("status", "unknown"))
        time.sleep(3.0)
    raise DeploymentError(f"cannot read the status of run {run_id}: {done.stdout[-300:]}")


def fab_hash(app: Path) -> str:
    """sha256 of the Flower App Bundle ``flwr run``/``flwr build`` makes of ``app`` (Flower
    builds it deterministically: fixed file dates, the ``fab-include`` files only)."""
    import hashlib

    from flwr.cli.build import build_fab_from_disk

    return hashlib.sha256(build_fab_from_disk(Path(app))).hexdigest()


def wait_for_port(host: str, port: int, timeout: float, *, alive: Callable[[], bool]) -> None:
    """Wait until something accepts connections on ``host:port``.

    Raises:
        DeploymentError: ``alive()`` turned false or ``timeout`` passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive():
            raise DeploymentError(f"the process that should listen on {host}:{port} exited")
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError:
            time.sleep(0.2)
    raise DeploymentError(f"nothing listened on {host}:{port} within {timeout:g} s")


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LOWEST_PICKED_PORT = 10000


def _ephemeral_start() -> int:
    """The first port the kernel hands to outgoing connections (Linux default 32768)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    return 32768


def free_port(host: str = "127.0.0.1", *, attempts: int = 200) -> int:
    """A port nothing uses now, below the kernel's ephemeral range.

    A port from that range (what binding port 0 returns) can be taken as the local end of an
    outgoing connection, such as the proxy's keep-alive connections to the SuperLink, in the
    seconds before the process that should listen on it starts; the listener then fails with
    "address already in use" (a SuperNode exits on that). Ports below the range are never
    handed out that way. With an unusual range (or none free below it) the kernel chooses.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    high = _ephemeral_start()
    picker = random.SystemRandom()
    for _ in range(attempts if high > LOWEST_PICKED_PORT + 100 else 0):
        port = picker.randrange(LOWEST_PICKED_PORT, high)
        with socket.socket(family) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
