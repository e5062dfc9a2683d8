"""The vendor's SuperLink behind nginx: only the vendor can run the federation.

Flower 1.42 serves all of its APIs over one HTTPS port as protobuf over HTTP (FastAPI):
``/v1/fleet/*`` (the Fleet API: SuperNodes pull and push messages), ``/v1/control/*`` (the Control
API: ``flwr run``/``ls``/``stop``/``pull``, ``flwr supernode register``/``unregister``/``list``) and
``/v1/runtime/*`` (the SuperLink's own executor and ServerApp). TLS alone lets anyone holding
``ca.crt`` use the Control API. So the SuperLink listens on loopback only and nginx
(:func:`nginx_config`) faces the network:

- ``/v1/fleet/NAME``: any TLS client; Flower then admits only registered node keys
  (``--enable-supernode-auth``; it also refuses node (un)registration through the Fleet API);
- ``/v1/control/NAME``: only a client certificate signed by the vendor's operator CA
  (``ssl_verify_client optional`` + a 403 for anything but ``SUCCESS``);
- everything else (``/v1/runtime``, health, docs): 403;
- :data:`federation.deployment.CLIENT_CHECK_PATH` answers how the client certificate was judged
  (used by :func:`federation.deployment.check_tls`).

:func:`run_superlink` starts both as one service (``sonofed vendor superlink``).
"""

from __future__ import annotations

import os
import pwd
import shutil
import string
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data_registry.files import write_atomic
from federation.deployment import (
    CLIENT_CHECK_PATH,
    Pki,
    flower_env,
    free_port,
    superlink_command,
    wait_for_port,
)
from federation.exceptions import DeploymentError, ProxyError
from federation.services import ProcessGroup

__all__ = ["NGINX_TEMPLATE", "ProxyPlan", "find_nginx", "nginx_config", "run_superlink"]

NGINX_TEMPLATE = string.Template(
    """# Written by sonofed (federation/proxy.py); regenerated on every start.
$user_line
worker_processes 1;
daemon off;
pid $folder/nginx.pid;
error_log $folder/error.log notice;

events {
    worker_connections 512;
}

http {
    log_format sonofed '$$remote_addr [$$time_local] "$$request" $$status '
                       'client_cert=$$ssl_client_verify';
    access_log $folder/access.log sonofed;
    client_body_temp_path $folder/tmp/body;
    proxy_temp_path $folder/tmp/proxy;
    fastcgi_temp_path $folder/tmp/fastcgi;
    uwsgi_temp_path $folder/tmp/uwsgi;
    scgi_temp_path $folder/tmp/scgi;
    default_type text/plain;
    client_max_body_size 0;

    upstream superlink {
        server 127.0.0.1:$upstream_port;
        keepalive 16;  # reuse TLS connections to the SuperLink (one per request otherwise)
    }

    server {
        listen $listen ssl;
        server_name _;
        ssl_certificate $server_cert;
        ssl_certificate_key $server_key;
        ssl_protocols TLSv1.2 TLSv1.3;
        # The vendor's operator CA: only its certificates pass /v1/control.
        ssl_client_certificate $operator_ca;
        ssl_verify_client optional;
        ssl_verify_depth 1;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_buffering off;
        proxy_request_buffering off;
        proxy_read_timeout 3600s;
        proxy_send_timeout 3600s;
        proxy_ssl_trusted_certificate $ca_cert;
        proxy_ssl_verify on;
        proxy_ssl_name localhost;

        location ~ ^/v1/fleet/[a-z-]+$$ {
            proxy_pass https://superlink;
        }
        location ~ ^/v1/control/[a-z-]+$$ {
            if ($$ssl_client_verify != SUCCESS) {
                return 403 "sonofed proxy: the Control API needs the vendor's client certificate\\n";
            }
            proxy_pass https://superlink;
        }
        location = $client_check {
            return 200 "$$ssl_client_verify\\n";
        }
        location / {
            return 403 "sonofed proxy: not served\\n";
        }
    }
}
"""
)
"""The one nginx configuration (``string.Template``; ``$$`` is nginx's own ``$``)."""


@dataclass(frozen=True)
class ProxyPlan:
    """Where the proxy listens, where the SuperLink is, and the proxy's folder."""

    pki: Pki
    host: str
    port: int
    upstream_port: int
    folder: Path


