"""A tiny end-to-end world for tests: phantom sites, their registries, a locked set, a bundle.

Built once per test session (about a minute on 2 cores) and shared by the model, federation
and release tests. The network is deliberately small and barely trained: tests check behaviour,
not accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from data_registry import Exclusion, LockedTestSet, SourceSpec, ingest, lock_testset
from data_registry.importers import get_importer
from data_registry.phantom import generate_sites

SITES = ("site-a", "site-b", "site-c")


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    phantom: Path
    registries: tuple[Path, ...]
    locked: Path
    bundle: Path

    @property
    def locked_set(self) -> LockedTestSet:
        return LockedTestSet(self.locked)


def tiny_config(**overrides):
    from models.geometry import RoiSpec
    from models.train import TrainConfig

    values = dict(
        epochs=1,
        batch_size=8,
        encoder="residual",
        features=(8, 16, 16, 32, 32),
        subunits=(1, 1, 1, 1, 1),
        spec=RoiSpec(crop_size=48, flip_tta=False, refine_passes=0),
        patience=1,
        boundary_weight=0.0,  # the toy recipe the test gate floors were set with (plain mask BCE)
        seed=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


def build_tiny_world(root: Path, *, cases: int = 24, seed: int = 5) -> TinyWorld:
    from models.packaging import data_summary, package_bundle
    from models.samples import samples_from_registries, split_by_group
    from models.train import train_model

    phantom = root / "phantom"
    generate_sites(phantom, sites=len(SITES), cases=cases, seed=seed)
    locked = root / "locked"
    lock_testset(
        [SourceSpec("phantom", phantom / site) for site in SITES], locked, fraction=0.25, seed=1
    )
    exclusion = Exclusion.load(locked / "exclusion.json")
    registries = []
    for site in SITES:
        registry = root / "registries" / site
        ingest(
            get_importer("phantom")(phantom / site),
            registry,
            site_id=site,
            source=f"phantom:{site}",
            exclusion=exclusion,
        )
        registries.append(registry)
    config = tiny_config()
    samples = samples_from_registries(registries)
    train, val = split_by_group(samples, 0.3, 0)
    result = train_model(train, val, config, progress=False)
    bundle = root / "bundle"
    package_bundle(
        result.model,
        config,
        val,
        bundle,
        version="1.0.0",
        training_data={"sites": data_summary(samples)},
        locked=LockedTestSet(locked),
    )
    return TinyWorld(root, phantom, tuple(registries), locked, bundle)
