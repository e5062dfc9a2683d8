"""A server that trickles bytes cannot hold a console update (issue 13, item 3): every metadata
and target download has a total deadline, and ``console rollback`` never waits behind a stalled
download. Real HTTP on loopback; the deadlines are made small so the tests stay short."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from release.console_client import Deadlines, provision, rollback, status, update
from release.server import RepositoryRequestHandler, UpdateServer, start_background
from tests._release_world import release_world, serving
from tests.test_console_update import assert_working

TRICKLE_GAP_S = 0.2
"""Seconds between two trickled bytes: far below any gap timeout, so only a deadline helps."""
TRICKLE_FOR_S = 30.0
"""The trickling handler gives up after this long (keeps a broken test bounded)."""


class TrickleHandler(RepositoryRequestHandler):
    """Sends the files whose path contains ``slow`` one byte every ``TRICKLE_GAP_S`` seconds;
    with ``in_headers`` it trickles an endless header instead of the body."""

    slow = "/targets/"
    in_headers = False
    started = threading.Event()

    def _trickle(self, data: bytes) -> None:
        type(self).started.set()
        end = time.monotonic() + TRICKLE_FOR_S
        for byte in data:
            if time.monotonic() > end:
                break
            try:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
            except OSError:
                break  # the console gave up
            time.sleep(TRICKLE_GAP_S)
        self.close_connection = True

    def send_head(self):
        if self.in_headers and self.slow in self.path:
            self.log_request(200)
            self._trickle(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 10_000)
            return None
        return super().send_head()

    def copyfile(self, source, outputfile) -> None:
        if self.slow in self.path:
            self._trickle(source.read())
            return
        super().copyfile(source, outputfile)


def _trickling(site, tmp_path: Path, **attrs) -> tuple[UpdateServer, threading.Event]:
    started = threading.Event()
    handler = type("Trickle", (TrickleHandler,), {"started": started, **attrs})
    server = UpdateServer(site.repo.path, access_log=tmp_path / "slow.log", handler=handler)
    start_background(server)
    return server, started


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    return release_world(tiny_world, tmp_path_factory.mktemp("release-world"))


@pytest.fixture
def site(tmp_path):
    with serving(tmp_path / "vendor") as site:
        yield site


def _installed(world, site, tmp_path, *versions: str) -> Path:
    console = tmp_path / "console"
    provision(site.repo.metadata_dir / "root.json", "us-0001", console)
    for version in versions:
        site.publish(world.releases[version])
        assert update(console, site.url).action == "installed"
    return console


@pytest.mark.parametrize(
    "attrs",
    [
        {"slow": "/metadata/timestamp.json"},
        {"slow": "/metadata/timestamp.json", "in_headers": True},
    ],
    ids=["body", "headers"],
)
def test_trickled_metadata_is_cut_off_at_its_deadline(world, site, tmp_path, attrs):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["1.2.0"])
    slow, started = _trickling(site, tmp_path, **attrs)
    try:
        start = time.monotonic()
        result = update(console, slow.url, deadlines=Deadlines(metadata_s=1.0, target_s=1.0))
        elapsed = time.monotonic() - start
    finally:
        slow.shutdown()
        slow.server_close()
    assert started.is_set()  # it really trickled
    assert (result.action, result.check) == ("refused", "download"), result
    assert "deadline of 1 s" in result.reason
    assert elapsed < 4.0
    assert_working(console, "1.1.0")
    assert update(console, site.url).installed == "1.2.0"  # a good server still works


def test_rollback_is_never_blocked_by_a_stalled_download(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0", "1.2.0")
    site.publish(world.releases["1.3.0"])
    slow, started = _trickling(site, tmp_path, slow="/targets/")
    results = []
    worker = threading.Thread(
        target=lambda: results.append(
            update(console, slow.url, deadlines=Deadlines(metadata_s=10.0, target_s=4.0))
        )
    )
    try:
        begin = time.monotonic()
        worker.start()
        assert started.wait(10.0), "the target download never started"
        rolled = rollback(console)  # while the update is stuck in its download
        assert worker.is_alive()
        assert (rolled["previous"], rolled["active"]) == ("1.2.0", "1.1.0")
        worker.join(15.0)
        elapsed = time.monotonic() - begin
    finally:
        slow.shutdown()
        slow.server_close()
    assert not worker.is_alive()
    assert (results[0].action, results[0].check) == ("refused", "download"), results[0]
    assert "deadline of 4 s" in results[0].reason
    assert elapsed < 12.0
    assert_working(console, "1.1.0")
    assert status(console)["previous_version"] == "1.2.0"
