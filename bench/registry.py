"""Registry benchmark: ingest throughput per real site, phantom generation throughput, and the
locked-copy check on the real sites (how far trivial edits of an image land from it, and how
close distinct images come: the false-match rate).

Writes ``<out>/registry.json``. Timings are measured here, never asserted by tests.

    python -m bench.registry --data ../shared/data --out bench/results [--copy-sample 100]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from data_registry.hashing import COPY_BITS, copy_poses, copy_probes, nearest_pose_bits
from data_registry.images import read_grey
from data_registry.importers import get_importer
from data_registry.ingest import ingest
from data_registry.phantom import generate_sites

REAL_SITES = (
    ("busi", "busi", "biopsy"),
    ("bus_bra", "bus_bra", None),
    ("breast_lesions_usg", "breast_lesions_usg", None),
)


def _ingest_rate(kind: str, path: Path, assume: str | None, work: Path) -> dict[str, object]:
    importer = get_importer(kind)
    start = time.perf_counter()
    summary = ingest(
        importer(path, assume_reference=assume),
        work / kind,
        site_id=importer.default_site_id,
        source=kind,
    )
    seconds = time.perf_counter() - start
    return {
        "site": kind,
        "images": summary.received,
        "accepted": summary.accepted,
        "eligible": summary.eligible,
        "seconds": round(seconds, 2),
        "images_per_s": round(summary.received / seconds, 1),
    }


def _phantom_rate(work: Path, cases: int) -> dict[str, object]:
    start = time.perf_counter()
    generate_sites(work / "phantom", sites=1, cases=cases, seed=0)
    seconds = time.perf_counter() - start
    return {"cases": cases, "seconds": round(seconds, 2), "images_per_s": round(cases / seconds, 1)}


def _site_images(data: Path) -> dict[str, list[np.ndarray]]:
    busi = [p for p in sorted((data / "busi").rglob("*.png")) if "_mask" not in p.name]
    bus_bra = sorted((data / "bus_bra" / "Images").glob("*.png"))
    breast = [
        p for p in sorted((data / "breast_lesions_usg").rglob("case*.png")) if "_" not in p.stem
    ]
    return {
        site: [read_grey(p) for p in paths]
        for site, paths in (("busi", busi), ("bus_bra", bus_bra), ("breast_lesions_usg", breast))
    }


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
    out = np.zeros_like(image)
    out[dy:, dx:] = image[: image.shape[0] - dy, : image.shape[1] - dx]
    return out


def _crop(image: np.ndarray, top: float, bottom: float, left: float, right: float) -> np.ndarray:
    h, w = image.shape
    return image[round(h * top) : h - round(h * bottom), round(w * left) : w - round(w * right)]


EDITS = {
    "mirror": lambda a: a[:, ::-1],
    "crop 5 % (centred)": lambda a: _crop(a, 0.025, 0.025, 0.025, 0.025),
    "crop 5 % off one side": lambda a: _crop(a, 0.05, 0, 0, 0),
    "crop 3 % off one side": lambda a: _crop(a, 0, 0, 0.03, 0),
    "crop 8 % off one side": lambda a: _crop(a, 0, 0.08, 0, 0),
    "crop 5 % off a corner": lambda a: _crop(a, 0.05, 0, 0.05, 0),
    "pad 20 px black": lambda a: np.pad(a, 20),
    "pad 20 px white": lambda a: np.pad(a, 20, constant_values=255),
    "shift 12x8 px": lambda a: _shift(a, 8, 12),
    "shift 20x20 px": lambda a: _shift(a, 20, 20),
    "rotate 2 deg": lambda a: ndimage.rotate(a, 2, reshape=False, order=1),
    "rotate 5 deg": lambda a: ndimage.rotate(a, 5, reshape=False, order=1),
    "rotate -4 deg": lambda a: ndimage.rotate(a, -4, reshape=False, order=1),
    "brightness +25": lambda a: np.clip(a.astype(int) + 25, 0, 255).astype(np.uint8),
    "gamma 0.7": lambda a: (255 * (a / 255.0) ** 0.7).astype(np.uint8),
    "contrast x1.3": lambda a: np.clip((a - 128.0) * 1.3 + 128, 0, 255).astype(np.uint8),
    "resize 75 %": lambda a: np.asarray(
        Image.fromarray(a).resize(
            (a.shape[1] * 3 // 4, a.shape[0] * 3 // 4), Image.Resampling.LANCZOS
        )
    ),
    "mirror + crop 5 % + pad 20 + brighter": lambda a: np.clip(
        np.pad(_crop(a[:, ::-1], 0.05, 0, 0, 0), 20).astype(int) + 20, 0, 255
    ).astype(np.uint8),
}


def copy_check(data: Path, sample: int, seed: int = 0) -> dict[str, object]:
    """Edits of ``sample`` locked images per site against their poses; distinct images' gaps.

    Distinct pairs: every image of a site against the sampled images of the other two sites,
    and within BUS-BRA and BrEaST every image against the other sampled ones (BUSI's own near
    copies are real duplicates, so BUSI is paired with the other sites only).
    """
    start = time.perf_counter()
    sites = _site_images(data)
    rng = np.random.default_rng(seed)
    picked = {
        s: sorted(rng.choice(len(v), min(sample, len(v)), replace=False).tolist())
        for s, v in sites.items()
    }
    poses = {s: [copy_poses(sites[s][i]) for i in picked[s]] for s in sites}
    probes = {s: [copy_probes(a) for a in v] for s, v in sites.items()}
    pose_seconds = time.perf_counter() - start
    edits: dict[str, dict[str, float]] = {}
    for name, edit in EDITS.items():
        distances = []
        for s in sites:
            for index, i in enumerate(picked[s]):
                probe = copy_probes(edit(sites[s][i]))
                distances.append(int(nearest_pose_bits([probe], list(poses[s][index]))[0]))
        edits[name] = {
            "max_bits": max(distances),
            "median_bits": float(np.median(distances)),
            "caught": float(np.mean(np.array(distances) <= COPY_BITS)),
        }
    gaps: list[np.ndarray] = []
    for s1 in sites:
        for s2 in sites:
            if s1 == s2 and s1 == "busi":
                continue
            for index, i in enumerate(picked[s2]):
                cases = [p for j, p in enumerate(probes[s1]) if not (s1 == s2 and j == i)]
                gaps.append(nearest_pose_bits(cases, list(poses[s2][index])))
    gap = np.concatenate(gaps)
    return {
        "copy_bits": COPY_BITS,
        "sample_per_site": sample,
        "poses_per_image": len(poses["bus_bra"][0]),
        "edits": edits,
        "distinct_pairs": int(gap.size),
        "distinct_min_bits": int(gap.min()),
        "distinct_quantiles_bits": {
            q: float(np.quantile(gap, float(q))) for q in ("0.0001", "0.001", "0.01")
        },
        "false_matches": int((gap <= COPY_BITS).sum()),
        "false_match_rate": float((gap <= COPY_BITS).mean()),
        "seconds": round(time.perf_counter() - start, 1),
        "pose_and_probe_seconds": round(pose_seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="real data root")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    parser.add_argument("--phantom-cases", type=int, default=200)
    parser.add_argument("--copy-sample", type=int, default=100, help="locked images per site")
    parser.add_argument("--only-copies", action="store_true", help="only the locked-copy check")
    args = parser.parse_args()
    results: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    if args.data.is_dir():
        results["locked_copy_check"] = copy_check(args.data, args.copy_sample)
    if args.only_copies:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "registry-copies.json").write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results["phantom_generation"] = _phantom_rate(work, args.phantom_cases)
        if args.data.is_dir():
            results["ingest"] = [
                _ingest_rate(kind, args.data / folder, assume, work)
                for kind, folder, assume in REAL_SITES
            ]
        else:
            results["ingest"] = f"skipped: no real data at {args.data}"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "registry.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
