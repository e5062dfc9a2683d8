"""Ed25519 signing keys kept in two separate folders: offline (root, targets), online (snapshot,
timestamp).

A key folder is a bag of PEM (PKCS#8) private keys named ``<role>-<keyid prefix>.pem``, mode
0600 in a 0700 folder, with a ``KEYSTORE`` file saying which kind it is. The repository picks
keys by key id from the root metadata, so a rotation can write the new key first and retire the
old one last (into ``retired/``) without ever leaving the folder unusable.

The offline folder belongs on an air-gapped machine or an HSM in a real deployment; the online
folder on the machine that refreshes timestamps. They must not be the same folder or nested.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, SSlibKey

from data_registry.files import write_atomic
from release.exceptions import KeyStoreError

Kind = Literal["offline", "online"]
ROLES_OF: dict[str, tuple[str, ...]] = {
    "offline": ("root", "targets"),
    "online": ("snapshot", "timestamp"),
}
MARKER = "KEYSTORE"
RETIRED = "retired"


def _load_signer(path: Path) -> CryptoSigner:
    try:
        private = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise KeyStoreError(f"{path}: not a readable unencrypted PEM private key ({e})") from e
    if not isinstance(private, Ed25519PrivateKey):
        raise KeyStoreError(f"{path}: not an Ed25519 key")
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key(), None, "ed25519"))


class KeyStore:
    """One key folder (offline or online).

    Args:
        folder: the folder.
        kind: ``offline`` or ``online``; must match the folder's ``KEYSTORE`` marker.

    Raises:
        KeyStoreError: the folder is missing, is of the other kind, or holds an unreadable key.
    """

    def __init__(self, folder: Path, kind: Kind) -> None:
        self.folder = Path(folder)
        self.kind = kind
        marker = self.folder / MARKER
        if not marker.is_file():
            raise KeyStoreError(f"{self.folder}: not a key folder (no {MARKER} file)")
        found = marker.read_text().strip()
        if found != kind:
            raise KeyStoreError(
                f"{self.folder}: holds {found} keys, but {kind} keys were asked for"
            )
        self._signers: dict[str, CryptoSigner] = {}
        for path in sorted(self.folder.glob("*.pem")):
            role = path.name.split("-", 1)[0]
            if role not in ROLES_OF[kind]:
                raise KeyStoreError(
                    f"{path}: a {role} key in the {kind} folder; {kind} keys are "
                    f"{', '.join(ROLES_OF[kind])} only"
                )
            signer = _load_signer(path)
            self._signers[signer.public_key.keyid] = signer

    @classmethod
    def create(cls, folder: Path, kind: Kind) -> KeyStore:
        """Create an empty key folder (0700) with its marker.

        Args:
            folder: the folder (created; may exist only when empty).
            kind: ``offline`` or ``online``.

        Returns:
            The key store.

        Raises:
            KeyStoreError: the folder already holds files.
        """
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise KeyStoreError(f"{folder}: already holds files; choose an empty key folder")
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        write_atomic(folder / MARKER, f"{kind}\n".encode())
        return cls(folder, kind)

    def generate(self, role: str) -> CryptoSigner:
        """Generate a new Ed25519 key for ``role`` and store it (written before it is used).

        Args:
            role: a role this folder may hold.

        Returns:
            Its signer.

        Raises:
            KeyStoreError: the role does not belong in this folder.
        """
        if role not in ROLES_OF[self.kind]:
            raise KeyStoreError(f"{role} keys do not belong in the {self.kind} key folder")
        signer = CryptoSigner.generate_ed25519()
        name = f"{role}-{signer.public_key.keyid[:12]}.pem"
        write_atomic(self.folder / name, signer.private_bytes, mode=0o600)
        self._signers[signer.public_key.keyid] = signer
        return signer

    def signers(self, keyids: Iterable[str]) -> list[CryptoSigner]:
        """The stored signers among ``keyids``.

        Args:
            keyids: key ids a role accepts.

        Returns:
            The signers this folder holds for them (possibly none).
        """
        return [self._signers[k] for k in keyids if k in self._signers]

    def keyids(self) -> set[str]:
        """Ids of every key stored here (not the retired ones)."""
        return set(self._signers)

    def retire(self, keyid: str) -> None:
        """Move a key into ``retired/`` (after the metadata no longer trusts it).

        Args:
            keyid: the key's id.
        """
        for path in self.folder.glob("*.pem"):
            if _load_signer(path).public_key.keyid == keyid:
                (self.folder / RETIRED).mkdir(mode=0o700, exist_ok=True)
                os.replace(path, self.folder / RETIRED / path.name)
        self._signers.pop(keyid, None)


def check_apart(offline: Path, online: Path) -> None:
    """Refuse offline and online key folders that are the same or nested.

    Args:
        offline: the root/targets key folder.
        online: the snapshot/timestamp key folder.

    Raises:
        KeyStoreError: they overlap.
    """
    a, b = Path(offline).resolve(), Path(online).resolve()
    if a == b or a in b.parents or b in a.parents:
        raise KeyStoreError(
            f"the offline ({offline}) and online ({online}) key folders must be kept apart"
        )
