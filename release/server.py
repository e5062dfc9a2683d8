"""The update server: the repository's ``metadata/`` and ``targets/`` over HTTP, with an
access log.

A static file server is all TUF needs (every file is signed or hashed by signed metadata).
:class:`UpdateServer` answers GET and HEAD for regular files under ``/metadata/`` and
``/targets/`` only (no listings, no hidden files, no symlinks) from a bounded pool of worker
threads, closes idle connections, answers malformed requests with their 4xx, and writes one
Common Log Format line per request, with the console's user agent. It can wrap its socket
in TLS (``tls_cert``/``tls_key``); in production put it behind a TLS-terminating proxy or give
it a certificate (see the README's deployment notes).
"""

from __future__ import annotations

import contextlib
import functools
import http
import os
import ssl
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import HTTPServer, SimpleHTTPRequestHandler
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from release.exceptions import RepositoryStateError
from release.repository import METADATA, TARGETS

ALLOWED_TOP = (METADATA, TARGETS)


MAX_SEGMENT = 255
"""Longest path segment served (a file name's limit, NAME_MAX); longer ones get 414."""
IDLE_TIMEOUT_S = 10.0
"""A connection that sends nothing for this long is closed (its worker is freed)."""
MAX_WORKERS = 32
"""Connections served at once; each has one worker thread."""
MAX_QUEUED = 64
"""Accepted connections waiting for a worker; beyond that a connection is closed at once."""


