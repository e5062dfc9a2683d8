"""Shared material of the release and console-update tests.

From the session's ``tiny_world`` bundle: a gate report that passes honestly (the candidate is
compared with itself under a test-only protocol whose floors the barely-trained model meets;
the production protocol in params.yaml is untouched), one release built by
:func:`release.bundle.build_release`, and variants of it (other versions, another console
model, newer console software, a broken self-test) re-sealed the way the vendor would.
Per test: a fresh repository and keys, an update server on a free loopback port, a console.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from models.bundle import load_metadata, write_metadata
from release.keys import KeyStore
from release.layout import MODEL_DIR, SELFTEST_CASES
from release.manifest import ReleaseManifest, seal_release
from release.protocol import FirstReleaseFloors, GateProtocol
from release.repository import UpdateRepository
from release.server import RepositoryRequestHandler, UpdateServer, start_background

TEST_PROTOCOL = GateProtocol(
    protocol_version=1,
    n_bootstrap=200,
    confidence=0.95,
    seed=0,
    auc_non_inferiority_margin=0.02,
    min_sensitivity_high_sensitivity=0.5,
    min_specificity_high_specificity=0.5,
    subgroup_auc_margin=0.05,
    subgroup_min_per_class=1,
    dice_floor=0.0,
    ece_ceiling=0.5,
    first_release=FirstReleaseFloors(auc_floor=0.6, subgroup_auc_floor=0.5),
)
"""A test-only protocol: the comparisons as in production, floors the tiny model meets."""

_CACHE: dict[str, object] = {}


@dataclass(frozen=True)
class ReleaseWorld:
    gate_dir: Path
    releases: dict[str, Path]


def variant(
    source: Path,
    out: Path,
    *,
    version: str,
    console_models: list[str] | None = None,
    min_console_version: str | None = None,
    probability_shift: float = 0.0,
) -> Path:
    """A copy of a release with another version (and compatibility), re-sealed.

    ``probability_shift`` moves the self-test's expected probabilities: a release whose
    reference cases cannot reproduce on a console.
    """
    shutil.copytree(source, out)
    metadata = load_metadata(out / MODEL_DIR)
    write_metadata(out / MODEL_DIR, metadata.model_copy(update={"version": version}))
    cases = json.loads((out / SELFTEST_CASES).read_text())
    cases["model_version"] = version
    for case in cases["cases"]:
        p = case["expected"]["malignancy_probability"]
        case["expected"]["malignancy_probability"] = min(1.0, max(0.0, p + probability_shift))
    (out / SELFTEST_CASES).write_text(json.dumps(cases, indent=2))
    manifest = ReleaseManifest.model_validate_json((out / "release.json").read_bytes())
    update: dict[str, object] = {"version": version}
    if console_models is not None:
        update["console_models"] = console_models
    if min_console_version is not None:
        update["min_console_version"] = min_console_version
    seal_release(out, manifest.model_copy(update=update))
    return out


def release_world(tiny_world, root: Path) -> ReleaseWorld:
    """Build (once per session) the gate report, a release and its variants."""
    if "world" in _CACHE:
        return _CACHE["world"]  # type: ignore[return-value]
    from release.bundle import build_release
    from release.gates import validate, write_validation

    gate_dir = root / "gates"
    result = validate(
        tiny_world.bundle, tiny_world.locked, TEST_PROTOCOL, current=tiny_world.bundle
    )
    assert result.report.passed, [g.name for g in result.report.failed]
    write_validation(result, gate_dir)
    base = root / "releases" / "1.1.0"
    build_release(
        tiny_world.bundle,
        gate_dir / "gate-report.json",
        base,
        version="1.1.0",
        registries=tiny_world.registries,
        reference_cases=2,
    )
    releases = {"1.1.0": base}
    for name, kwargs in {
        "1.0.0": {"version": "1.0.0"},
        "1.2.0": {"version": "1.2.0"},
        "1.3.0": {"version": "1.3.0"},
        "1.4.0": {"version": "1.4.0"},
        "1.4.1": {"version": "1.4.1"},
        "1.4.2": {"version": "1.4.2"},
        "other-model": {"version": "1.5.0", "console_models": ["other-console"]},
        "newer-software": {"version": "1.6.0", "min_console_version": "99.0.0"},
        "broken-selftest": {"version": "1.7.0", "probability_shift": 0.2},
    }.items():
        releases[name] = variant(base, root / "releases" / name, **kwargs)
    world = ReleaseWorld(gate_dir, releases)
    _CACHE["world"] = world
    return world


@dataclass
class Site:
    """A repository with its keys, served on loopback."""

    repo: UpdateRepository
    offline: KeyStore
    online: KeyStore
    server: UpdateServer
    access_log: Path
    work: Path

    @property
    def url(self) -> str:
        return self.server.url

    def publish(self, release: Path, *, rollout: int = 100, channel: str = "stable", **kw):
        from release.bundle import write_archive

        archive = write_archive(release, self.work / "archives" / f"{release.name}.tar.gz")
        return self.repo.publish(
            archive,
            channel=channel,
            rollout_percent=rollout,
            offline=self.offline,
            online=self.online,
            **kw,
        )


@contextmanager
def serving(
    root: Path, handler: type[RepositoryRequestHandler] = RepositoryRequestHandler
) -> Iterator[Site]:
    """A fresh repository and keys under ``root``, served on a free loopback port."""
    repo = UpdateRepository.init(root / "repo", root / "keys" / "offline", root / "keys" / "online")
    offline = KeyStore(root / "keys" / "offline", "offline")
    online = KeyStore(root / "keys" / "online", "online")
    log = root / "access.log"
    server = UpdateServer(repo.path, "127.0.0.1", 0, access_log=log, handler=handler)
    start_background(server)
    try:
        yield Site(repo, offline, online, server, log, root)
    finally:
        server.shutdown()
        server.server_close()
