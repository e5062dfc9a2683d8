"""The update server: the repository's ``metadata/`` and ``targets/`` over HTTP, with an
access log.

A static file server is all TUF needs (every file is signed or hashed by signed metadata).
:class:`UpdateServer` is a :class:`http.server.ThreadingHTTPServer` that answers GET and HEAD
for files under ``/metadata/`` and ``/targets/`` only (no listings, no hidden files) and writes
one Common Log Format line per request, with the console's user agent. It can wrap its socket
in TLS (``tls_cert``/``tls_key``); in production put it behind a TLS-terminating proxy or give
it a certificate (see the README's deployment notes).
"""

from __future__ import annotations

import functools
import http
import ssl
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from release.exceptions import RepositoryStateError
from release.repository import METADATA, TARGETS

ALLOWED_TOP = (METADATA, TARGETS)


class RepositoryRequestHandler(SimpleHTTPRequestHandler):
    """Serves the repository's files read-only and logs every request."""

    server_version = "sonofed-update/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def _allowed(self) -> bool:
        path = unquote(urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2 or parts[0] not in ALLOWED_TOP:
            return False
        if any(p.startswith(".") or p == ".." for p in parts):
            return False
        return Path(self.translate_path(self.path)).is_file()

    def do_GET(self) -> None:
        """Send a repository file, or 404."""
        if not self._allowed():
            self.send_error(http.HTTPStatus.NOT_FOUND, "not found")
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        """Send a repository file's headers, or 404."""
        if not self._allowed():
            self.send_error(http.HTTPStatus.NOT_FOUND, "not found")
            return
        super().do_HEAD()

    def end_headers(self) -> None:
        """Metadata must never be cached by a proxy (timestamps change every refresh)."""
        if self.path.startswith(f"/{METADATA}/"):
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def handle_one_request(self) -> None:
        """Handle a request, then write its access-log line (with the body's length)."""
        self._pending_log: tuple[int | str, int | str] | None = None
        self._body_length: int | str = "-"
        super().handle_one_request()
        if self._pending_log is not None:
            code, size = self._pending_log
            agent = self.headers.get("User-Agent", "-") if self.headers else "-"
            self.server.write_log(  # type: ignore[attr-defined]
                f"{self.address_string()} - - [{self.log_date_time_string()}] "
                f'"{self.requestline}" {code} {self._body_length if size == "-" else size} '
                f'"{agent}"\n'
            )

    def send_header(self, keyword: str, value: str) -> None:
        """Remember the body length for the access log."""
        if keyword.lower() == "content-length":
            self._body_length = value
        super().send_header(keyword, value)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Keep the status for the access-log line written once the response is sent."""
        self._pending_log = (code.value if isinstance(code, http.HTTPStatus) else code, size)

    def log_error(self, format: str, *args: Any) -> None:
        """Errors are already logged as requests with their status code."""

    def log_message(self, format: str, *args: Any) -> None:
        """Anything else goes to the same log."""
        self.server.write_log(  # type: ignore[attr-defined]
            f"{self.address_string()} - - [{self.log_date_time_string()}] {format % args}\n"
        )


class UpdateServer(ThreadingHTTPServer):
    """The repository's HTTP server.

    Args:
        repo: the repository folder.
        host: address to listen on (``127.0.0.1`` by default; never 0.0.0.0 without TLS in
            front).
        port: port (0 picks a free one; see :attr:`port`).
        access_log: file the access log is appended to (stderr when None).
        handler: the request handler class (tests pass a faulty one).
        tls_cert: PEM certificate chain to serve HTTPS with.
        tls_key: its PEM private key.

    Raises:
        RepositoryStateError: ``repo`` holds no repository.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        repo: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        access_log: Path | None = None,
        handler: type[RepositoryRequestHandler] = RepositoryRequestHandler,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        repo = Path(repo)
        if not (repo / METADATA / "timestamp.json").is_file():
            raise RepositoryStateError(f"{repo}: not an update repository")
        self.repo = repo
        self._log_lock = threading.Lock()
        self._log: IO[str] = open(access_log, "a") if access_log else sys.stderr  # noqa: SIM115
        super().__init__((host, port), functools.partial(handler, directory=str(repo)))
        if tls_cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            self.socket = context.wrap_socket(self.socket, server_side=True)
        self.scheme = "https" if tls_cert is not None else "http"

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The base URL consoles use."""
        return f"{self.scheme}://{self.server_address[0]}:{self.port}"

    def write_log(self, line: str) -> None:
        """Append one line to the access log (thread-safe, flushed)."""
        with self._log_lock:
            self._log.write(line)
            self._log.flush()

    def server_close(self) -> None:
        """Close the socket and the access log."""
        super().server_close()
        if self._log is not sys.stderr:
            self._log.close()


def start_background(server: UpdateServer) -> threading.Thread:
    """Serve in a daemon thread (tests, benchmarks); stop with ``server.shutdown()``.

    Args:
        server: a bound server.

    Returns:
        The serving thread.
    """
    thread = threading.Thread(target=server.serve_forever, name="update-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    return thread
