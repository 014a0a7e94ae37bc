"""A zip is expanded one member at a time, from reading to storage: memory holds the upload and one member,
never all of them (the 20x zip rule alone let one upload cost ~27x its size)."""
import io
import tracemalloc
import zipfile

import numpy as np

from core.services import services_of
from db.accounts import create_user
from studies.intake import submit_uploads
from tests.dicom.factory import dataset, to_bytes


def _compressible_zip(members: int) -> bytes:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(members):
            pixels = np.zeros((512, 512), np.uint16)
            pixels[::16] = rng.integers(0, 4096, (32, 512))  # mostly flat: compresses about 15x
            archive.writestr(f"film{i}.dcm", to_bytes(dataset(pixels)))
    return buffer.getvalue()


def test_a_zip_upload_peaks_at_a_few_times_its_size(app, monkeypatch):
    services = services_of(app)
    monkeypatch.setattr(services, "enqueue", lambda ids: None)  # only the intake is measured
    with services.sessions.begin() as session:
        user_id = create_user(session, "up", "uploader", None).id
    archive = _compressible_zip(40)
    expanded = sum(info.file_size for info in zipfile.ZipFile(io.BytesIO(archive)).infolist())
    assert expanded > 10 * len(archive)  # the case that cost memory: within the 20x rule, large when expanded
    tracemalloc.start()
    try:
        batch, rejected, accepted = submit_uploads(services, [("films.zip", archive)], user_id, "api")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert batch is not None and rejected == [] and accepted == 40
    assert peak < 4 * len(archive) + 3 * expanded / 40  # the upload, and a member or two in flight
