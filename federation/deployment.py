"""Real deployment: certificates, hospital keys, registration, SuperLink and SuperNodes.

- The vendor makes a CA and a server certificate (:func:`init_pki`); every connection to the
  SuperLink is TLS, checked against the CA.
- Each hospital makes an EC P-384 key pair (:func:`make_node_keys`) and sends only the public
  key to the vendor, who registers it (:func:`register_node`, i.e. ``flwr supernode register``).
  With ``--enable-supernode-auth`` the SuperLink refuses any SuperNode whose key is not
  registered.
- :func:`superlink_command` and :func:`supernode_command` build the real ``flower-superlink``
  and ``flower-supernode`` command lines; :func:`flower_env` puts this environment's Flower
  executables on ``PATH`` (the SuperLink and SuperNode start ``flower-superexec``).
- :func:`submit_run` starts the app on a SuperLink with ``flwr run`` and streams its log.

Flower keeps its CLI configuration in ``$FLWR_HOME/config.toml``; the functions here write a
connection named :data:`CONNECTION` into a FLWR_HOME of their own, never the user's.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from federation.exceptions import DeploymentError, RegistrationError

__all__ = [
    "CONNECTION",
    "NodeKeys",
    "Pki",
    "flower_env",
    "init_pki",
    "make_node_keys",
    "project_root",
    "register_node",
    "submit_run",
    "superlink_command",
    "supernode_command",
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


@dataclass(frozen=True)
class Pki:
    """The vendor's TLS material (PEM files)."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def at(cls, folder: Path) -> Pki:
        folder = Path(folder)
        return cls(
            folder / "ca.crt", folder / "ca.key", folder / "server.pem", folder / "server.key"
        )

    def check(self) -> None:
        """Raises DeploymentError when a file is missing."""
        missing = [
            str(p) for p in (self.ca_cert, self.server_cert, self.server_key) if not p.is_file()
        ]
        if missing:
            raise DeploymentError(f"missing TLS file(s): {', '.join(missing)}; run pki init first")


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


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def init_pki(
    folder: Path,
    *,
    hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    days: int = 365,
    overwrite: bool = False,
) -> Pki:
    """Create a CA and a server certificate for the SuperLink (EC P-384, SHA-384).

    Args:
        folder: where to write ``ca.crt``, ``ca.key``, ``server.pem``, ``server.key``.
        hosts: names and IP addresses hospitals use to reach the SuperLink (certificate SANs).
        days: validity of both certificates.
        overwrite: replace an existing PKI (hospitals then need the new ``ca.crt``).

    Returns:
        the paths written.

    Raises:
        DeploymentError: the folder already holds a CA and ``overwrite`` is false, or no host.
    """
    pki = Pki.at(folder)
    if pki.ca_cert.exists() and not overwrite:
        raise DeploymentError(f"{folder}: already holds a CA (ca.crt); pass --overwrite to replace")
    if not hosts:
        raise DeploymentError("give at least one host name or address for the server certificate")
    now = dt.datetime.now(dt.UTC)
    until = now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(CURVE)
    ca_name = _name("sonofed federation CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )
    key = ec.generate_private_key(CURVE)
    server = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(until)
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    pem = serialization.Encoding.PEM
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    Path(folder).mkdir(parents=True, exist_ok=True)
    pki.ca_cert.write_bytes(ca.public_bytes(pem))
    _write_secret(pki.ca_key, ca_key.private_bytes(pem, pkcs8, none))
    pki.server_cert.write_bytes(server.public_bytes(pem))
    _write_secret(pki.server_key, key.private_bytes(pem, pkcs8, none))
    return pki


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


def register_node(
    public_key: Path,
    *,
    superlink: str,
    ca_cert: Path,
    flwr_home: Path,
    name: str | None = None,
    timeout: float = 60.0,
) -> int:
    """Register a hospital's public key with the SuperLink (``flwr supernode register``).

    Args:
        public_key: the hospital's ``.pub`` file (OpenSSH, EC P-384).
        superlink: ``HOST:PORT`` of the SuperLink (the Control API shares the port).
        ca_cert: the vendor's CA certificate.
        flwr_home: a folder for Flower's CLI configuration (the connection is written there).
        name: a name shown by ``flwr supernode list``.
        timeout: seconds to wait for the CLI.

    Returns:
        the node id the SuperLink assigned.

    Raises:
        RegistrationError: the CLI failed (unreachable SuperLink, bad key, already registered).
    """
    if not Path(public_key).is_file():
        raise RegistrationError(f"{public_key}: no such public key file")
    write_connection(flwr_home, superlink, ca_cert)
    command = [_exe("flwr"), "supernode", "register", str(Path(public_key).resolve()), CONNECTION,
               "--format", "json"]  # fmt: skip
    if name:
        command += ["--name", name]
    try:
        done = subprocess.run(
            command,
            env=flower_env({"FLWR_HOME": str(Path(flwr_home).resolve())}),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RegistrationError(f"flwr supernode register did not finish: {e}") from e
    start = done.stdout.find("{")
    try:
        payload: dict[str, Any] = json.loads(done.stdout[start:]) if start >= 0 else {}
    except ValueError:
        payload = {}
    if done.returncode != 0 or not payload.get("success"):
        detail = (payload.get("error-message") or done.stderr or done.stdout).strip()
        raise RegistrationError(f"registering {public_key} failed: {detail[-500:]}")
    return int(payload["node-id"])


def superlink_command(
    pki: Pki,
    database: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9093,
    log_file: Path | None = None,
) -> list[str]:
    """``flower-superlink`` with TLS, a database (runs survive a restart) and node auth."""
    pki.check()
    command = [
        _exe("flower-superlink"),
        "--ssl-ca-certfile", str(pki.ca_cert),
        "--ssl-certfile", str(pki.server_cert),
        "--ssl-keyfile", str(pki.server_key),
        "--database", str(database),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", host,
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
) -> list[str]:
    """``flower-supernode`` for a hospital: TLS to the SuperLink, its key, its registry.

    Args:
        superlink: ``HOST:PORT`` of the SuperLink.
        ca_cert: the vendor's CA certificate (verifies the SuperLink).
        private_key: the hospital's private key (OpenSSH).
        registry: the hospital's registry folder (node config ``registry``).
        site_id: the name it reports (node config ``site-id``).
        port: the SuperNode's own local Runtime API port (one per SuperNode on a host).
        max_retries: give up after this many failed connection attempts.
        extra_node_config: more node-config keys (e.g. ``fault`` in tests).
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
        "--port", str(port),
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


def submit_run(
    *,
    superlink: str,
    ca_cert: Path,
    flwr_home: Path,
    run_config: Mapping[str, Any],
    log: Path | None = None,
    timeout: float | None = None,
) -> int:
    """Start the app on a SuperLink (``flwr run <checkout> sonofed --stream``) and wait.

    Args:
        superlink: ``HOST:PORT`` of the SuperLink.
        ca_cert: the vendor's CA certificate.
        flwr_home: folder for Flower's CLI configuration.
        run_config: ``[tool.flwr.app.config]`` overrides (paths should be absolute).
        log: file for the streamed log (default: inherit this process's stderr).
        timeout: seconds to wait.

    Returns:
        the exit code of ``flwr run``.
    """
    write_connection(flwr_home, superlink, ca_cert)
    pairs = []
    for key, value in run_config.items():
        if isinstance(value, bool):
            pairs.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, int | float):
            pairs.append(f"{key}={value}")
        else:
            pairs.append(f'{key}="{value}"')
    command = [_exe("flwr"), "run", str(project_root()), CONNECTION, "--stream",
               "--run-config", " ".join(pairs)]  # fmt: skip
    env = flower_env({"FLWR_HOME": str(Path(flwr_home).resolve())})
    handle = open(log, "ab") if log else None  # noqa: SIM115 - closed below
    try:
        done = subprocess.run(
            command, env=env, stdout=handle or sys.stderr, stderr=subprocess.STDOUT,
            timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise DeploymentError(f"flwr run did not finish in {timeout} s") from e
    finally:
        if handle:
            handle.close()
    return done.returncode
