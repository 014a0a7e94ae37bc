"""Peak Python memory of one upload through the intake (expand, check, store, record), as a multiple of the
request's size, for plain files and for zips that expand up to the 20x limit (ratios, no asserts).

Runs on the embedded default in a temporary folder; nothing is screened (the queue is not read).

Usage: python bench/upload_memory.py [--members 40]
"""
import argparse
import io
import sys
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.services import services_of  # noqa: E402
from core.settings import Settings  # noqa: E402
from db.accounts import create_user  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from pneumoscreen.app import create_app  # noqa: E402
from studies.intake import submit_uploads  # noqa: E402
from tests.dicom.factory import dataset, to_bytes  # noqa: E402


def films(count: int, flat_rows: int) -> list[bytes]:
    """DICOM films that compress more the more of their rows are flat (flat_rows of every 16)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        pixels = rng.integers(0, 4096, (512, 512)).astype(np.uint16)
        for offset in range(flat_rows):
            pixels[offset::16] = 0
        out.append(to_bytes(dataset(pixels)))
    return out


def peak(services, user_id: int, uploads: list[tuple[str, bytes]]) -> int:
    tracemalloc.start()
    try:
        submit_uploads(services, uploads, user_id, "api")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env({"PNEUMOSCREEN_DATA_DIR": folder, "SECRET_KEY": "bench"})
        upgrade(settings.database_url)
        app = create_app(settings=settings)
        services = services_of(app)
        services.enqueue = lambda ids: None  # measure the intake alone
        with services.sessions.begin() as session:
            user_id = create_user(session, "bench", "uploader", None).id
        print(f"{'upload':34s} {'request MB':>10s} {'expanded MB':>11s} {'peak MB':>8s} {'peak / request':>14s}")
        for flat in (0, 8, 15):
            members = films(args.members, flat)
            buffer = io.BytesIO()
            with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
                for i, data in enumerate(members):
                    archive.writestr(f"film{i}.dcm", data)
            cases = [(f"{args.members} files, {flat}/16 flat rows", [(f"f{i}.dcm", d) for i, d in enumerate(members)]),
                     (f"zip of them ({flat}/16 flat rows)", [("films.zip", buffer.getvalue())])]
            for label, uploads in cases:
                size = sum(len(data) for _, data in uploads)
                used = peak(services, user_id, uploads)
                expanded = sum(len(d) for d in members)
                print(f"{label:34s} {size / 2**20:10.1f} {expanded / 2**20:11.1f} {used / 2**20:8.1f} "
                      f"{used / size:14.2f}")


if __name__ == "__main__":
    main()
