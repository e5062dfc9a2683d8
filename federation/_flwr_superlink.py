"""``flower-superlink`` whose SQLite database waits longer for a lock.

Flower 1.42 opens its state database with ``busy_timeout = 5000`` ms
(``flwr.supercore.constant.SQLITE_PRAGMAS``) and updates it on nearly every request (expired
task tokens are cleaned up even on reads). On a busy host a writer can hold the lock for longer
than 5 s; the request then fails with "database is locked", and when the request is the
SuperLink executor's ``AcquireTask`` the executor exits and takes the running ServerApp with it.
``python -m federation._flwr_superlink ARGS…`` is ``flower-superlink ARGS…`` with a
:data:`BUSY_TIMEOUT_MS` wait instead; nothing else changes.
"""

from __future__ import annotations

import sys

BUSY_TIMEOUT_MS = 120_000


def main() -> None:
    """``flower-superlink`` with the longer SQLite busy timeout."""
    from flwr.supercore import sql_mixin

    sql_mixin.SQLITE_PRAGMAS = tuple(
        (name, str(BUSY_TIMEOUT_MS) if name == "busy_timeout" else value)
        for name, value in sql_mixin.SQLITE_PRAGMAS
    )
    from flwr.superlink.cli import flower_superlink

    sys.argv[0] = "flower-superlink"
    flower_superlink()


if __name__ == "__main__":
    main()
