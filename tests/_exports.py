"""Build small hospital exports in the documented `folder` layout for tests."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

COLUMNS = ("case_id", "patient_id", "image", "mask", "pathology", "reference_standard")


def textured_image(seed: int, size: tuple[int, int] = (96, 128)) -> np.ndarray:
    """A distinct smooth random texture (distinct perceptual hashes for distinct seeds)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random(size), sigma=4)
    noise = (noise - noise.min()) / (np.ptp(noise) + 1e-9)
    return (noise * 230 + 10).astype(np.uint8)


def disk_mask(size: tuple[int, int] = (96, 128), centre=(40, 60), radius: int = 15) -> np.ndarray:
    yy, xx = np.mgrid[: size[0], : size[1]]
    return ((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) <= radius**2


@dataclass
class Export:
    root: Path
    rows: list[dict[str, str]] = field(default_factory=list)

    def add(
        self,
        case_id: str,
        *,
        image: np.ndarray | None = None,
        mask: np.ndarray | None = None,
        pathology: str = "benign",
        reference: str = "biopsy",
        patient_id: str | None = None,
        seed: int | None = None,
    ) -> dict[str, str]:
        (self.root / "images").mkdir(parents=True, exist_ok=True)
        (self.root / "masks").mkdir(parents=True, exist_ok=True)
        if image is None:
            image = textured_image(seed if seed is not None else len(self.rows) + 1000)
        Image.fromarray(image).save(self.root / "images" / f"{case_id}.png")
        row = {
            "case_id": case_id,
            "patient_id": patient_id or f"p{case_id}",
            "image": f"images/{case_id}.png",
            "mask": "",
            "pathology": pathology,
            "reference_standard": reference,
        }
        if pathology != "normal" or mask is not None:
            mask = disk_mask(image.shape) if mask is None else mask
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                self.root / "masks" / f"{case_id}.png"
            )
            row["mask"] = f"masks/{case_id}.png"
        self.rows.append(row)
        return row

    def write(self) -> Path:
        with open(self.root / "cases.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)
        return self.root
