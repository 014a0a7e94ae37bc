"""Applicability at the door: screen, accept-and-ignore or refuse each DICOM instance, by its header.

A PACS auto-route sends whatever a modality produced: CT series, structured reports, dose objects, colour
screenshots, raw "For Processing" detector images. Only chest radiographs are screened. Everything else that
is a DICOM storage object is accepted and ignored: stored, answered success (a refusal makes the sender retry),
recorded as not applicable with the reason, never screened and never in the review queue. Instances are refused
only when no rule accepts their SOP class (0x0122) or their data are broken (0xA900, 0xC000), with a reason.

Site rules (PNEUMOSCREEN_ROUTING_RULES, core.settings.RoutingRule) are tried first, then DEFAULT_RULES; the first
rule whose conditions all hold decides. Adults and laterals are screened, and flagged out of scope for a person
by studies.scope: they are chest films a reviewer should see.
"""
import logging
from dataclasses import dataclass

from core.settings import RoutingRule
from models.dicom import DicomMeta
from studies.scope import age_years

logger = logging.getLogger(__name__)

SCREEN, IGNORE, REFUSE = "screen", "ignore", "refuse"
# DICOM statuses (PS3.4 B.2.3, PS3.7 C): what a refused instance's sender hears.
SOP_CLASS_NOT_SUPPORTED, DOES_NOT_MATCH_SOP_CLASS, CANNOT_UNDERSTAND = 0x0122, 0xA900, 0xC000
# ErrorComment is a LO element: at most 64 characters.
COMMENT_CHARS = 64

# Projection radiographs: computed, digital, digitized film (DR is not a DICOM term, but vendors write it).
RADIOGRAPHS = ("CR", "DX", "DR", "RG", "")
# BodyPartExamined terms (PS3.16 CID 4031 and common local ones) that are not the chest. An unknown or absent
# body part is screened: a missed chest film is worse than a skull the scope gate flags.
NOT_CHEST = (
    "SKULL", "HEAD", "BRAIN", "FACE", "ORBIT", "SINUS", "NOSE", "JAW", "MANDIBLE", "MAXILLA", "TMJ", "ZYGOMA",
    "NECK", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "SPINE", "SACRUM", "COCCYX", "PELVIS", "HIP", "ABDOMEN",
    "ABDOMENPELVIS", "KIDNEY", "BLADDER", "BREAST", "SHOULDER", "SCAPULA", "CLAVICLE", "ARM", "UPPERARM",
    "HUMERUS", "ELBOW", "FOREARM", "RADIUS", "ULNA", "WRIST", "HAND", "FINGER", "THUMB", "EXTREMITY",
    "UPRLIMB", "LWRLIMB", "UPPER LIMB", "LOWER LIMB", "LEG", "THIGH", "FEMUR", "KNEE", "PATELLA", "TIBIA",
    "FIBULA", "LOWER LEG", "ANKLE", "HEEL", "CALCANEUS", "FOOT", "TOE",
)
CHEST = ("CHEST", "THORAX", "LUNG", "TORAX", "THORAXLUNG")

DEFAULT_RULES = (
    RoutingRule(REFUSE, "not a DICOM storage SOP class", SOP_CLASS_NOT_SUPPORTED, storage_class=False),
    RoutingRule(IGNORE, "no image (report, waveform, plan...)", has_pixels=False),
    RoutingRule(IGNORE, "For Processing image (raw detector data)", for_processing=True),
    RoutingRule(IGNORE, "colour image, not a grayscale radiograph", colour=True),
    RoutingRule(IGNORE, "body part is not the chest", body_part=NOT_CHEST),
    RoutingRule(SCREEN, modality=RADIOGRAPHS),
    # Secondary Capture of a film (digitized, exported): screened when its header names the chest.
    RoutingRule(SCREEN, modality=("OT", "SC"), body_part=CHEST),
    RoutingRule(IGNORE, "modality is not a projection radiograph"),
)


@dataclass(frozen=True)
class Facts:
    """What the rules look at, from one instance's header."""

    sop_class: str | None = None
    modality: str | None = None
    body_part: str | None = None
    view: str | None = None
    age: float | None = None  # years
    for_processing: bool = False
    colour: bool = False
    has_pixels: bool = True
    storage_class: bool = True


@dataclass(frozen=True)
class Decision:
    """screen, ignore or refuse; for ignore and refuse a reason, for refuse the DICOM status too."""

    action: str
    reason: str | None = None
    status: int | None = None


