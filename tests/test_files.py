"""The one file helper (``data_registry.files``): atomic writes with the umask's mode, keys
private, the old content kept when a write fails; the packages above it write through it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from data_registry.files import sha256_file, write_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_atomic_keeps_the_umask_mode_or_the_given_one(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        plain = write_atomic(tmp_path / "a" / "plain.json", b"{}")
        quick = write_atomic(tmp_path / "quick.png", b"png", durable=False)
        key = write_atomic(tmp_path / "key.pem", b"secret", mode=0o600)
    finally:
        os.umask(old)
    assert plain.read_bytes() == b"{}" and _mode(plain) == 0o640
    assert quick.read_bytes() == b"png" and _mode(quick) == 0o640
    assert _mode(key) == 0o600
    assert sha256_file(key) == "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_atomic(tmp_path / "state.json", b"old")
    with pytest.raises(TypeError):
        write_atomic(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_reports_and_bundle_metadata_are_written_with_the_umask_mode(tiny_world) -> None:
    """The evaluation report used to be written with mkstemp's 0600 by a helper of its own."""
    mask = os.umask(0)
    os.umask(mask)
    for name in ("evaluation.html", "metadata.json"):
        path = tiny_world.bundle / name
        assert _mode(path) == 0o666 & ~mask, (name, oct(_mode(path)))
    assert not [p for p in tiny_world.bundle.iterdir() if p.name.endswith(".tmp")]
