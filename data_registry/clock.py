"""The time stamped on registry versions and locked test sets.

``SOURCE_DATE_EPOCH`` (seconds since 1970, the reproducible-builds convention) replaces the
clock when set, so that two runs over the same exports write byte-identical registries and seal
the same locked set (the demo sets it to its commit's time).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from data_registry.exceptions import SourceError

ENV = "SOURCE_DATE_EPOCH"


def utc_now() -> datetime:
    """The current UTC time to the second, or ``SOURCE_DATE_EPOCH`` when it is set.

    Raises:
        SourceError: ``SOURCE_DATE_EPOCH`` is not a whole number of seconds.
    """
    value = os.environ.get(ENV, "").strip()
    if not value:
        return datetime.now(UTC).replace(microsecond=0)
    try:
        return datetime.fromtimestamp(int(value), UTC)
    except (ValueError, OverflowError) as e:
        raise SourceError(f"{ENV}={value!r}: expected whole seconds since 1970") from e
