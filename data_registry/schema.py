"""The case record every site's data is turned into before it may train anywhere.

Models guarding this boundary forbid unknown fields and are frozen, so an unexpected column in a
site's export fails loudly and a validated record can be hashed.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from data_registry.exceptions import SettingsError

_PSEUDONYM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SITE_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_DEVICE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 @._/+()-]{0,79}$")


_CAPITALISED = re.compile(r"[A-Z][a-z]{1,}")
_YEAR = re.compile(r"(?<!\d)(?:19|20)\d{2}(?:[01]\d[0-3]\d)?(?!\d)")
# Words of scanner makers and model lines, so that "Supersonic Aixplorer" is not taken for a name.
SCANNER_WORDS = frozenset(
    [
        "ge",
        "philips",
        "siemens",
        "toshiba",
        "canon",
        "samsung",
        "medison",
        "hitachi",
        "aloka",
        "esaote",
        "mindray",
        "supersonic",
        "fujifilm",
        "sonosite",
        "butterfly",
        "clarius",
        "konica",
        "minolta",
        "alpinion",
        "chison",
        "sonoscape",
        "zonare",
        "acuson",
        "logiq",
        "voluson",
        "vivid",
        "aplio",
        "xario",
        "affiniti",
        "epiq",
        "aixplorer",
        "arietta",
        "resona",
        "hologic",
        "healthcare",
        "medical",
        "medicine",
        "ultrasound",
        "ultrasonix",
        "systems",
        "imaging",
        "sonoline",
        "antares",
        "sequoia",
        "juniper",
        "phantom",
        "portable",
        "elite",
        "expert",
        "premium",
        "pro",
        "ultimate",
        "touch",
        "linear",
        "convex",
        "probe",
    ]
)


def _looks_like_name_and_birth_year(value: str) -> bool:
    """``MariaKowalska1960``, ``Maria_Kowalska-19600412``: two capitalised words and a year."""
    letters = re.sub(r"[\d_.-]", "", value)
    words = _CAPITALISED.findall(letters)
    return len(words) >= 2 and "".join(words) == letters and bool(_YEAR.search(value))


def looks_like_person_name(value: str) -> bool:
    """Two or three capitalised words of letters only, none a scanner maker's or model's word.

    ``Maria Kowalska`` and ``Anna Nowak-Kowalska`` look like names; ``GE Logiq 7``,
    ``Toshiba Aplio 300`` and ``Supersonic Aixplorer`` do not.
    """
    words = re.split(r"[ -]+", value.strip())
    if not 2 <= len(words) <= 4:
        return False
    if not all(len(w) >= 2 and w.isalpha() and w[0].isupper() and w[1:].islower() for w in words):
        return False
    return not any(w.lower() in SCANNER_WORDS for w in words)


def _check_pseudonym(value: str) -> str:
    """A pseudonym is a short token with at least one digit: no spaces, so no personal names."""
    if not _PSEUDONYM.match(value) or not any(ch.isdigit() for ch in value):
        raise ValueError(
            "expected a pseudonymous identifier (letters, digits, '_', '-', '.', at most 64 "
            f"characters, at least one digit, no spaces); got {value!r}"
        )
    if _looks_like_name_and_birth_year(value):
        raise ValueError(
            f"expected a pseudonymous identifier; {value!r} looks like a name and a birth year"
        )
    return value


def _check_site_id(value: str) -> str:
    if not _SITE_ID.match(value):
        raise ValueError(
            f"expected a lowercase site id like 'site-a' (a-z, 0-9, '-'); got {value!r}"
        )
    return value


def check_site_id(value: str) -> str:
    """Validate a site id before anything is read.

    Raises:
        SettingsError: not a lowercase site id.
    """
    try:
        return _check_site_id(value)
    except ValueError as e:
        raise SettingsError(f"--site-id: {e}") from None


def _check_device(value: str) -> str:
    if not _DEVICE.match(value):
        raise ValueError(
            f"expected a scanner model name (at most 80 plain characters); got {value!r}"
        )
    if looks_like_person_name(value):
        raise ValueError(
            f"expected a scanner model name such as 'GE Logiq 7'; {value!r} looks like a "
            "person's name"
        )
    return value


Pseudonym = Annotated[str, AfterValidator(_check_pseudonym)]
SiteId = Annotated[str, AfterValidator(_check_site_id)]
DeviceName = Annotated[str, AfterValidator(_check_device)]
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
RelPath = Annotated[str, Field(pattern=r"^[^/\\][^\\]*$", max_length=255)]


class Pathology(StrEnum):
    BENIGN = "benign"
    MALIGNANT = "malignant"
    NORMAL = "normal"


class ReferenceStandard(StrEnum):
    BIOPSY = "biopsy"
    SURGERY = "surgery"
    FOLLOW_UP = "follow-up"
    NONE = "none"


class BiRads(StrEnum):
    B1 = "1"
    B2 = "2"
    B3 = "3"
    B4 = "4"  # category 4 without a subcategory (the lexicon makes 4A/4B/4C optional)
    B4A = "4A"
    B4B = "4B"
    B4C = "4C"
    B5 = "5"


class Shape(StrEnum):
    OVAL = "oval"
    ROUND = "round"
    IRREGULAR = "irregular"


class Orientation(StrEnum):
    PARALLEL = "parallel"
    NOT_PARALLEL = "not parallel"


class Margin(StrEnum):
    CIRCUMSCRIBED = "circumscribed"
    INDISTINCT = "indistinct"
    ANGULAR = "angular"
    MICROLOBULATED = "microlobulated"
    SPICULATED = "spiculated"


class EchoPattern(StrEnum):
    ANECHOIC = "anechoic"
    HYPOECHOIC = "hypoechoic"
    ISOECHOIC = "isoechoic"
    HYPERECHOIC = "hyperechoic"
    HETEROGENEOUS = "heterogeneous"
    COMPLEX_CYSTIC_SOLID = "complex cystic/solid"


class PosteriorFeatures(StrEnum):
    NONE = "none"
    ENHANCEMENT = "enhancement"
    SHADOWING = "shadowing"
    COMBINED = "combined"


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class SeedPoint(_Frozen):
    """The radiologist's click, in pixel coordinates of the stored image (x right, y down)."""

    x: int = Field(ge=0)
    y: int = Field(ge=0)


