"""Each review-flag reason on constructed inputs, and the order they are reported in."""
import numpy as np

from models.flags import FlagPolicy, flag_reasons
from models.scope import STATS

POLICY = FlagPolicy(band_low=0.02, min_contrast=0.05, max_saturated=0.1)
THRESHOLD = 0.05


def stats(contrast: float = 0.2, saturated: float = 0.0) -> np.ndarray:
    values = np.zeros(len(STATS), np.float32)
    values[STATS.index("crop_std")], values[STATS.index("saturated")] = contrast, saturated
    return values


def reasons(prob=0.001, mc_high=0.001, crop_failed=False, contrast=0.2, saturated=0.0, scope=0.1):
    return flag_reasons(POLICY, prob, THRESHOLD, mc_high, crop_failed, stats(contrast, saturated),
                        {"score": scope})


def test_a_clear_normal_call_is_not_flagged():
    assert reasons() == []


def test_each_reason():
    assert reasons(prob=0.03) == ["near_threshold"]
    assert reasons(mc_high=0.2) == ["uncertain"]
    assert reasons(crop_failed=True) == ["lung_crop_failed"]
    assert reasons(contrast=0.01) == ["low_quality"]
    assert reasons(saturated=0.5) == ["low_quality"]
    assert reasons(scope=1.5) == ["out_of_scope"]


def test_reasons_combine_in_a_fixed_order():
    assert reasons(prob=0.03, mc_high=0.2, crop_failed=True, scope=2.0) == [
        "out_of_scope", "near_threshold", "uncertain", "lung_crop_failed"]


def test_pneumonia_calls_get_only_out_of_scope():
    assert reasons(prob=0.9, mc_high=0.99, crop_failed=True, contrast=0.0) == []
    assert reasons(prob=0.9, scope=3.0) == ["out_of_scope"]


def test_policy_from_older_metadata_has_the_band_only():
    policy = FlagPolicy.from_meta({"flag_band_low": 0.3})
    assert policy.band_low == 0.3 and policy.min_contrast == 0.0 and policy.max_saturated == 1.0


def test_flag_reasons_are_the_one_set_of_reason_strings():
    from models.crop import CROP_FAILED
    from models.flags import REASON_TEXT
    from models.reasons import FlagReason

    assert [str(r) for r in FlagReason] == ["out_of_scope", "near_threshold", "uncertain", "lung_crop_failed",
                                            "low_quality", "qa_sample", "reader_request", "third_read"]
    assert set(REASON_TEXT) == set(FlagReason) and all(REASON_TEXT.values())
    assert CROP_FAILED is FlagReason.LUNG_CROP_FAILED
    # Every reason flag_reasons gives is a FlagReason, written as its plain value.
    all_reasons = reasons(prob=0.03, mc_high=0.2, crop_failed=True, contrast=0.01, scope=2.0)
    # All but qa_sample, reader_request and third_read, which the service sets (studies.qa, studies.reviews).
    assert all_reasons == list(FlagReason)[:-3] and all(isinstance(r, FlagReason) for r in all_reasons)
    assert ",".join(all_reasons) == "out_of_scope,near_threshold,uncertain,lung_crop_failed,low_quality"
