"""Helpers of the deployment tests: real SuperLink/proxy/SuperNode processes on 127.0.0.1.

Every process a test starts is stopped however the test ends: its own children (nginx, the
hospital's executor, ClientApp processes) and the detached ``flower-superexec`` helpers, found
by the ports given here. Timeouts are generous: the tests must pass on a loaded 2-core machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

from federation.deployment import free_port

REPO = Path(__file__).resolve().parents[1]
SONOFED = [sys.executable, "-m", "sonofed.cli"]
START_TIMEOUT = 180.0
DEPLOY_TIMEOUT = 3000
"""pytest-timeout of a whole deployment test: real processes on a loaded 2-core machine (a
round has taken over 10 minutes at a load average of 35)."""


def sonofed(*args: str) -> list[str]:
    """``sonofed ARGS`` with this interpreter."""
    return [*SONOFED, *args]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = START_TIMEOUT) -> None:
    """Wait until 127.0.0.1:port accepts connections (fails early if ``process`` exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited with {process.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on port {port}")


def wait_for_text(path: Path, text: str, timeout: float = START_TIMEOUT) -> str:
    """Wait until the file contains ``text``; returns the content."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.is_file() else ""
        if text in content:
            return content
        time.sleep(0.5)
    raise TimeoutError(f"{path} never contained {text!r}")


def process_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["FLWR_HOME"] = str(tmp_path / "flwr-home")
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


class Processes:
    """Processes a test started; stopped (and their children) however the test ends."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env, self.logs = env, logs
        self.started: list[tuple[subprocess.Popen, object]] = []
        self.named: dict[str, subprocess.Popen] = {}
        self.ports: list[int] = []

    def port(self) -> int:
        """A free port none of this test's processes was given yet."""
        while (port := free_port()) in self.ports:
            pass
        self.ports.append(port)
        return port

    def _helpers(self) -> list[psutil.Process]:
        addresses = {f"127.0.0.1:{port}" for port in self.ports}
        found = []
        for process in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = process.info["cmdline"] or []
                if process.pid != os.getpid() and addresses & set(cmdline):
                    found.append(process)
        return found

    def start(self, name: str, command: list[str], *, nice: int = 0) -> subprocess.Popen:
        """Start ``command`` logging to ``NAME.log``; ``nice`` lowers its priority (hospitals:
        on a real deployment they never share the SuperLink's CPUs)."""
        if nice:
            command = ["nice", "-n", str(nice), *command]
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            command, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.started.append((process, log))
        self.named[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.is_file() else ""

    def tails(self, names: list[str], chars: int = 1500) -> str:
        """The end of each named process's log (what a failing test shows)."""
        return "\n".join(f"== {name}.log:\n{self.log(name)[-chars:]}" for name in names)

    def run_watching(
        self, command: list[str], watch: list[str], timeout: float
    ) -> subprocess.CompletedProcess:
        """Run ``command`` to its end while the processes named ``watch`` keep running: if one
        of them exits first, fail at once with their logs instead of waiting out ``timeout``."""
        name = "watched"
        with (
            open(self.logs / f"{name}.out", "wb") as out,
            open(self.logs / f"{name}.err", "wb") as err,
        ):
            process = subprocess.Popen(command, cwd=REPO, env=self.env, stdout=out, stderr=err)
            deadline = time.monotonic() + timeout
            try:
                while process.poll() is None:
                    gone = [n for n in watch if self.named[n].poll() is not None]
                    assert not gone, f"{gone} exited while {command[3:5]} ran\n{self.tails(watch)}"
                    assert time.monotonic() < deadline, f"{command[3:5]} ran past {timeout:g} s"
                    time.sleep(1.0)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        stdout, stderr = (
            (self.logs / f"{name}{suffix}").read_text(errors="replace")
            for suffix in (".out", ".err")
        )
        return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)

    def stop(self) -> None:
        family = self._helpers()
        for process, _ in self.started:
            with contextlib.suppress(psutil.NoSuchProcess):
                family += psutil.Process(process.pid).children(recursive=True)
        for process, _ in self.started:
            if process.poll() is None:
                process.terminate()
        for process, log in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
        for child in family + self._helpers():
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def start_superlink(processes: Processes, pki_dir: Path, database: Path) -> tuple[str, int]:
    """``sonofed vendor superlink`` (SuperLink + proxy); returns the proxy address and the
    SuperLink's own loopback port."""
    port, inner = processes.port(), processes.port()
    superlink = processes.start("superlink", sonofed(
        "vendor", "superlink", "--pki", str(pki_dir), "--database", str(database),
        "--port", str(port), "--superlink-port", str(inner),
    ))  # fmt: skip
    wait_for_port(port, superlink)
    wait_for_text(processes.logs / "superlink.log", "proxy listening on")
    return f"127.0.0.1:{port}", inner


def flwr_json(args: list[str], env: dict[str, str], timeout: float = 120) -> dict:
    """Run plain ``flwr ARGS --format json`` (what anyone holding ca.crt can run)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), *args, "--format", "json"],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
    )  # fmt: skip
    start = done.stdout.find("{")
    assert start >= 0, (done.stdout + done.stderr)[-2000:]
    return json.loads(done.stdout[start:])


def write_flwr_connection(home: Path, superlink: str, ca_cert: Path) -> dict[str, str]:
    """A FLWR_HOME whose default connection ``x`` points at ``superlink`` with ``ca_cert``;
    returns the environment that uses it."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "x"\n\n[superlink.x]\naddress = "{superlink}"\n'
        f'root-certificates = "{ca_cert.resolve()}"\n'
    )
    env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1")
    return env
