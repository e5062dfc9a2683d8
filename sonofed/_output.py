"""Shared helpers of the command line: user errors, JSON and table output."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from data_registry.exceptions import RegistryError


class UserError(Exception):
    """A mistake in the user's input or environment: printed as one line, no traceback."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_USER_ERRORS: tuple[type[BaseException], ...] = (RegistryError, FileNotFoundError, FileExistsError)


def add_user_errors(*kinds: type[BaseException]) -> None:
    """Let another package's error family be reported as a user error."""
    global _USER_ERRORS
    _USER_ERRORS = (*_USER_ERRORS, *kinds)


@contextmanager
def user_errors(exit_code: int = 2) -> Iterator[None]:
    """Turn the known error families into :class:`UserError`."""
    try:
        yield
    except UserError:
        raise
    except _USER_ERRORS as e:
        raise UserError(str(e), exit_code) from e


def print_json(payload: Any) -> None:
    json.dump(payload, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def handler(function: Callable[..., int | None]) -> Callable[..., int | None]:
    """Wrap a sub-command so that known errors become one-line messages."""

    def run(args: Any) -> int | None:
        with user_errors():
            return function(args)

    run.__doc__ = function.__doc__
    return run
