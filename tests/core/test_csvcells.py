"""CSV cells a spreadsheet would run as formulas are defused, in every export."""
import csv
import io

import pytest

from core.csvcells import csv_text, safe_cell


@pytest.mark.parametrize("value", ["=1+1", "+cmd", "-2", "@SUM(A1)", "\tx", "\rx"])
def test_formula_starts_get_a_quote(value):
    assert safe_cell(value) == "'" + value


@pytest.mark.parametrize("value, text", [(None, ""), (3, "3"), (0.5, "0.5"), ("film.png", "film.png")])
def test_plain_values_are_kept(value, text):
    assert safe_cell(value) == text


def test_every_cell_of_a_document_is_safe():
    rows = list(csv.reader(io.StringIO(csv_text(["a", "b"], [["=x", "ok"], [None, "@y"]]))))
    assert rows == [["a", "b"], ["'=x", "ok"], ["", "'@y"]]
