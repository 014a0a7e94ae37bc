"""DICOM files that would cost far more memory than their size: refused at the door from the header, before
anything is inflated or decoded; a multi-frame film decodes its first frame only."""
import numpy as np
from pydicom.uid import DeflatedExplicitVRLittleEndian

from models import dicom
from models.dicom import check_dicom, decode_dicom
from tests.dicom.factory import chest_pixels, dataset, to_bytes


def test_frames_times_pixels_are_bounded_from_the_header():
    ds = dataset(chest_pixels())
    ds.NumberOfFrames, ds.Rows, ds.Columns = 100, 1024, 1024
    ds.PixelData = b"\0" * 64  # the header alone says 200 MB
    problem = check_dicom(to_bytes(ds))
    assert "100 frame(s) of 1024x1024 px, 200 MB of pixels" in problem


def test_a_deflated_data_set_is_inflated_only_up_to_the_limit(monkeypatch):
    ds = dataset(np.zeros((1024, 1024), np.uint16))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    data = to_bytes(ds)
    assert len(data) < 50_000 and check_dicom(data) is None  # 2 MB of pixels, a few KB on disk
    monkeypatch.setattr(dicom, "MAX_DICOM_BYTES", 1 * 2**20)
    assert "inflates beyond 1 MB (possible bomb)" in check_dicom(data)


def test_a_multi_frame_film_decodes_its_first_frame_only():
    frames = np.stack([chest_pixels(), np.zeros_like(chest_pixels()), np.full_like(chest_pixels(), 4000)])
    ds = dataset(frames[0])
    ds.NumberOfFrames, ds.PixelData = 3, frames.astype(np.uint16).tobytes()
    film = decode_dicom(to_bytes(ds))
    assert film.shape == frames[0].shape
    single = decode_dicom(to_bytes(dataset(frames[0])))
    assert np.allclose(film, single, atol=1e-6)
