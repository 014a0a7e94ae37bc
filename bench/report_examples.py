"""Example DICOM SR and Secondary Capture of a real film's study result, written where you say, for people to open.

A real DICOM film goes through the real intake and the shipped models on the embedded default in a temporary
folder, then studies.dicom_reports makes its SR (and its SC when the result has a deciding image). The shared
films are adult chest films, which the service calls out of scope: their SR says so and there is no SC. The
"in-scope demo" files show the same film as if it were in scope (the film's own probability, call and
heatmap), so the SC and the SR's coded call can be looked at; they are examples, not results. Nothing is
written into the repository.

Usage: python bench/report_examples.py [OUT_DIR] [--film PATH] [--decision pneumonia|normal|unreadable]
"""
import argparse
import sys
import tempfile
from pathlib import Path

from PIL import Image
from sqlalchemy import select

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.services import services_of  # noqa: E402
from core.settings import Settings  # noqa: E402
from db.accounts import create_user  # noqa: E402
from db.migrate import upgrade  # noqa: E402
from db.models import Study, StudyResult  # noqa: E402
from pneumoscreen.app import create_app  # noqa: E402
from studies.dicom_reports import secondary_capture, structured_report, to_bytes  # noqa: E402
from studies.intake import submit_uploads  # noqa: E402
from worker import pipeline  # noqa: E402

FILM = ROOT.parent / "shared" / "data" / "dicom" / "RG1_J2KI.dcm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("/tmp/pneumoscreen-examples"))
    parser.add_argument("--film", type=Path, default=FILM)
    parser.add_argument("--decision", choices=["pneumonia", "normal", "unreadable"],
                        help="also record a reviewer's decision: the demo SR is then final and verified")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings.from_env({"PNEUMOSCREEN_DATA_DIR": folder, "SECRET_KEY": "bench"})
        upgrade(settings.database_url)
        app = create_app(settings=settings)
        services = services_of(app)
        services.enqueue = lambda ids: None  # screened right here, below
        with services.sessions.begin() as session:
            uploader = create_user(session, "bench", "uploader", None).id
            reviewer = create_user(session, "reviewer", "reviewer", None).id
        batch, rejected, _ = submit_uploads(services, [(args.film.name, args.film.read_bytes())], uploader, "api")
        if batch is None:
            sys.exit(f"{args.film} was refused: {rejected}")
        with services.sessions() as session:
            image_id = session.scalar(select(Study.id).where(Study.batch_id == batch.id))
        screener = pipeline.load_screener(settings)
        pipeline.run_batch(services.sessions, services.storage, screener, [image_id])
        with services.sessions.begin() as session:
            image = session.get(Study, image_id)
            result = image.study_result
            print(f"{args.film.name}: {result.scope}, call {result.call}, status {result.status} v{result.version}")
            written = _write(session, services, result, args.out, "as-screened")
            _as_in_scope(result, image, reviewer, args.decision)
            written += _write(session, services, result, args.out, "in-scope-demo")
            session.rollback()  # the demo changes stay out of the (temporary) database
    print("\n".join(str(path) for path in written))


def _as_in_scope(result: StudyResult, image: Study, reviewer: int, decision: str | None) -> None:
    prediction = image.prediction
    result.scope, result.call, result.decided_by_image_id = "in_scope", prediction.prediction, image.id
    result.probability, result.threshold = prediction.probability, prediction.threshold
    result.version += 1
    if decision:
        result.status, result.review_decision, result.reviewer_id = "corrected", decision, reviewer


def _write(session, services, result: StudyResult, out: Path, label: str) -> list[Path]:
    paths = [out / f"sr-{label}.dcm"]
    paths[0].write_bytes(to_bytes(structured_report(session, services.storage, result)))
    capture = secondary_capture(session, services.storage, result)
    if capture is not None:
        paths += [out / f"sc-{label}.dcm", out / f"sc-{label}.png"]
        paths[1].write_bytes(to_bytes(capture))
        Image.fromarray(capture.pixel_array).save(paths[2])
    return paths


if __name__ == "__main__":
    main()
