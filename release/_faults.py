"""Crash points for the console's kill tests.

``crashpoint(name)`` does nothing unless the environment variable ``SONOFED_CRASH_AT`` equals
``name``; then the process sends itself SIGKILL right there: no cleanup, no ``finally``, no
flush, exactly like a power cut. The tests use it to stop an update at each step and check that
the console still starts with a working model.
"""

from __future__ import annotations

import os
import signal

ENV = "SONOFED_CRASH_AT"


def crashpoint(name: str) -> None:
    """Die here with SIGKILL when ``$SONOFED_CRASH_AT`` names this point.

    Args:
        name: the point's name (e.g. ``mid-extract``).
    """
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
