"""Console updates over real HTTP on loopback: the happy path, rollback, and every attack and
fault of issue 5; each refusal names the TUF or console check that caught it, and the console
keeps a working model."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata

from release import slots
from release.console_client import choose_target, provision, rollback, status, update
from release.exceptions import IncompatibleReleaseError, NoModelError
from release.manifest import verify_release
from release.repository import _bytes
from release.selftest import run_self_test
from release.server import RepositoryRequestHandler, UpdateServer, start_background
from release.slots import ConsoleFolder, ConsoleIdentity, check_contents
from tests._release_world import release_world, serving

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    return release_world(tiny_world, tmp_path_factory.mktemp("release-world"))


@pytest.fixture
def site(tmp_path):
    with serving(tmp_path / "vendor") as site:
        yield site


def _console(site, tmp_path, console_id="us-0001", **kw) -> Path:
    folder = tmp_path / f"console-{console_id}"
    provision(site.repo.metadata_dir / "root.json", console_id, folder, **kw)
    return folder


def _installed(world, site, tmp_path, *versions: str) -> Path:
    """A console that installed each of ``versions`` in turn."""
    console = _console(site, tmp_path)
    for version in versions:
        site.publish(world.releases[version])
        result = update(console, site.url)
        assert result.action == "installed", result
    return console


def assert_working(console: Path, version: str) -> None:
    """The console starts with ``version`` active, intact and reproducing its self-test."""
    report = status(console)
    assert report["active_version"] == version
    assert report["active_ok"] is True
    active = ConsoleFolder(console).active_release()
    verify_release(active)
    assert run_self_test(active).passed


def test_install_update_keep_previous_rollback_and_never_reinstall(world, site, tmp_path):
    console = _console(site, tmp_path)
    site.publish(world.releases["1.1.0"])
    first = update(console, site.url)
    assert (first.previous, first.installed, first.action) == (None, "1.1.0", "installed")
    assert update(console, site.url).action == "up-to-date"
    site.publish(world.releases["1.2.0"])
    second = update(console, site.url)
    assert (second.previous, second.installed, second.action) == ("1.1.0", "1.2.0", "installed")
    report = status(console)
    assert (report["active_slot"], report["previous_version"]) == ("b", "1.1.0")
    assert_working(console, "1.2.0")
    assert rollback(console) == {"previous": "1.2.0", "active": "1.1.0", "slot": "a"}
    assert_working(console, "1.1.0")
    again = update(console, site.url)  # the version rolled back from is not pulled again
    assert (again.action, again.installed) == ("up-to-date", "1.1.0")
    site.publish(world.releases["1.3.0"])
    assert update(console, site.url).installed == "1.3.0"
    log = site.access_log.read_text()
    assert "GET /metadata/timestamp.json" in log and "sonofed-console/" in log and "us-0001" in log
    assert " 200 " in log


def test_rollback_without_a_previous_model_is_refused(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    with pytest.raises(NoModelError, match="no previous model"):
        rollback(console)
    assert_working(console, "1.1.0")


def test_tampered_model_file_is_caught_by_the_target_hash(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    target = site.publish(world.releases["1.2.0"])
    stored = next(site.repo.targets_dir.rglob(f"*{Path(target.path).name}"))
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same length, one byte flipped
    stored.write_bytes(bytes(data))
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "target-integrity")
    assert "hash" in result.reason
    assert_working(console, "1.1.0")
    assert not any(ConsoleFolder(console).downloads.iterdir())


def test_replayed_older_metadata_is_caught_as_a_rollback(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    old_timestamp = (site.repo.metadata_dir / "timestamp.json").read_bytes()
    site.publish(world.releases["1.2.0"])
    assert update(console, site.url).installed == "1.2.0"
    (site.repo.metadata_dir / "timestamp.json").write_bytes(old_timestamp)  # the attacker replays
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "metadata-rollback")
    assert_working(console, "1.2.0")


def test_expired_timestamp_is_caught_as_a_freeze(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["1.2.0"])
    site.repo.refresh_timestamp(site.online, expires=datetime.now(UTC) - timedelta(minutes=5))
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "metadata-expired")
    assert_working(console, "1.1.0")


def test_metadata_signed_by_an_unknown_key_is_refused(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["1.2.0"])
    path = site.repo.metadata_dir / "timestamp.json"
    forged = Metadata.from_bytes(path.read_bytes())
    forged.signed.version += 1
    forged.sign(CryptoSigner.generate_ed25519())  # not a key the root trusts
    path.write_bytes(_bytes(forged))
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "metadata-signature")
    assert_working(console, "1.1.0")


def test_targets_for_another_console_model_or_newer_software_are_refused(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["other-model"])
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "console-model")
    assert "other-console" in result.reason
    site.publish(world.releases["newer-software"])
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "console-software")
    assert "99.0.0" in result.reason
    assert {s["check"] for s in result.skipped} == {"console-model", "console-software"}
    assert_working(console, "1.1.0")
    site.publish(world.releases["1.2.0"], allow_older=True)
    assert update(console, site.url).installed == "1.2.0"  # a compatible one is still taken


def test_unpacked_contents_are_checked_against_the_console_too(world):
    manifest = verify_release(world.releases["other-model"])
    from release.manifest import TargetCustom

    signed = TargetCustom(
        product="sonofed-lesion",
        model_version="1.5.0",
        min_console_version="0.1.0",
        console_models=["sonofed-us"],
        channel="stable",
        rollout_percent=100,
    )
    identity = ConsoleIdentity(
        console_id="c1",
        console_model="sonofed-us",
        channel="stable",
        provisioned_at=datetime.now(UTC),
        root_sha256="0" * 64,
    )
    with pytest.raises(IncompatibleReleaseError) as caught:
        check_contents(manifest, signed, identity, "0.1.0")
    assert caught.value.check == "console-model"
    wrong_version = signed.model_copy(update={"model_version": "1.4.0"})
    with pytest.raises(IncompatibleReleaseError) as caught:
        check_contents(manifest, wrong_version, identity, "0.1.0")
    assert caught.value.check == "release-manifest"


def test_rollout_buckets_are_deterministic_and_gate_the_offer(world, site, tmp_path):
    ids = [f"us-{i:04d}" for i in range(200)]
    buckets = [
        ConsoleIdentity(
            console_id=i,
            console_model="m",
            channel="stable",
            provisioned_at=datetime.now(UTC),
            root_sha256="0",
        ).rollout_bucket
        for i in ids
    ]
    assert buckets == [
        ConsoleIdentity(
            console_id=i,
            console_model="m",
            channel="stable",
            provisioned_at=datetime.now(UTC),
            root_sha256="1",
        ).rollout_bucket
        for i in ids
    ]
    assert 30 < sum(b < 50 for b in buckets) < 170  # roughly half fall below 50
    console = _installed(world, site, tmp_path, "1.1.0")
    bucket = ConsoleFolder(console).identity.rollout_bucket
    site.publish(world.releases["1.2.0"], rollout=bucket)  # buckets below `bucket` only
    held = update(console, site.url)
    assert (held.action, held.installed, held.skipped[0]["check"]) == (
        "up-to-date",
        "1.1.0",
        "rollout",
    )
    site.publish(world.releases["1.2.0"], rollout=bucket + 1)
    assert update(console, site.url).installed == "1.2.0"


def test_another_channel_is_invisible(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["1.2.0"], channel="pilot")
    assert update(console, site.url).action == "up-to-date"
    pilot = _console(site, tmp_path, "us-pilot", channel="pilot")
    assert update(pilot, site.url).installed == "1.2.0"


def test_an_older_model_signed_later_is_never_installed(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["1.0.0"], allow_older=True)
    result = update(console, site.url)
    assert (result.action, result.installed) == ("up-to-date", "1.1.0")
    fresh = _console(site, tmp_path, "us-0002")
    assert update(fresh, site.url).installed == "1.1.0"  # the newest, not the newest signed


class CutOffHandler(RepositoryRequestHandler):
    """Announces the whole target, sends half of it, hangs up."""

    def copyfile(self, source, outputfile) -> None:
        if "/targets/" in self.path:
            data = source.read()
            outputfile.write(data[: len(data) // 2])
            outputfile.flush()
            self.close_connection = True
            return
        super().copyfile(source, outputfile)


def test_a_download_cut_off_midway_is_refused_and_retried_later(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    site.publish(world.releases["1.2.0"])
    flaky = UpdateServer(site.repo.path, access_log=tmp_path / "flaky.log", handler=CutOffHandler)
    start_background(flaky)
    try:
        result = update(console, flaky.url)
    finally:
        flaky.shutdown()
        flaky.server_close()
    assert (result.action, result.check) == ("refused", "download")
    assert_working(console, "1.1.0")
    assert update(console, site.url).installed == "1.2.0"


def test_a_write_failure_while_installing_keeps_both_models(world, site, tmp_path, monkeypatch):
    console = _installed(world, site, tmp_path, "1.1.0", "1.2.0")
    site.publish(world.releases["1.3.0"])
    written = []
    real = slots._write_member

    def fill_disk(source, dest):
        if written:
            raise OSError(28, "No space left on device")
        written.append(dest)
        real(source, dest)

    monkeypatch.setattr(slots, "_write_member", fill_disk)
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "install")
    assert "No space left" in result.reason
    assert_working(console, "1.2.0")
    assert status(console)["previous_version"] == "1.1.0"
    assert sorted(p.name for p in (console / "slots").iterdir()) == ["a", "b"]
    monkeypatch.undo()
    assert update(console, site.url).installed == "1.3.0"


def test_a_failing_self_test_is_never_switched_to(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0", "1.2.0")
    site.publish(world.releases["broken-selftest"])
    result = update(console, site.url)
    assert (result.action, result.check) == ("refused", "self-test")
    assert "probability" in result.reason
    assert_working(console, "1.2.0")
    assert status(console)["previous_version"] == "1.1.0"


def test_consoles_follow_key_rotations_through_the_root_chain(world, site, tmp_path):
    console = _installed(world, site, tmp_path, "1.1.0")
    for role in ("timestamp", "targets"):
        site.repo.rotate_key(role, offline=site.offline, online=site.online)
    root_key = site.repo.root().signed.roles["root"].keyids[1]
    site.repo.rotate_key("root", offline=site.offline, online=site.online, keyid=root_key)
    site.publish(world.releases["1.2.0"])
    assert update(console, site.url).installed == "1.2.0"
    assert status(console)["trusted_root_version"] == 4


def test_choose_target_prefers_the_newest_compatible_release():
    from tuf.api.metadata import TargetFile

    def target(version, **custom):
        fields = {
            "product": "sonofed-lesion",
            "model_version": version,
            "min_console_version": "0.1.0",
            "console_models": ["m"],
            "channel": "stable",
            "rollout_percent": 100,
        } | custom
        return TargetFile(10, {"sha256": "0" * 64}, f"r/{version}", {"custom": fields})

    identity = ConsoleIdentity(
        console_id="c",
        console_model="m",
        channel="stable",
        provisioned_at=datetime.now(UTC),
        root_sha256="0",
    )
    targets = {
        t.path: t
        for t in [
            target("1.2.0"),
            target("1.10.0"),
            target("2.0.0", console_models=["x"]),
            target("1.11.0-rc.1"),
            target("1.9.0", channel="beta"),
        ]
    }
    choice = choose_target(targets, identity, "0.1.0", "1.1.0")
    assert choice.path == "r/1.11.0-rc.1"
    assert [s.version for s in choice.skipped] == ["2.0.0"]
    assert choose_target(targets, identity, "0.1.0", "2.0.0").path is None


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sonofed.cli", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_cli_update_json_rollback_status_and_analyze_without_torch(
    world, site, tmp_path, tiny_world
):
    site.publish(world.releases["1.1.0"])
    console = tmp_path / "console"
    root = site.repo.metadata_dir / "root.json"
    done = _cli(
        "console", "provision", "--root", str(root), "--console-id", "cli-1", "--dir", str(console)
    )
    assert done.returncode == 0, done.stderr
    done = _cli("console", "update", "--server", site.url, "--dir", str(console), "--json")
    assert done.returncode == 0, done.stderr
    assert {k: json.loads(done.stdout)[k] for k in ("previous", "installed", "action")} == {
        "previous": None,
        "installed": "1.1.0",
        "action": "installed",
    }
    assert "reason" in json.loads(done.stdout)
    site.publish(world.releases["other-model"])
    refused = _cli("console", "update", "--server", site.url, "--dir", str(console), "--json")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["action"] == "refused"
    case = next(iter(tiny_world.locked_set.cases))
    script = (
        "import sys, json\n"
        "from sonofed.cli import main\n"
        f"code = main(['console', 'status', '--dir', {str(console)!r}, '--json'])\n"
        f"code += main(['console', 'analyze', '--dir', {str(console)!r}, '--image', "
        f"{str(tiny_world.locked / case['image'])!r}, '--seed', '{case['seed']['x']},{case['seed']['y']}', "
        f"'--out', {str(tmp_path / 'report')!r}])\n"
        "assert code == 0, code\n"
        "assert 'torch' not in sys.modules, 'the console imported torch'\n"
        "print('NO-TORCH-OK')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "NO-TORCH-OK" in done.stdout
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["model_version"] == "1.1.0"
    assert (report["release_status"], report["release_statement"]) == (
        "signed-release",
        "signed release 1.1.0",
    )  # the installed, verified release, named as such (issue 13, item 15)
    assert "Model: signed release 1.1.0" in (tmp_path / "report" / "report.html").read_text()
    gone = _cli("console", "rollback", "--dir", str(console))
    assert gone.returncode == 2 and "no previous model" in gone.stderr


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sonofed-update")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_update_over_tls_trusting_a_private_ca(world, site, tmp_path, monkeypatch):
    site.publish(world.releases["1.1.0"])
    cert, key = _self_signed(tmp_path)
    tls = UpdateServer(site.repo.path, access_log=tmp_path / "tls.log", tls_cert=cert, tls_key=key)
    start_background(tls)
    try:
        assert tls.url.startswith("https://")
        console = _console(site, tmp_path)
        untrusted = update(console, tls.url)  # the system CAs do not know this certificate
        assert (untrusted.action, untrusted.check) == ("refused", "download")
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        assert update(console, tls.url).installed == "1.1.0"
    finally:
        tls.shutdown()
        tls.server_close()
