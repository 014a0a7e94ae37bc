"""The DICOM listener's counters in /metrics, after real associations and C-STOREs from a pynetdicom modality."""
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from core.services import services_of
from core.settings import DicomCaller
from pneumoscreen.dicom_listen import Listener
from tests.dicom.factory import chest_pixels, dataset
from tests.helpers import free_port
from tests.web.test_metrics import samples, scrape


def _ae(title: str) -> AE:
    ae = AE(ae_title=title)
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    return ae


def test_associations_and_instances_are_counted(app):
    scp = Listener(services_of(app), "PNEUMOTEST", free_port(), "127.0.0.1", quiet_s=3600,
                   callers=(DicomCaller("MODALITY", "Radiology"),))
    scp.start(block=False)
    try:
        assoc = _ae("MODALITY").associate("127.0.0.1", scp.address[1], ae_title="PNEUMOTEST")
        assert assoc.is_established
        try:
            assert assoc.send_c_store(dataset(chest_pixels(), study_uid="1.2.3.9")).Status == 0x0000
            assert assoc.send_c_store(dataset(chest_pixels(), study_uid="1.2.3.9")).Status == 0x0000
            # A colour screenshot is accepted and ignored (studies.applicability); a 60000 px square refused.
            assert assoc.send_c_store(dataset(chest_pixels(), photometric="RGB")).Status == 0x0000
            broken = dataset(chest_pixels())
            broken.Rows = broken.Columns = 60000
            refused = assoc.send_c_store(broken).Status
            assert refused in (0xA900, 0xC000)
        finally:
            assoc.release()
        assert _ae("STRANGER").associate("127.0.0.1", scp.address[1], ae_title="PNEUMOTEST").is_rejected
    finally:
        scp.stop()
    values = samples(scrape(app.test_client()))
    associations = {labels: value for (name, labels), value in values.items()
                    if name == "pneumoscreen_dicom_associations_total"}
    assert associations == {(("outcome", "accepted"), ("reason", "")): 1,
                            (("outcome", "rejected"), ("reason", "not_allowed")): 1}
    instances = {labels: value for (name, labels), value in values.items()
                 if name == "pneumoscreen_dicom_instances_total"}
    assert instances == {(("outcome", "stored"), ("status", "0x0000"), ("via", "c-store")): 2,
                         (("outcome", "ignored"), ("status", "0x0000"), ("via", "c-store")): 1,
                         (("outcome", "refused"), ("status", f"0x{refused:04X}"), ("via", "c-store")): 1}
