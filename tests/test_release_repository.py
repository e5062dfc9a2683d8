"""The TUF repository: roles, thresholds, key separation, custom fields, expiry, rotation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tuf.api.metadata import Metadata, Root

from release.exceptions import KeyStoreError, RepositoryStateError, VersionError
from release.keys import KeyStore
from release.repository import Expiry, UpdateRepository
from tests._release_world import release_world, serving


@pytest.fixture(scope="module")
def world(tiny_world, tmp_path_factory):
    return release_world(tiny_world, tmp_path_factory.mktemp("release-world"))


def test_init_makes_four_roles_with_a_2_of_3_root_and_keys_kept_apart(tmp_path):
    repo = UpdateRepository.init(tmp_path / "repo", tmp_path / "offline", tmp_path / "online")
    root = repo.root().signed
    assert root.consistent_snapshot
    assert len(root.roles["root"].keyids) == 3 and root.roles["root"].threshold == 2
    for role in ("targets", "snapshot", "timestamp"):
        assert len(root.roles[role].keyids) == 1
    assert all(k.keytype == "ed25519" for k in root.keys.values())
    offline = KeyStore(tmp_path / "offline", "offline").keyids()
    online = KeyStore(tmp_path / "online", "online").keyids()
    assert offline == set(root.roles["root"].keyids) | set(root.roles["targets"].keyids)
    assert online == set(root.roles["snapshot"].keyids) | set(root.roles["timestamp"].keyids)
    assert (tmp_path / "offline").stat().st_mode & 0o077 == 0
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "offline").glob("*.pem"))
    assert not list((tmp_path / "repo").rglob("*.pem"))
    expires = repo.timestamp().signed.expires
    assert expires - datetime.now(UTC) <= timedelta(days=1, minutes=1)
    with pytest.raises(RepositoryStateError, match="already holds"):
        UpdateRepository.init(tmp_path / "repo", tmp_path / "o2", tmp_path / "n2")


def test_key_folders_must_be_apart_and_of_their_kind(tmp_path):
    with pytest.raises(KeyStoreError, match="kept apart"):
        UpdateRepository.init(tmp_path / "repo", tmp_path / "keys", tmp_path / "keys")
    with pytest.raises(KeyStoreError, match="kept apart"):
        UpdateRepository.init(tmp_path / "repo", tmp_path / "keys", tmp_path / "keys" / "online")
    with pytest.raises(KeyStoreError, match="inside the served repository"):
        UpdateRepository.init(tmp_path / "repo", tmp_path / "repo" / "k1", tmp_path / "k2")
    UpdateRepository.init(tmp_path / "ok", tmp_path / "offline", tmp_path / "online")
    with pytest.raises(KeyStoreError, match="holds offline keys"):
        KeyStore(tmp_path / "offline", "online")
    (tmp_path / "online" / "root-abc.pem").write_bytes(
        next((tmp_path / "offline").glob("root-*.pem")).read_bytes()
    )
    with pytest.raises(KeyStoreError, match="a root key in the online folder"):
        KeyStore(tmp_path / "online", "online")


def test_publish_signs_a_target_with_its_custom_fields(world, tmp_path):
    with serving(tmp_path) as site:
        target = site.publish(world.releases["1.1.0"], rollout=25, channel="pilot")
        assert target.path == "releases/pilot/sonofed-lesion-1.1.0.tar.gz"
        assert target.custom == {
            "product": "sonofed-lesion",
            "model_version": "1.1.0",
            "min_console_version": "0.1.0",
            "console_models": ["sonofed-us"],
            "channel": "pilot",
            "rollout_percent": 25,
        }
        stored = site.repo.targets_dir / "releases" / "pilot"
        assert [p.name for p in stored.iterdir()] == [
            f"{target.hashes['sha256']}.sonofed-lesion-1.1.0.tar.gz"
        ]
        versions = (site.repo.targets().signed.version, site.repo.timestamp().signed.version)
        site.publish(world.releases["1.1.0"], rollout=100, channel="pilot")  # widen the rollout
        assert site.repo.targets().signed.targets[target.path].custom["rollout_percent"] == 100
        assert site.repo.targets().signed.version == versions[0] + 1
        assert site.repo.timestamp().signed.version == versions[1] + 1
        with pytest.raises(VersionError, match="not newer"):
            site.publish(world.releases["1.0.0"], channel="pilot")
        with pytest.raises(KeyStoreError, match="targets keys"):
            site.repo.publish(
                site.work / "archives" / "1.1.0.tar.gz",
                channel="pilot",
                rollout_percent=5,
                offline=KeyStore.create(tmp_path / "stranger", "offline"),
                online=site.online,
            )


def test_refresh_timestamp_moves_version_and_expiry(tmp_path):
    repo = UpdateRepository.init(tmp_path / "repo", tmp_path / "offline", tmp_path / "online")
    online = KeyStore(tmp_path / "online", "online")
    before = repo.timestamp().signed
    result = repo.refresh_timestamp(online, Expiry(timestamp=timedelta(hours=2)))
    after = repo.timestamp().signed
    assert after.version == before.version + 1 == result["timestamp_version"]
    assert after.expires - datetime.now(UTC) <= timedelta(hours=2, minutes=1)
    long = repo.refresh_timestamp(online, Expiry(timestamp=timedelta(days=30)))
    assert long["snapshot_version"] > before.snapshot_meta.version  # snapshot would expire first


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp"])
def test_rotate_key_writes_a_root_signed_by_old_and_new_keys(tmp_path, role):
    repo = UpdateRepository.init(tmp_path / "repo", tmp_path / "offline", tmp_path / "online")
    offline = KeyStore(tmp_path / "offline", "offline")
    online = KeyStore(tmp_path / "online", "online")
    old_root = repo.root()
    keyid = old_root.signed.roles[role].keyids[0]
    result = repo.rotate_key(role, offline=offline, online=online, keyid=keyid[:10])
    new_root: Metadata[Root] = repo.root()
    assert new_root.signed.version == 2 == result["root_version"]
    assert keyid not in new_root.signed.roles[role].keyids
    assert result["new_keyid"] in new_root.signed.roles[role].keyids
    old_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    new_root.signed.verify_delegate("root", new_root.signed_bytes, new_root.signatures)
    for name in ("timestamp", "snapshot", "targets"):
        md = getattr(repo, name)()
        new_root.signed.verify_delegate(name, md.signed_bytes, md.signatures)
    store = tmp_path / ("offline" if role in ("root", "targets") else "online")
    assert len(list((store / "retired").glob("*.pem"))) == 1


def test_server_serves_only_repository_files_and_logs_each_request(tmp_path):
    import urllib.error
    import urllib.request

    with serving(tmp_path) as site:
        agent = {"User-Agent": "probe/1"}
        with urllib.request.urlopen(
            urllib.request.Request(f"{site.url}/metadata/timestamp.json", headers=agent)
        ) as r:
            body = r.read()
            assert r.headers["Cache-Control"] == "no-store"
        assert body == (site.repo.metadata_dir / "timestamp.json").read_bytes()
        for path in ("/", "/.lock", "/metadata/", "/metadata/../../etc/passwd", "/keys/offline"):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(urllib.request.Request(site.url + path, headers=agent))
            assert caught.value.code == 404
    lines = site.access_log.read_text().splitlines()
    assert f'"GET /metadata/timestamp.json HTTP/1.1" 200 {len(body)} "probe/1"' in lines[0]
    assert len(lines) == 6 and all(" 404 " in line for line in lines[1:])
