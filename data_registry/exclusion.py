"""The vendor's exclusion list: what of the locked test set a hospital must never train on.

It carries hashes only (file sha256, perceptual hashes, hashed patient pseudonyms), no images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from data_registry.exceptions import RegistryStateError
from data_registry.hashing import COPY_BITS, NEAR_DUPLICATE_BITS, hamming_matrix, nearest_pose_bits
from data_registry.schema import Case


def patient_token(site_id: str, patient_id: str) -> str:
    """A one-way token for a patient of a site, so the list names no patient."""
    return hashlib.sha256(f"{site_id}:{patient_id}".encode()).hexdigest()


class Exclusion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    manifest_hash: str
    sha256: frozenset[str]
    phash: tuple[str, ...]
    patients: frozenset[str]
    # every locked image in every pose a trivial edit could give it (see hashing.copy_poses)
    poses: tuple[str, ...] = ()

    @classmethod
    def load(cls, path: Path) -> Exclusion:
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except FileNotFoundError as e:
            raise RegistryStateError(f"{path}: exclusion list not found") from e
        except (json.JSONDecodeError, ValidationError) as e:
            raise RegistryStateError(f"{path}: not a valid exclusion list ({e})") from e

    def to_json(self) -> str:
        payload = {
            "manifest_hash": self.manifest_hash,
            "sha256": sorted(self.sha256),
            "phash": sorted(self.phash),
            "patients": sorted(self.patients),
            "poses": sorted(self.poses),
        }
        return json.dumps(payload, indent=1)

    def locked(
        self,
        cases: Sequence[Case],
        phashes: Sequence[str],
        probes: Sequence[Sequence[str]] | None = None,
    ) -> list[bool]:
        """Per case: same bytes as, a near copy of, or the same patient as a locked case.

        ``probes`` (per case, from :func:`data_registry.hashing.copy_probes`) are matched against
        the locked images' poses, which catches mirrored, cropped, padded, shifted, slightly
        rotated and re-windowed copies; a case without probes is matched by its pHash only.
        """
        if not cases:
            return []
        near = np.zeros(len(cases), dtype=bool)
        if self.phash:
            near = (hamming_matrix(phashes, list(self.phash)) <= NEAR_DUPLICATE_BITS).any(axis=1)
        if self.poses and probes is not None:
            near |= nearest_pose_bits(probes, list(self.poses)) <= COPY_BITS
        return [
            bool(is_near)
            or case.source_sha256 in self.sha256
            or case.image_sha256 in self.sha256
            or patient_token(case.site_id, case.patient_id) in self.patients
            for case, is_near in zip(cases, near, strict=True)
        ]
