"""The release manifest (``release.json``) and the target custom fields: what both the vendor
and the console read. Light on imports (no torch, no plotting): the console loads this.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_registry.files import sha256_file, write_atomic
from models.bundle import INTENDED_USE, BundleMetadata, load_metadata
from models.exceptions import ModelError
from release.exceptions import ReleaseIntegrityError
from release.layout import MODEL_DIR, PRODUCT, RELEASE_MANIFEST


class ReleaseManifest(BaseModel):
    """``release.json``: what this release is, who may install it, and every file's sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = 1
    product: str = PRODUCT
    version: str
    parent_version: str | None
    created: datetime
    min_console_version: str
    console_models: list[str] = Field(min_length=1)
    intended_use: str = INTENDED_USE
    model_fingerprint: str
    gate_protocol_version: int
    locked_manifest_hash: str
    files: dict[str, str]


class TargetCustom(BaseModel):
    """The custom fields of a release target in the signed targets metadata."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    product: str
    model_version: str
    min_console_version: str
    console_models: list[str] = Field(min_length=1)
    channel: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,31}$")
    rollout_percent: int = Field(ge=0, le=100)


def behaviour_fingerprint(metadata: BundleMetadata) -> str:
    """A hash of everything that decides a bundle's outputs, and nothing else.

    The model and weights files, temperature, operating points, BI-RADS bands, descriptor
    sources and input specification; not the version, dates or lineage, so a release may set
    its version without invalidating the gate report of the candidate it was made from.

    Args:
        metadata: the bundle's validated metadata.

    Returns:
        A sha256 hex digest.
    """
    body = {
        "files": metadata.files,
        "temperature": metadata.temperature,
        "operating_points": metadata.operating_points,
        "birads_bands": metadata.birads_bands,
        "descriptor_sources": metadata.descriptor_sources,
        "input": metadata.input,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def hash_files(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the release manifest, by relative path.

    Args:
        folder: a release folder.

    Returns:
        Relative POSIX path to hex digest, sorted by path.

    Raises:
        ReleaseIntegrityError: the folder holds a link or something that is not a file.
    """
    files = {}
    for path in sorted(Path(folder).rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise ReleaseIntegrityError(f"{relative}: links are not allowed in a release")
        if path.is_dir() or relative == RELEASE_MANIFEST:
            continue
        if not path.is_file():
            raise ReleaseIntegrityError(f"{relative}: not a regular file")
        files[relative] = sha256_file(path)
    return files


def seal_release(folder: Path, manifest: ReleaseManifest) -> ReleaseManifest:
    """Hash every file into the manifest and write ``release.json`` (the last file written).

    Args:
        folder: the release folder.
        manifest: the manifest (its ``files`` are replaced).

    Returns:
        The manifest written.
    """
    sealed = manifest.model_copy(update={"files": hash_files(folder)})
    write_atomic(Path(folder) / RELEASE_MANIFEST, sealed.model_dump_json(indent=2).encode())
    return sealed


def verify_release(folder: Path) -> ReleaseManifest:
    """Check a release folder: manifest valid, every file present and unchanged, nothing extra.

    Args:
        folder: the release folder.

    Returns:
        The manifest.

    Raises:
        ReleaseIntegrityError: anything differs from the manifest, or the model bundle is bad.
    """
    folder = Path(folder)
    try:
        manifest = ReleaseManifest.model_validate_json((folder / RELEASE_MANIFEST).read_bytes())
    except (OSError, ValidationError) as e:
        raise ReleaseIntegrityError(f"{folder}: no valid {RELEASE_MANIFEST} ({e})") from e
    actual = hash_files(folder)
    missing = sorted(set(manifest.files) - set(actual))
    extra = sorted(set(actual) - set(manifest.files))
    changed = sorted(k for k in set(actual) & set(manifest.files) if actual[k] != manifest.files[k])
    problems = [f"missing {', '.join(missing)}"] if missing else []
    problems += [f"unexpected {', '.join(extra)}"] if extra else []
    problems += [f"changed {', '.join(changed)}"] if changed else []
    if problems:
        raise ReleaseIntegrityError(f"{folder}: " + "; ".join(problems))
    try:
        metadata = load_metadata(folder / MODEL_DIR)
    except ModelError as e:
        raise ReleaseIntegrityError(str(e)) from e
    if metadata.version != manifest.version:
        raise ReleaseIntegrityError(
            f"{folder}: model version {metadata.version} differs from release {manifest.version}"
        )
    return manifest


def read_archive_manifest(archive: Path) -> ReleaseManifest:
    """The ``release.json`` inside an archive, without unpacking anything else.

    Args:
        archive: a release archive.

    Returns:
        Its manifest.

    Raises:
        ReleaseIntegrityError: the archive or its manifest cannot be read.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            member = tar.getmember(RELEASE_MANIFEST)
            handle = tar.extractfile(member)
            if handle is None:
                raise ReleaseIntegrityError(f"{archive}: {RELEASE_MANIFEST} is not a file")
            return ReleaseManifest.model_validate_json(handle.read())
    except (OSError, KeyError, tarfile.TarError, ValidationError) as e:
        raise ReleaseIntegrityError(f"{archive}: not a readable release archive ({e})") from e