class Descriptors(_Frozen):
    """ACR BI-RADS ultrasound lexicon terms for one mass; any term may be unknown (None)."""

    shape: Shape | None = None
    orientation: Orientation | None = None
    margin: tuple[Margin, ...] = ()
    echo_pattern: EchoPattern | None = None
    posterior_features: PosteriorFeatures | None = None

    @model_validator(mode="after")
    def _circumscribed_stands_alone(self) -> Descriptors:
        if Margin.CIRCUMSCRIBED in self.margin and len(self.margin) > 1:
            raise ValueError("margin: 'circumscribed' cannot be combined with other margin terms")
        return self


class Case(_Frozen):
    """One validated, pseudonymous ultrasound case of one site."""

    case_id: Pseudonym
    patient_id: Pseudonym
    site_id: SiteId
    image: RelPath
    image_sha256: Sha256
    source_sha256: Sha256
    width: int = Field(ge=16, le=4096)
    height: int = Field(ge=16, le=4096)
    masks: tuple[RelPath, ...] = ()
    seed: SeedPoint | None = None
    pathology: Pathology
    reference_standard: ReferenceStandard
    reference_attested_by_site: bool = False
    study_date: date | None = None
    reference_date: date | None = None
    birads: BiRads | None = None
    descriptors: Descriptors = Descriptors()
    device: DeviceName | None = None
    age: int | None = Field(default=None, ge=10, le=110)
    pixel_spacing_mm: float | None = Field(default=None, gt=0.0, le=5.0)
    source_fold: int | None = Field(default=None, ge=0, le=99)
    ingested_at: datetime

    @model_validator(mode="after")
    def _consistent(self) -> Case:
        if self.pathology is not Pathology.NORMAL and not self.masks:
            raise ValueError("masks: a benign or malignant case needs a lesion mask")
        if self.pathology is not Pathology.NORMAL and self.seed is None:
            raise ValueError("seed: a benign or malignant case needs a seed point")
        if self.seed is not None and (self.seed.x >= self.width or self.seed.y >= self.height):
            raise ValueError(
                f"seed: ({self.seed.x}, {self.seed.y}) lies outside the "
                f"{self.width}x{self.height} image"
            )
        if (
            self.study_date is not None
            and self.reference_date is not None
            and self.reference_date < self.study_date
        ):
            raise ValueError("reference_date: earlier than study_date")
        return self

    @property
    def is_lesion(self) -> bool:
        return self.pathology is not Pathology.NORMAL

    @property
    def label(self) -> int | None:
        """1 for malignant, 0 for benign, None for normal (no lesion to classify)."""
        if self.pathology is Pathology.NORMAL:
            return None
        return int(self.pathology is Pathology.MALIGNANT)