class RepositoryRequestHandler(SimpleHTTPRequestHandler):
    """Serves the repository's regular files read-only and logs every request.

    Only ``/metadata/…`` and ``/targets/…`` are served, only regular files inside the
    repository (no symlink anywhere on the path, no hidden names, no listings). Malformed
    requests get their 4xx, and every request, answered or not, gets an access-log line.
    """

    server_version = "sonofed-update/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    default_request_version = "HTTP/1.0"  # a malformed request line still gets a status line

    def setup(self) -> None:
        """Apply the server's idle timeout to the connection before reading from it."""
        self.timeout = getattr(self.server, "idle_timeout", IDLE_TIMEOUT_S)
        super().setup()

    def _resolve(self) -> tuple[http.HTTPStatus, Path | None]:
        """The file a request names, or the status that refuses it."""
        path = unquote(urlsplit(self.path).path)
        parts = [p for p in path.split("/") if p]
        if any(len(p.encode()) > MAX_SEGMENT for p in parts):
            return http.HTTPStatus.REQUEST_URI_TOO_LONG, None
        if len(parts) < 2 or parts[0] not in ALLOWED_TOP:
            return http.HTTPStatus.NOT_FOUND, None
        if any(p.startswith(".") or "\\" in p or "\0" in p for p in parts):
            return http.HTTPStatus.NOT_FOUND, None
        current = Path(self.directory)
        try:
            for part in parts:
                current = current / part
                mode = os.lstat(current).st_mode
                if stat.S_ISLNK(mode):  # a symlink, even one planted inside, is never followed
                    return http.HTTPStatus.NOT_FOUND, None
        except (OSError, ValueError):
            return http.HTTPStatus.NOT_FOUND, None
        if not stat.S_ISREG(mode):
            return http.HTTPStatus.NOT_FOUND, None
        return http.HTTPStatus.OK, current

    def send_head(self) -> IO[bytes] | None:
        """Open a regular repository file (never following a link) and send its headers."""
        code, path = self._resolve()
        if path is None:
            self.send_error(code, "not found" if code == http.HTTPStatus.NOT_FOUND else None)
            return None
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            self.send_error(http.HTTPStatus.NOT_FOUND, "not found")
            return None
        handle = os.fdopen(fd, "rb")
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            handle.close()
            self.send_error(http.HTTPStatus.NOT_FOUND, "not found")
            return None
        self.send_response(http.HTTPStatus.OK)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Length", str(info.st_size))
        self.send_header("Last-Modified", self.date_time_string(int(info.st_mtime)))
        self.end_headers()
        return handle

    def end_headers(self) -> None:
        """Metadata must never be cached by a proxy (timestamps change every refresh)."""
        if getattr(self, "path", "").startswith(f"/{METADATA}/"):
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def handle_one_request(self) -> None:
        """Handle a request, then write its access-log line (with the body's length).

        Whatever goes wrong inside is answered (500 when nothing was sent yet) and logged,
        never left as a traceback with no response.
        """
        self._pending_log: tuple[int | str, int | str] | None = None
        self._body_length: int | str = "-"
        try:
            super().handle_one_request()
        except (ConnectionError, TimeoutError):
            self.close_connection = True
        except Exception as e:  # the server must answer and keep serving
            self.close_connection = True
            if self._pending_log is None:
                with contextlib.suppress(OSError):
                    self.send_error(http.HTTPStatus.INTERNAL_SERVER_ERROR)
            self.log_message("error %s: %s", type(e).__name__, e)
        if self._pending_log is not None:
            code, size = self._pending_log
            headers = getattr(self, "headers", None)
            agent = headers.get("User-Agent", "-") if headers else "-"
            line = getattr(self, "requestline", "").encode("unicode_escape").decode("ascii")
            self.server.write_log(  # type: ignore[attr-defined]
                f"{self.address_string()} - - [{self.log_date_time_string()}] "
                f'"{line}" {code} {self._body_length if size == "-" else size} '
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
        text = (format % args).encode("unicode_escape").decode("ascii")
        self.server.write_log(  # type: ignore[attr-defined]
            f"{self.address_string()} - - [{self.log_date_time_string()}] {text}\n"
        )


class UpdateServer(HTTPServer):
    """The repository's HTTP server, with a bounded pool of worker threads.

    At most ``max_workers`` connections are served at once and ``max_queued`` more wait for a
    worker; any further connection is closed at once (and logged), so a flood of half-open
    connections costs neither threads nor memory. A connection idle for ``idle_timeout``
    seconds is closed.

    Args:
        repo: the repository folder.
        host: address to listen on (``127.0.0.1`` by default; never 0.0.0.0 without TLS in
            front).
        port: port (0 picks a free one; see :attr:`port`).
        access_log: file the access log is appended to (stderr when None).
        handler: the request handler class (tests pass a faulty one).
        tls_cert: PEM certificate chain to serve HTTPS with.
        tls_key: its PEM private key.
        max_workers: connections served at once.
        max_queued: accepted connections that may wait for a worker.
        idle_timeout: seconds a connection may stay silent.

    Raises:
        RepositoryStateError: ``repo`` holds no repository.
    """

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
        max_workers: int = MAX_WORKERS,
        max_queued: int = MAX_QUEUED,
        idle_timeout: float = IDLE_TIMEOUT_S,
    ) -> None:
        repo = Path(repo)
        if not (repo / METADATA / "timestamp.json").is_file():
            raise RepositoryStateError(f"{repo}: not an update repository")
        if max_workers < 1 or max_queued < 0 or idle_timeout <= 0:
            raise RepositoryStateError(
                "max_workers must be >= 1, max_queued >= 0 and idle_timeout > 0"
            )
        self.repo = repo
        self.idle_timeout = float(idle_timeout)
        self._log_lock = threading.Lock()
        self._log: IO[str] = open(access_log, "a") if access_log else sys.stderr  # noqa: SIM115
        self._slots = threading.BoundedSemaphore(max_workers + max_queued)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="update-http")
        super().__init__((host, port), functools.partial(handler, directory=str(repo)))
        if tls_cert is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(tls_cert, tls_key)
            # the handshake happens in the worker (with the idle timeout), not in accept()
            self.socket = context.wrap_socket(
                self.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls_cert is not None else "http"

    @property
    def port(self) -> int:
        """The port actually bound."""
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        """The base URL consoles use."""
        return f"{self.scheme}://{self.server_address[0]}:{self.port}"

    def process_request(self, request: Any, client_address: Any) -> None:
        """Hand the connection to a worker, or close it when every worker and queue slot is
        taken."""
        if not self._slots.acquire(blocking=False):
            host = client_address[0] if client_address else "-"
            self.write_log(f"{host} - - [{_now()}] connection closed: all workers busy\n")
            self.shutdown_request(request)
            return
        try:
            self._pool.submit(self._work, request, client_address)
        except RuntimeError:  # the pool is shut down: the server is closing
            self._slots.release()
            self.shutdown_request(request)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            if isinstance(request, ssl.SSLSocket):
                request.settimeout(self.idle_timeout)
                request.do_handshake()
            self.finish_request(request, client_address)
        except (OSError, ssl.SSLError):
            pass  # a client that went away or never finished its handshake
        except Exception as e:  # one connection must not stop the server
            self.write_log(f"{client_address[0]} - - [{_now()}] error {type(e).__name__}: {e}\n")
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def write_log(self, line: str) -> None:
        """Append one line to the access log (thread-safe, flushed)."""
        with self._log_lock:
            if not self._log.closed:
                self._log.write(line)
                self._log.flush()

    def server_close(self) -> None:
        """Close the socket, let the workers finish, and close the access log."""
        super().server_close()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._log is not sys.stderr:
            with self._log_lock:
                self._log.close()


def _now() -> str:
    """The access log's time stamp (Common Log Format)."""
    return time.strftime("%d/%b/%Y:%H:%M:%S %z")


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
