"""Review flags: why a NORMAL call may be a missed pneumonia, and the out-of-scope gate."""
import logging
from dataclasses import dataclass

import numpy as np

from models.reasons import FlagReason
from models.scope import STATS

logger = logging.getLogger(__name__)

# What each reason means, in the words the reviewer page shows.
REASON_TEXT: dict[FlagReason, str] = {
    FlagReason.OUT_OF_SCOPE: "The film does not look like the pediatric frontal chest films the model learned from "
                             "(adult, other view, not a chest film, inverted or blank): its call means little here.",
    FlagReason.NEAR_THRESHOLD: "The pneumonia probability is just below the threshold.",
    FlagReason.UNCERTAIN: "The ensemble's members or their dropout samples disagree: part of them would call "
                          "pneumonia.",
    FlagReason.LUNG_CROP_FAILED: "The lung outline was implausible (one lung, tiny or missing); the model read a "
                                 "fixed central box instead of the lungs.",
    FlagReason.LOW_QUALITY: "The lung region has unusually low contrast or burnt-out areas.",
    FlagReason.QA_SAMPLE: "Quality check: an unflagged NORMAL call drawn at random, so the department learns how "
                          "often such calls are missed pneumonia. Read it like any other film.",
    FlagReason.READER_REQUEST: "A reader recorded a decision on this call although nobody flagged it.",
    FlagReason.THIRD_READ: "Two readers disagreed on this film: a third reader's decision settles it.",
}
CROP_STD, SATURATED = STATS.index("crop_std"), STATS.index("saturated")


@dataclass(frozen=True)
class FlagPolicy:
    """Flag limits from classifier.json (fitted by `python -m training --recalibrate`)."""

    band_low: float
    min_contrast: float = 0.0
    max_saturated: float = 1.0
    uncertain: bool = True

    @classmethod
    def from_meta(cls, meta: dict) -> "FlagPolicy":
        """The policy recorded in classifier.json; the band alone for older bundles."""
        policy = meta.get("flag_policy", {})
        return cls(band_low=float(meta["flag_band_low"]), min_contrast=float(policy.get("min_contrast", 0.0)),
                   max_saturated=float(policy.get("max_saturated", 1.0)),
                   uncertain=bool(policy.get("uncertain", True)))


def flag_reasons(policy: FlagPolicy, prob: float, threshold: float, mc_high: float, crop_failed: bool,
                 stats: np.ndarray, scope: dict | None) -> list[FlagReason]:
    """Reasons to show this film to a person, in FlagReason order; [] for none."""
    reasons = []
    if scope is not None and scope["score"] >= 1.0:
        reasons.append(FlagReason.OUT_OF_SCOPE)  # whatever the call: the model's output means little here
    if prob < threshold:
        # Flags ask a person to look at a NORMAL call; a PNEUMONIA call is reviewed anyway.
        if prob >= policy.band_low:
            reasons.append(FlagReason.NEAR_THRESHOLD)
        if policy.uncertain and mc_high >= threshold:
            reasons.append(FlagReason.UNCERTAIN)
        if crop_failed:
            reasons.append(FlagReason.LUNG_CROP_FAILED)
        if stats[CROP_STD] < policy.min_contrast or stats[SATURATED] > policy.max_saturated:
            reasons.append(FlagReason.LOW_QUALITY)
    return reasons
