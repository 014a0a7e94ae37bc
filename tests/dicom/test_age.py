"""Adults are out of scope: the age comes from PatientAge, or from birth and study dates."""
import pytest

from db.models import ReviewFlag, Study
from models.dicom import header_meta
from studies.reviews import explain_flag
from studies.scope import age_years, readable, scope_reasons
from tests.dicom.factory import chest_pixels, dataset, to_bytes
from tests.helpers import data_dir


@pytest.mark.parametrize("value,years", [("004Y", 4), ("018M", 1.5), ("052W", 52 / 52.18), ("010D", 10 / 365.25),
                                         ("4Y", None), ("", None), (None, None), ("04XY", None)])
def test_dicom_age_strings(value, years):
    assert age_years(value) == (pytest.approx(years) if years is not None else None)


def test_age_is_derived_from_dates_when_the_header_has_none():
    ds = dataset(chest_pixels())
    del ds.PatientAge
    ds.PatientBirthDate, ds.StudyDate = "19400305", "20040826"
    assert header_meta(to_bytes(ds)).patient_age == "064Y"
    ds.PatientBirthDate = "20040301"
    assert header_meta(to_bytes(ds)).patient_age == "005M"
    ds.PatientBirthDate = "not a date"
    assert header_meta(to_bytes(ds)).patient_age is None


def test_adult_frontal_film_is_out_of_scope_and_a_child_keeps_the_model_flag():
    adult = Study(modality="CR", view_position="PA", patient_age="064Y")
    child = Study(modality="CR", view_position="PA", patient_age="004Y")
    unknown = Study(modality="CR", view_position="PA", patient_age=None)
    assert scope_reasons(None, adult, ["near_threshold"]) == ["out_of_scope"] and not readable(adult)
    assert scope_reasons(None, child, ["near_threshold"]) == ["near_threshold"] and readable(child)
    assert scope_reasons(None, unknown, []) == []


def test_reviewers_read_why_a_film_is_out_of_scope():
    adult = Study(modality="CR", view_position="LL", patient_age="064Y", flag=ReviewFlag(reasons=["out_of_scope"]))
    [(reason, text)] = explain_flag(adult)
    assert reason == "out_of_scope"
    assert text.startswith("DICOM header: patient age 64 years (adult); view LL is not frontal.")
    # The pixel gate's out_of_scope (no header cause) and the model's own reasons keep the plain text.
    child = Study(modality=None, view_position=None, patient_age=None,
                  flag=ReviewFlag(reasons=["out_of_scope", "near_threshold"]))
    assert [text.split(" ")[:3] for _, text in explain_flag(child)] == [["The", "film", "does"],
                                                                        ["The", "pneumonia", "probability"]]


def test_the_real_adult_film_with_dates_reads_as_64_years():
    path = data_dir("dicom") / "RG1_J2KI.dcm"
    assert header_meta(path.read_bytes()).patient_age == "064Y"


def test_screen_cli_applies_the_header_rules_file_by_file(tmp_path, tiny_weights):
    import csv
    import io

    from click.testing import CliRunner

    from pneumoscreen.cli import main

    films = {"child.dcm": dataset(chest_pixels()),
             "adult.dcm": dataset(chest_pixels(), PatientAge="070Y"),
             "lateral.dcm": dataset(chest_pixels(), view="LL"),
             "ct.dcm": dataset(chest_pixels(), modality="CT")}
    for name, ds in films.items():
        (tmp_path / name).write_bytes(to_bytes(ds))
    env = {"PNEUMOSCREEN_DATA_DIR": str(tmp_path / "var"), "PNEUMOSCREEN_WEIGHTS_DIR": str(tiny_weights)}

    result = CliRunner().invoke(main, ["screen", str(tmp_path)], env=env)

    assert result.exit_code == 0, result.output
    rows = {row["file"].rsplit("/", 1)[-1]: row for row in csv.DictReader(io.StringIO(result.stdout))}
    for name in ("adult.dcm", "lateral.dcm"):
        row = rows[name]
        assert (row["status"], row["flagged"], row["flag_reason"]) == ("done", "true", "out_of_scope")
    assert rows["ct.dcm"]["status"] == "not_applicable"  # routed as the service routes it: never screened
    assert "out_of_scope" not in rows["child.dcm"]["flag_reason"]
