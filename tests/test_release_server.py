"""The update server under hostile clients (issue 13, item 4), on loopback with a real server:
malformed requests get a 4xx and an access-log line (no traceback), idle connections time out,
the worker count is bounded, and only regular files inside the repository are served."""

from __future__ import annotations

import http.client
import os
import socket
import threading
import time
from pathlib import Path

import pytest

from release.server import UpdateServer, start_background


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "metadata").mkdir(parents=True)
    (root / "targets").mkdir()
    (root / "metadata" / "timestamp.json").write_text('{"signed": {}}')
    (root / "targets" / "release.tar.gz").write_bytes(b"archive")
    return root


def _serve(repo: Path, log: Path, **kw) -> UpdateServer:
    server = UpdateServer(repo, "127.0.0.1", 0, access_log=log, **kw)
    start_background(server)
    return server


def _stop(server: UpdateServer) -> None:
    server.shutdown()
    server.server_close()


def _raw(port: int, data: bytes) -> bytes:
    """Send raw bytes, read the whole answer (the server closes the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def test_malformed_requests_get_a_4xx_and_a_log_line_never_a_traceback(repo, tmp_path, capfd):
    log = tmp_path / "access.log"
    server = _serve(repo, log)
    requests = {
        b"GARBAGE\r\n\r\n": 400,
        b"GET /metadata/" + b"a" * 300 + b" HTTP/1.1\r\nHost: x\r\n\r\n": 414,
        b"GET /targets/" + b"b" * 256 + b".tar.gz HTTP/1.1\r\nHost: x\r\n\r\n": 414,
        b"GET / HTTP/9.9 extra\r\n\r\n": 400,
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n": 400,  # a TLS hello on HTTP
        b"GET /metadata/timestamp.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n": 200,
    }
    try:
        for request, expected in requests.items():
            answer = _raw(server.port, request)
            assert answer.startswith(f"HTTP/1.1 {expected} ".encode()), (request[:40], answer[:80])
    finally:
        _stop(server)
    lines = log.read_text().splitlines()
    assert [int(line.rsplit('" ', 1)[1].split()[0]) for line in lines] == list(requests.values())
    assert "Traceback" not in capfd.readouterr().err


def test_idle_connections_time_out_and_the_workers_are_bounded(repo, tmp_path):
    log = tmp_path / "access.log"
    server = _serve(repo, log, max_workers=3, max_queued=2, idle_timeout=0.5)
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(40)]
    try:
        time.sleep(0.2)
        workers = [t for t in threading.enumerate() if t.name.startswith("update-http")]
        assert len(workers) <= 3  # 40 half-open connections, never 40 threads
        start = time.monotonic()
        for conn in idle:  # the server hangs up on every one of them, quickly
            assert conn.recv(1024) == b""
        closed_after = time.monotonic() - start
        assert closed_after < 5.0
        assert "all workers busy" in log.read_text()
        assert _get(server.port, "/metadata/timestamp.json") == 200  # workers free again
    finally:
        for conn in idle:
            conn.close()
        _stop(server)


def test_only_regular_files_inside_the_repository_are_served(repo, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("private key")
    os.symlink(outside, repo / "targets" / "planted.tar.gz")  # a link out of the repository
    os.symlink(repo / "metadata" / "timestamp.json", repo / "metadata" / "alias.json")  # inside
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.json").write_text("{}")
    os.symlink(tmp_path / "elsewhere", repo / "metadata" / "linked")  # a linked folder
    os.mkfifo(repo / "targets" / "pipe.tar.gz")  # not a regular file
    log = tmp_path / "access.log"
    server = _serve(repo, log)
    try:
        assert _get(server.port, "/targets/release.tar.gz") == 200
        for path in (
            "/targets/planted.tar.gz",
            "/metadata/alias.json",
            "/metadata/linked/x.json",
            "/targets/pipe.tar.gz",
            "/targets/",
            "/metadata/../../secret.txt",
            "/targets/%2e%2e/%2e%2e/secret.txt",
        ):
            assert _get(server.port, path) == 404, path
    finally:
        _stop(server)
    assert "private key" not in log.read_text()
