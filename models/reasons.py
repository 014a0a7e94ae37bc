"""Why a film is shown to a person: the one definition of the review-flag reason strings."""
import enum


class FlagReason(enum.StrEnum):
    """A review-flag reason; the value is what the database, the CSV and the API carry."""

    OUT_OF_SCOPE = "out_of_scope"
    NEAR_THRESHOLD = "near_threshold"
    UNCERTAIN = "uncertain"
    LUNG_CROP_FAILED = "lung_crop_failed"
    LOW_QUALITY = "low_quality"
    # Not the model's: an unflagged NORMAL call drawn at random so the service measures its own misses.
    QA_SAMPLE = "qa_sample"
    # Not the model's either: a reader asked to record a decision on a call nobody flagged (closed at once).
    READER_REQUEST = "reader_request"
    # Two readers disagreed: a third reader decides (studies.reviews.record_decision).
    THIRD_READ = "third_read"
