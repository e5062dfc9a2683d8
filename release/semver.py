"""Semantic versions (``MAJOR.MINOR.PATCH[-PRERELEASE][+BUILD]``), ordered as semver.org says.

Build metadata is ignored when comparing; a pre-release sorts before its release.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from release.exceptions import VersionError

_PATTERN = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


@total_ordering
@dataclass(frozen=True)
class SemVer:
    """A parsed semantic version.

    Attributes:
        major: incompatible changes.
        minor: compatible additions.
        patch: fixes.
        prerelease: dot-separated identifiers after ``-`` (empty for a release).
        build: build metadata after ``+`` (not compared).
    """

    major: int
    minor: int
    patch: int
    prerelease: tuple[str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> SemVer:
        """Parse a version string.

        Args:
            text: e.g. ``1.2.0`` or ``1.3.0-rc.1``.

        Returns:
            The version.

        Raises:
            VersionError: the text is not a semantic version.
        """
        match = _PATTERN.match(str(text).strip())
        if match is None:
            raise VersionError(f"{text!r} is not a semantic version (MAJOR.MINOR.PATCH)")
        major, minor, patch, pre, build = match.groups()
        return cls(
            int(major), int(minor), int(patch), tuple(pre.split(".")) if pre else (), build or ""
        )

    def _key(self) -> tuple:
        # a release (no pre-release) sorts after every pre-release of the same version
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.prerelease)
        return (self.major, self.minor, self.patch, not self.prerelease, pre)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._key() < other._key()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SemVer):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        if self.prerelease:
            text += "-" + ".".join(self.prerelease)
        return text + (f"+{self.build}" if self.build else "")


def parse(text: str) -> SemVer:
    """Shorthand of :meth:`SemVer.parse`."""
    return SemVer.parse(text)
