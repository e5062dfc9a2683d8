"""python-tuf's fetcher for the console, with a total deadline on every download.

python-tuf's own fetchers bound the gap between two received bytes, not the whole download: a
server that trickles one byte every few seconds keeps them reading for as long as it likes.
:class:`DeadlineFetcher` gives each download (a metadata file, a target) a wall-clock deadline:
a watchdog shuts the connection's socket down when it passes, which ends any blocked connect,
header or body read at once, and the download fails with
:class:`tuf.api.exceptions.SlowRetrievalError`. A connection cut before the announced length
fails as a :class:`tuf.api.exceptions.DownloadError`.

Plain ``http.client`` over the system's TLS trust store (``SSL_CERT_FILE`` is honoured); no
proxy support. No torch is imported here.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

METADATA_DEADLINE_S = 60.0
"""Default total time for one metadata file (they are kilobytes)."""
TARGET_DEADLINE_S = 900.0
"""Default total time for one release archive."""
GAP_TIMEOUT_S = 15.0
"""Longest silence (connect, or between two reads) before a download is given up."""
CHUNK = 1 << 16


class DeadlineFetcher(FetcherInterface):
    """A python-tuf fetcher whose every download must finish before its deadline.

    Args:
        target_prefix: URLs starting with this are targets (``target_deadline_s``); any other
            URL is metadata (``metadata_deadline_s``).
        metadata_deadline_s: total seconds allowed for one metadata file.
        target_deadline_s: total seconds allowed for one target.
        gap_timeout_s: longest silence allowed.
        user_agent: the ``User-Agent`` header.
    """

    def __init__(
        self,
        target_prefix: str,
        *,
        metadata_deadline_s: float = METADATA_DEADLINE_S,
        target_deadline_s: float = TARGET_DEADLINE_S,
        gap_timeout_s: float = GAP_TIMEOUT_S,
        user_agent: str = "sonofed-console",
    ) -> None:
        if min(metadata_deadline_s, target_deadline_s, gap_timeout_s) <= 0:
            raise ValueError("deadlines and the gap timeout must be positive")
        self.target_prefix = target_prefix
        self.metadata_deadline_s = float(metadata_deadline_s)
        self.target_deadline_s = float(target_deadline_s)
        self.gap_timeout_s = float(gap_timeout_s)
        self.user_agent = user_agent

    def deadline_for(self, url: str) -> float:
        """The total seconds allowed for ``url``."""
        return (
            self.target_deadline_s
            if url.startswith(self.target_prefix)
            else self.metadata_deadline_s
        )

    def _fetch(self, url: str) -> Iterator[bytes]:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise exceptions.DownloadError(f"{url}: not an http(s) URL")
        allowed = self.deadline_for(url)
        timeout = min(self.gap_timeout_s, allowed)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=ssl.create_default_context()
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        watchdog = _Watchdog(conn, allowed)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(
                "GET", path, headers={"User-Agent": self.user_agent, "Connection": "close"}
            )
            response = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            watchdog.stop()
            conn.close()
            raise watchdog.error(url, e) from e
        if response.status != http.HTTPStatus.OK:
            watchdog.stop()
            conn.close()
            raise exceptions.DownloadHTTPError(
                f"HTTP error occurred with status {response.status}", response.status
            )
        return self._chunks(url, conn, response, watchdog)

    def _chunks(
        self,
        url: str,
        conn: http.client.HTTPConnection,
        response: http.client.HTTPResponse,
        watchdog: _Watchdog,
    ) -> Iterator[bytes]:
        try:
            while chunk := response.read1(CHUNK):
                yield chunk
            if watchdog.expired.is_set():
                raise exceptions.SlowRetrievalError(watchdog.message(url))
            if response.length:  # bytes announced but never sent: the connection was cut
                raise exceptions.DownloadError(
                    f"{url}: the connection closed {response.length} bytes before the end"
                )
        except (OSError, http.client.HTTPException) as e:
            raise watchdog.error(url, e) from e
        finally:
            watchdog.stop()
            conn.close()


class _Watchdog:
    """Shuts a connection's socket down when its deadline passes."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        self.seconds = seconds
        self.started = time.monotonic()
        self.expired = threading.Event()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        self.expired.set()
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._timer.cancel()

    def message(self, url: str) -> str:
        return f"{url}: not complete within its deadline of {self.seconds:g} s"

    def error(self, url: str, cause: BaseException) -> exceptions.DownloadError:
        """The python-tuf error for a failed connect or read."""
        if self.expired.is_set():
            return exceptions.SlowRetrievalError(self.message(url))
        if isinstance(cause, TimeoutError):
            return exceptions.SlowRetrievalError(f"{url}: the server went silent ({cause})")
        return exceptions.DownloadError(f"{url}: {type(cause).__name__}: {cause}")
