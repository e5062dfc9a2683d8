"""Which registered cases may train: the rules, in one place.

A case trains only if its label is confirmed (biopsy or surgery; follow-up counts for benign and
normal findings only), it is not part of a duplicate group whose copies disagree on the label, it
is the kept copy of an agreeing group, and neither it nor any copy of it is (nearly) equal to a
case of the vendor's locked test set or belongs to a locked patient.
"""

from __future__ import annotations

from data_registry.schema import Case, Pathology, ReferenceStandard

UNCONFIRMED = "unconfirmed-reference"
FOLLOW_UP_MALIGNANT = "follow-up-only-for-malignant"
CONFLICTING_DUPLICATE = "conflicting-duplicate"
DUPLICATE_OF = "duplicate-of"
LOCKED_TEST = "locked-test-case"


def reference_reasons(case: Case) -> list[str]:
    """Reasons a case's own label is not confirmed enough to train on (empty when it is)."""
    if case.reference_standard is ReferenceStandard.NONE:
        return [UNCONFIRMED]
    if (
        case.reference_standard is ReferenceStandard.FOLLOW_UP
        and case.pathology is Pathology.MALIGNANT
    ):
        return [FOLLOW_UP_MALIGNANT]
    return []