def find_nginx() -> str:
    """The nginx executable (PATH, then /usr/sbin).

    Raises:
        ProxyError: not installed.
    """
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise ProxyError(
            "nginx is not installed; it guards the SuperLink (Debian: apt-get install nginx)"
        )
    return found


def _listen(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def nginx_config(plan: ProxyPlan) -> str:
    """The nginx configuration for ``plan`` (see the module docstring)."""
    # A root-started master would drop its workers to `nobody`; keep them the caller's user.
    user_line = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
    pki = plan.pki
    return NGINX_TEMPLATE.substitute(
        user_line=user_line,
        folder=Path(plan.folder).resolve(),
        upstream_port=plan.upstream_port,
        listen=_listen(plan.host, plan.port),
        server_cert=pki.server_cert.resolve(),
        server_key=pki.server_key.resolve(),
        operator_ca=pki.operator_ca.resolve(),
        ca_cert=pki.ca_cert.resolve(),
        client_check=CLIENT_CHECK_PATH,
    )


def write_nginx_config(plan: ProxyPlan) -> Path:
    """Write the configuration into ``plan.folder`` and check it with ``nginx -t``.

    Raises:
        ProxyError: nginx rejects it (the message carries nginx's reason).
    """
    folder = Path(plan.folder)
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (folder / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    path = folder / "nginx.conf"
    write_atomic(path, nginx_config(plan).encode())
    test = subprocess.run(
        [find_nginx(), "-t", "-q", "-p", str(folder.resolve()), "-c", str(path.resolve()),
         "-e", str((folder / "error.log").resolve())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    if test.returncode != 0:
        raise ProxyError(f"nginx refused {path}: {(test.stderr or test.stdout).strip()[-600:]}")
    return path


def run_superlink(
    pki: Pki,
    database: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 9093,
    superlink_port: int = 0,
    proxy_dir: Path | None = None,
    log_file: Path | None = None,
    say: Callable[[str], None] = print,
    startup_timeout: float = 180.0,
) -> int:
    """Run the SuperLink on loopback and nginx in front of it until stopped.

    Args:
        pki: the ``pki init`` folder's files.
        database: the SuperLink's state (runs survive a restart).
        host: address the proxy listens on (hospitals and the vendor connect there).
        port: the proxy's port.
        superlink_port: the SuperLink's loopback port (0: a free one).
        proxy_dir: nginx's configuration, logs and temporary files (default: beside the database).
        log_file: also write the SuperLink's log here.
        say: where status lines go.
        startup_timeout: seconds each process may take to listen.

    Returns:
        0 when stopped by a signal, else the exit code of the process that ended.

    Raises:
        DeploymentError: missing certificates, or a process did not start.
        ProxyError: nginx is missing or refused its configuration.
    """
    pki.check()
    nginx = find_nginx()
    database = Path(database)
    database.parent.mkdir(parents=True, exist_ok=True)
    upstream = superlink_port or free_port()
    folder = Path(proxy_dir or database.with_name(database.stem + "-proxy"))
    plan = ProxyPlan(pki=pki, host=host, port=port, upstream_port=upstream, folder=folder)
    config = write_nginx_config(plan)
    group = ProcessGroup()
    try:
        group.start("flower-superlink", superlink_command(pki, database, port=upstream,
                                                          log_file=log_file), flower_env())  # fmt: skip
        wait_for_port("127.0.0.1", upstream, startup_timeout, alive=lambda: group.exited() is None)
        say(f"SuperLink listening on 127.0.0.1:{upstream} (loopback only)")
        group.start("nginx", [nginx, "-p", str(folder.resolve()), "-c", str(config.resolve()),
                              "-e", str((folder / "error.log").resolve())], dict(os.environ))  # fmt: skip
        wait_for_port(host, port, startup_timeout, alive=lambda: group.exited() is None)
    except DeploymentError:
        group.stop()
        log = folder / "error.log"
        tail = log.read_text(errors="replace")[-600:] if log.is_file() else ""
        raise DeploymentError(f"the SuperLink or its proxy did not start; {tail}".strip()) from None
    say(
        f"proxy listening on {_listen(host, port)}: Fleet API for registered hospitals, Control "
        f"API only with the vendor's client certificate ({pki.client_cert.name}); "
        f"proxy log {folder / 'access.log'}"
    )
    return group.run(say)