def route(ds, meta: DicomMeta, rules: tuple[RoutingRule, ...] = ()) -> Decision:
    """The decision for one DICOM data set (models.dicom.read_dataset, with its pixel bytes) and its header facts
    (meta_of): site `rules` first, then DEFAULT_RULES; broken data refused first."""
    if problem := _malformed(ds):
        return Decision(REFUSE, problem, CANNOT_UNDERSTAND)
    facts = facts_of(ds, meta)
    if not facts.has_pixels and facts.sop_class and "Image Storage" in _sop_name(facts.sop_class):
        return Decision(REFUSE, f"{_sop_name(facts.sop_class)} without pixel data", DOES_NOT_MATCH_SOP_CLASS)
    return decide(facts, rules)


def decide(facts: Facts, rules: tuple[RoutingRule, ...] = ()) -> Decision:
    """The first rule that matches decides; no rule at all: the SOP class is not supported."""
    for rule in (*rules, *DEFAULT_RULES):
        if matches(rule, facts):
            if rule.action == SCREEN:
                return Decision(SCREEN)
            reason = f"{rule.reason} ({describe(facts)})"
            return Decision(rule.action, reason, rule.status if rule.action == REFUSE else None)
    return Decision(REFUSE, f"no routing rule accepts it ({describe(facts)})", SOP_CLASS_NOT_SUPPORTED)


def matches(rule: RoutingRule, facts: Facts) -> bool:
    """Every condition the rule sets holds for these facts (an unknown age matches no age condition)."""
    for values, fact in ((rule.modality, facts.modality), (rule.sop_class, facts.sop_class),
                         (rule.body_part, facts.body_part), (rule.view, facts.view)):
        if values and (fact or "").upper() not in values:
            return False
    if rule.age_from is not None and (facts.age is None or facts.age < rule.age_from):
        return False
    if rule.age_under is not None and (facts.age is None or facts.age >= rule.age_under):
        return False
    return all(wanted is None or wanted == fact for wanted, fact in (
        (rule.for_processing, facts.for_processing), (rule.colour, facts.colour),
        (rule.has_pixels, facts.has_pixels), (rule.storage_class, facts.storage_class)))


def facts_of(ds, meta: DicomMeta) -> Facts:
    """The rules' facts from a pydicom data set and the header facts kept on the study row."""
    sop_class = str(ds.get("SOPClassUID", "") or "").strip() or None
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
    samples = ds.get("SamplesPerPixel", 1)
    return Facts(
        sop_class=sop_class, modality=meta.modality, body_part=(meta.body_part or "").upper() or None,
        view=meta.view_position, age=age_years(meta.patient_age),
        for_processing=intent == "FOR PROCESSING" or _sop_name(sop_class or "").endswith("For Processing"),
        colour=bool(photometric) and not photometric.startswith("MONOCHROME") or samples not in (None, "", 1),
        has_pixels="PixelData" in ds, storage_class=sop_class is None or _is_storage(sop_class))


def describe(facts: Facts) -> str:
    """The facts a reason names, shortest first: what a PACS administrator needs to see why."""
    parts = [f"modality {facts.modality or 'none'}"]
    if facts.body_part:
        parts.append(f"body part {facts.body_part}")
    if facts.sop_class:
        parts.append(_sop_name(facts.sop_class))
    return ", ".join(parts)


def error_comment(reason: str) -> str:
    """A reason cut to fit a DICOM ErrorComment (LO, 64 characters, no backslash)."""
    text = reason.replace("\\", "/")
    return text if len(text) <= COMMENT_CHARS else text[:COMMENT_CHARS - 3] + "..."


def listener_sop_classes(rules: tuple[RoutingRule, ...] = ()) -> list[str]:
    """SOP classes the DICOM listener accepts contexts for: every standard storage class, and any other a site
    rule names. A refused class is still accepted at association, so its C-STORE is answered 0x0122 with a reason
    the sender's log shows, rather than a bare rejected context."""
    from pynetdicom import AllStoragePresentationContexts

    uids = [str(context.abstract_syntax) for context in AllStoragePresentationContexts]
    for rule in rules:
        uids += [uid for uid in rule.sop_class if uid not in uids]
    return uids


def _malformed(ds) -> str | None:
    """A header no later step can trust: an unknown transfer syntax, or an element that does not parse (pydicom
    parses lazily, so a malformed element would otherwise fail storage or decoding later, not here)."""
    from pydicom.uid import UID

    syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    if not UID(syntax).is_transfer_syntax:
        return f"unknown transfer syntax {syntax[:64]!r}"
    try:
        for _ in ds.file_meta.iterall():
            pass
        for _ in ds.iterall():
            pass
    except Exception as exc:  # pydicom raises many kinds on a malformed element
        return f"malformed DICOM element: {str(exc)[:200]}"
    return None


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return name if name != uid else f"SOP class {uid}"


def _is_storage(uid: str) -> bool:
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    return issubclass(uid_to_service_class(uid), StorageServiceClass)
