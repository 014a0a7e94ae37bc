"""Make DICOM files for tests: any photometric, depth, LUT, view; JPEG 2000 and lossless JPEG encoded."""
import io
import struct

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLosslessSV1, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
SECRET_NAME, SECRET_ID = "SECRETPATIENT^JANE", "MRN-93842211"


def chest_pixels(rows: int = 96, cols: int = 80, bits: int = 12) -> np.ndarray:
    """A bright body with two dark lung fields (MONOCHROME2 sense), filling `bits` bits."""
    y, x = np.mgrid[0:rows, 0:cols]
    image = np.full((rows, cols), 0.8)
    for cx in (0.3, 0.7):
        image[((x / cols - cx) / 0.15) ** 2 + ((y / rows - 0.5) / 0.3) ** 2 < 1] = 0.2
    return np.round(image * (2 ** bits - 1)).astype(np.uint16)


def dataset(pixels: np.ndarray, *, bits: int = 12, photometric: str = "MONOCHROME2", modality: str = "CR",
            view: str | None = "PA", study_uid: str | None = None, signed: bool = False, **extra) -> Dataset:
    """A CR image data set with file meta (explicit VR little endian), patient name and id set."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CR_IMAGE_STORAGE
    ds.SOPClassUID = CR_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName, ds.PatientID, ds.PatientAge = SECRET_NAME, SECRET_ID, "004Y"
    ds.Modality, ds.BodyPartExamined = modality, "CHEST"
    if view:
        ds.ViewPosition = view
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits, bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()
    return ds


def to_bytes(ds: Dataset, preamble: bool = True) -> bytes:
    """Part 10 bytes; without `preamble` a bare implicit-VR data set (no preamble, no file meta)."""
    buffer = io.BytesIO()
    if preamble:
        ds.save_as(buffer, enforce_file_format=True)
    else:
        bare = Dataset()
        bare.update(ds)
        bare.save_as(buffer, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


def j2k(ds: Dataset) -> Dataset:
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    return ds


def jpeg_lossless(ds: Dataset) -> Dataset:
    """Encode as JPEG Lossless SV1 (process 14): pydicom has no encoder for it, so this is a minimal one."""
    ds.PixelData = encapsulate([_lossless_jpeg(ds.pixel_array.astype(np.int64), int(ds.BitsStored))])
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    return ds


def _lossless_jpeg(pixels: np.ndarray, precision: int) -> bytes:
    rows, cols = pixels.shape
    predicted = np.empty_like(pixels)
    predicted[0, 0] = 1 << (precision - 1)
    predicted[0, 1:] = pixels[0, :-1]           # first row: left neighbour
    predicted[1:, 0] = pixels[:-1, 0]           # first column: the pixel above
    predicted[1:, 1:] = pixels[1:, :-1]         # selection value 1: left neighbour
    bits = []
    for diff in ((pixels - predicted) % 65536).ravel():
        diff = int(diff) - 65536 if diff > 32768 else int(diff)
        size = abs(diff).bit_length()
        bits.append(format(size, "05b"))        # Huffman table: every category has a 5-bit code
        if 0 < size < 16:
            bits.append(format(diff if diff > 0 else diff - 1 + (1 << size), f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for start in range(0, len(stream), 8):
        byte = int(stream[start:start + 8], 2)
        data += bytes([byte, 0]) if byte == 0xFF else bytes([byte])
    sof = struct.pack(">HBHHBBBB", 11, precision, rows, cols, 1, 1, 0x11, 0)
    dht = struct.pack(">HB", 36, 0) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    sos = struct.pack(">HBBBBBB", 8, 1, 1, 0, 1, 0, 0)
    return b"\xff\xd8\xff\xc3" + sof + b"\xff\xc4" + dht + b"\xff\xda" + sos + bytes(data) + b"\xff\xd9"
