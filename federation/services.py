"""Processes that make one long-running service (SuperLink + proxy, SuperNode + executor).

A hospital's ``sonofed hospital join`` is such a service: it must stay in the federation
through a SuperLink that restarts, loses a request or has not registered the hospital's key yet.
``flower-supernode`` exits on those (an activation the SuperLink refuses is final for it, and a
retried activation whose first attempt did reach the SuperLink is refused as "already online"),
so the group restarts it after a growing pause, as a service manager would.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ProcessGroup", "RestartPolicy"]


@dataclass(frozen=True)
class RestartPolicy:
    """Restart a child that exits with an error: after ``first_delay`` seconds, doubling up to
    ``max_delay`` for each failure in a row. A child that ran ``max_delay`` seconds or longer
    before failing starts again from ``first_delay``.

    The 60 s ceiling: Flower marks a SuperNode offline two heartbeat intervals (2 x 30 s) after
    its last heartbeat, and re-activates only an offline node, so a node the SuperLink still
    counts as online is admitted again at most about a minute later.
    """

    first_delay: float = 5.0
    max_delay: float = 60.0

    def next_delay(self, previous: float | None, ran_for: float) -> float:
        """The pause before the next start, given the last pause (None: none yet)."""
        if previous is None or ran_for >= self.max_delay:
            return self.first_delay
        return min(previous * 2.0, self.max_delay)


@dataclass
class _Child:
    name: str
    command: list[str]
    env: dict[str, str]
    restart: RestartPolicy | None
    process: subprocess.Popen[bytes]
    started: float
    delay: float | None = None
    restarts: int = 0


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: the child gets SIGTERM when the supervising process dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _Stop(Exception):
    pass


class ProcessGroup:
    """Processes that make one service: started together, and all stopped when one exits
    (unless its :class:`RestartPolicy` starts it again) or the group is told to stop
    (SIGTERM/SIGINT)."""

    def __init__(self) -> None:
        self._children: list[_Child] = []

    def start(
        self,
        name: str,
        command: Sequence[str],
        env: Mapping[str, str],
        *,
        restart: RestartPolicy | None = None,
    ) -> None:
        """Start ``command`` (its output goes to this process's stdout/stderr); ``restart``:
        start it again when it exits with a non-zero code (only while :meth:`run` runs)."""
        child = _Child(name, list(command), dict(env), restart, self._spawn(command, env),
                       time.monotonic())  # fmt: skip
        self._children.append(child)

    @staticmethod
    def _spawn(command: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(command), env=dict(env), preexec_fn=_die_with_parent)

    def _first_exited(self) -> tuple[_Child, int] | None:
        for child in self._children:
            code = child.process.poll()
            if code is not None:
                return child, code
        return None

    def exited(self) -> tuple[str, int] | None:
        """The first child that has exited, with its code."""
        ended = self._first_exited()
        return None if ended is None else (ended[0].name, ended[1])

    def restarts(self, name: str) -> int:
        """How often the child ``name`` was started again."""
        return next(child.restarts for child in self._children if child.name == name)

    def stop(self, timeout: float = 20.0) -> None:
        """Terminate every child still running (SIGTERM, then SIGKILL after ``timeout``)."""
        for child in reversed(self._children):
            if child.process.poll() is None:
                child.process.terminate()
        for child in self._children:
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()

    def _restart_or_end(self, child: _Child, code: int, say: Callable[[str], None]) -> bool:
        """Start ``child`` again after its pause if its policy says so; False: the group ends."""
        if child.restart is None or code == 0:
            return False
        now = time.monotonic()
        child.delay = child.restart.next_delay(child.delay, now - child.started)
        say(f"{child.name} exited with code {code}; starting it again in {child.delay:g} s")
        time.sleep(child.delay)
        child.process = self._spawn(child.command, child.env)
        child.started, child.restarts = time.monotonic(), child.restarts + 1
        return True

    def run(self, say: Callable[[str], None]) -> int:
        """Wait until a child exits for good or SIGTERM/SIGINT arrives, then stop the others.

        Returns:
            0 after a signal, else the exit code of the child that ended (1 if it was 0).
        """

        def stop(signum: int, frame: Any) -> None:
            raise _Stop

        previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                if (ended := self._first_exited()) is None:
                    time.sleep(0.5)
                    continue
                child, code = ended
                if not self._restart_or_end(child, code, say):
                    say(f"{child.name} exited with code {code}; stopping the others")
                    return code or 1
        except _Stop:
            say("stopping")
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()
