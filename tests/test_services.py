"""federation.services: a service's processes run together, and a child with a restart policy
(the hospital's SuperNode) is started again after an error; real child processes. And the
ports such services are given lie below the kernel's ephemeral range."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

from federation import deployment
from federation.deployment import free_port
from federation.services import ProcessGroup, RestartPolicy

# exits 3 on its first two starts, then 0 (counts its starts in the file given)
FLAKY = """
import sys
from pathlib import Path

import pytest
path = Path(sys.argv[1])
starts = int(path.read_text()) + 1 if path.exists() else 1
path.write_text(str(starts))
sys.exit(3 if starts <= 2 else 0)
"""


def test_the_policy_doubles_the_pause_up_to_its_ceiling_and_starts_over_after_a_long_run() -> None:
    policy = RestartPolicy(first_delay=5.0, max_delay=60.0)
    delays, previous = [], None
    for _ in range(6):
        previous = policy.next_delay(previous, ran_for=1.0)
        delays.append(previous)
    assert delays == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert policy.next_delay(60.0, ran_for=60.0) == 5.0  # it ran a while: a new failure


def test_a_child_with_a_policy_is_started_again_until_it_ends_cleanly(tmp_path: Path) -> None:
    starts, said = tmp_path / "starts", []
    group = ProcessGroup()
    group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], os.environ)
    group.start("flaky", [sys.executable, "-c", FLAKY, str(starts)], os.environ,
                restart=RestartPolicy(first_delay=0.1, max_delay=30.0))  # fmt: skip
    assert group.run(said.append) == 1  # a clean exit still ends the service
    assert starts.read_text() == "3"
    assert group.restarts("flaky") == 2
    assert said == [
        "flaky exited with code 3; starting it again in 0.1 s",
        "flaky exited with code 3; starting it again in 0.2 s",
        "flaky exited with code 0; stopping the others",
    ]
    assert group.exited() is not None  # the sleeper was stopped with the group


def test_without_a_policy_an_error_ends_the_service_with_its_code() -> None:
    group, said = ProcessGroup(), []
    group.start("sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], os.environ)
    group.start("fails", [sys.executable, "-c", "import sys; sys.exit(4)"], os.environ)
    assert group.run(said.append) == 4
    assert said == ["fails exited with code 4; stopping the others"]
    assert group.restarts("fails") == 0


def test_free_ports_lie_below_the_ephemeral_range_and_are_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    start = deployment._ephemeral_start()
    ports = {free_port() for _ in range(20)}
    assert all(deployment.LOWEST_PICKED_PORT <= p < start for p in ports)
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # nothing holds it
    odd = tmp_path / "range"
    odd.write_text("1024\t65535\n")  # no room below: the kernel chooses
    monkeypatch.setattr(deployment, "EPHEMERAL_RANGE", odd)
    assert deployment._ephemeral_start() == 1024
    assert 0 < free_port() < 65536
