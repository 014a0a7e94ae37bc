"""DICOM without a VOI (no window, no VOI LUT): which rendering gives the same flags as the film's JPEG?

Run: .venv/bin/python bench/voi_rendering.py --data ../shared/data --films 60 --out bench/results/voi_rendering.json

Each film (--source: full-size Kermany JPEGs by default) is screened as the JPEG, and wrapped as DICOM
without a window in several ways real objects are written (8-bit; 12-bit; 12-bit MONOCHROME1; 12-bit using only
part of its range, as CR often does; 16-bit with a pedestal and a rescale intercept). Each DICOM is rendered by:
  percentile  the 0.5-99.5 % stretch the service used before (the old rendering),
  minmax      the stored values' minimum to maximum after the modality LUT (the auto-windowing of JPEG exports
              such as dcm4che's dcm2jpg for images without VOI attributes),
  bits        the full range BitsStored allows (an export with no windowing at all),
  service     models.imaging.decode_image on the DICOM bytes: what the service does now.
For each: how many films the scope gate flags out of scope (Kermany JPEGs: almost none, these are the training
hospital's children; adult films: most), decisions that differ from the JPEG's, and the mean/max |p - p_JPEG|.
The two real DICOM films in dicom/ (adult, no JPEG to compare with) are reported with each rendering. Data are
never written; --out takes the figures only.
"""
import argparse
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.dicom import read_dataset  # noqa: E402
from models.imaging import _fit, decode_image  # noqa: E402
from models.reasons import FlagReason  # noqa: E402
from models.screener import Screener  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RENDERINGS = ("percentile", "minmax", "bits", "service")
# name: (bits stored, photometric, stored = scale * gray + offset, rescale intercept)
VARIANTS = {
    "8bit": (8, "MONOCHROME2", 1, 0, 0),
    "12bit": (12, "MONOCHROME2", 16, 0, 0),
    "12bit-mono1": (12, "MONOCHROME1", -16, 4095, 0),
    "12bit-part-range": (12, "MONOCHROME2", 6, 600, 0),
    "16bit-rescaled": (16, "MONOCHROME2", 40, 1000, -1000),
}


def wrap(gray: np.ndarray, variant: str) -> bytes:
    """The film's 8-bit pixels as a DICOM CR without window or VOI LUT."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    bits, photometric, scale, offset, intercept = VARIANTS[variant]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.PatientAge = "CR", "CHEST", "004Y"
    ds.Rows, ds.Columns = gray.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if intercept:
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, 1, "US"
    ds.PixelData = (gray.astype(np.int32) * scale + offset).astype(np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def render(data: bytes, how: str) -> np.ndarray:
    """One rendering of DICOM bytes to [0, 1], bright bone, at most 512 px (as decode_image fits)."""
    from pydicom.pixels import apply_modality_lut

    if how == "service":
        return decode_image(data)
    ds = read_dataset(data)
    values = apply_modality_lut(ds.pixel_array, ds).astype(np.float32)
    if how == "percentile":
        low, high = np.percentile(values, (0.5, 99.5))
    elif how == "minmax":
        low, high = float(values.min()), float(values.max())
    else:
        intercept, slope = float(ds.get("RescaleIntercept", 0)), float(ds.get("RescaleSlope", 1))
        low, high = intercept, intercept + slope * (2 ** int(ds.BitsStored) - 1)
    pixels = np.clip((values - low) / max(high - low, 1e-6), 0.0, 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        pixels = 1.0 - pixels
    return _fit(pixels, 512)


def screen(screener: Screener, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(probability, out of scope) per image, in batches of 32."""
    probability, out = [], []
    for start in range(0, len(images), 32):
        for finding in screener.screen(images[start:start + 32]):
            probability.append(finding.probability)
            out.append(FlagReason.OUT_OF_SCOPE in finding.reasons)
    return np.array(probability), np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--films", type=int, default=60, help="films, half NORMAL half PNEUMONIA")
    parser.add_argument("--source", default="kermany-fullsize",
                        choices=("kermany-fullsize", "kermany-train", "scope/adult-frontal"),
                        help="original full-size JPEGs, the 224 px training copies, or adult films (most flagged)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    screener = Screener.load(ROOT / "models" / "weights")
    folder = args.data / args.source
    labelled = (folder / "NORMAL").is_dir()
    paths = ([path for label in ("NORMAL", "PNEUMONIA") for path in sorted((folder / label).glob("*.jp*g"))
              [:args.films // 2]] if labelled else sorted(folder.glob("*.jp*g"))[:args.films])
    jpeg_p, jpeg_out = screen(screener, [decode_image(path.read_bytes()) for path in paths])
    report = {"source": args.source, "films": len(paths), "jpeg": {"out_of_scope": int(jpeg_out.sum())}, "variants": {}}
    print(f"{len(paths)} films; JPEG: {int(jpeg_out.sum())}/{len(paths)} flagged out of scope")
    for variant in VARIANTS:
        images = {how: [] for how in RENDERINGS}
        for path in paths:
            data = wrap(np.asarray(Image.open(path).convert("L")), variant)
            for how in RENDERINGS:
                images[how].append(render(data, how))
        report["variants"][variant] = {}
        for how in RENDERINGS:
            p, out = screen(screener, images[how])
            row = {"out_of_scope": int(out.sum()), "decisions_differ": int((out != jpeg_out).sum()),
                   "mean_abs_dp": round(float(np.abs(p - jpeg_p).mean()), 4),
                   "max_abs_dp": round(float(np.abs(p - jpeg_p).max()), 4)}
            report["variants"][variant][how] = row
            print(f"{variant:17s} {how:10s} out of scope {row['out_of_scope']:3d}/{len(paths)}, differ from JPEG "
                  f"{row['decisions_differ']:3d}, mean |dp| {row['mean_abs_dp']:.4f}, max {row['max_abs_dp']:.4f}")
    real = sorted((args.data / "dicom").glob("*.dcm"))
    report["real_dicom"] = {}
    for how in RENDERINGS:
        p, out = screen(screener, [render(path.read_bytes(), how) for path in real])
        report["real_dicom"][how] = {path.name: {"p": round(float(pi), 4), "out_of_scope": bool(oi)}
                                     for path, pi, oi in zip(real, p, out)}
        print(f"real DICOM {how:10s}", report["real_dicom"][how])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
