"""Killed at any moment during an update, the console still starts with a working model.

``sonofed console update`` runs in a subprocess that is SIGKILLed at each step of an install
(``$SONOFED_CRASH_AT``, see release/_faults.py) and, separately, from outside at moments spread
over a whole update. After every kill the console's state names a complete, self-testing
model, and the next update finishes the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from release.console_client import provision, status, update
from release.manifest import verify_release
from release.selftest import run_self_test
from release.slots import ConsoleFolder
from tests._release_world import release_world, serving

REPO = Path(__file__).resolve().parents[1]
POINTS_BEFORE_SWITCH = (
    "downloaded",
    "mid-extract",
    "extracted",
    "self-tested",
    "forgot-previous",
    "moved-into-slot",
)


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    return release_world(tiny_world, tmp_path_factory.mktemp("release-world"))


def _update_cmd(console: Path, url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sonofed.cli",
        "console",
        "update",
        "--server",
        url,
        "--dir",
        str(console),
        "--json",
    ]


def _starts_with_a_working_model(console: Path) -> str:
    """What a console does at start-up: read its state, check and load the active model."""
    report = status(console)
    assert report["active_ok"] is True, report
    active = ConsoleFolder(console).active_release()
    assert verify_release(active).version == report["active_version"]
    assert run_self_test(active).passed
    return report["active_version"]


def _console_with_two_models(world, site, tmp_path) -> Path:
    console = tmp_path / "console"
    provision(site.repo.metadata_dir / "root.json", "us-kill", console)
    for version in ("1.1.0", "1.2.0"):
        site.publish(world.releases[version])
        assert update(console, site.url).installed == version
    site.publish(world.releases["1.3.0"])
    return console


def test_sigkill_at_every_step_of_an_install(world, tmp_path):
    with serving(tmp_path / "vendor") as site:
        console = _console_with_two_models(world, site, tmp_path)
        for point in POINTS_BEFORE_SWITCH:
            env = {**os.environ, "SONOFED_CRASH_AT": point}
            done = subprocess.run(
                _update_cmd(console, site.url), cwd=REPO, env=env, capture_output=True, timeout=120
            )
            assert done.returncode == -signal.SIGKILL, (point, done.stderr[-2000:])
            assert _starts_with_a_working_model(console) == "1.2.0", point
        env = {**os.environ, "SONOFED_CRASH_AT": "switched"}
        done = subprocess.run(
            _update_cmd(console, site.url), cwd=REPO, env=env, capture_output=True, timeout=120
        )
        assert done.returncode == -signal.SIGKILL
        assert _starts_with_a_working_model(console) == "1.3.0"
        after = update(console, site.url)  # cleans what the kills left and carries on
        assert after.action == "up-to-date"
        assert sorted(p.name for p in (console / "slots").iterdir()) == ["a", "b"]
        assert not any(ConsoleFolder(console).downloads.iterdir())


def test_sigkill_from_outside_at_moments_spread_over_an_update(world, tmp_path):
    with serving(tmp_path / "vendor") as site:
        console = _console_with_two_models(world, site, tmp_path)
        start = time.monotonic()
        probe = subprocess.run(
            _update_cmd(console, site.url), cwd=REPO, capture_output=True, timeout=120
        )
        duration = time.monotonic() - start
        assert probe.returncode == 0, probe.stderr[-2000:]
        assert _starts_with_a_working_model(console) == "1.3.0"
        versions = ["1.3.0"]
        for fraction, release in ((0.55, "1.4.0"), (0.75, "1.4.1"), (0.9, "1.4.2")):
            site.publish(world.releases[release])
            process = subprocess.Popen(
                _update_cmd(console, site.url),
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(duration * fraction)
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            versions.append(_starts_with_a_working_model(console))
        assert set(versions) <= {"1.3.0", "1.4.0", "1.4.1", "1.4.2"}
        final = update(console, site.url)
        assert final.installed == "1.4.2" and _starts_with_a_working_model(console) == "1.4.2"
