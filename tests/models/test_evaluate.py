"""evaluate_folder and `pneumoscreen evaluate` on a tiny labelled folder with the tiny bundle."""
import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from training.evaluate import evaluate_folder, format_report


@pytest.fixture
def labelled(tmp_path):
    rng = np.random.default_rng(2)
    for label, count in (("NORMAL", 3), ("PNEUMONIA", 4)):
        (tmp_path / label).mkdir()
        for i in range(count):
            pixels = (rng.random((80, 96)) * 255).astype(np.uint8)
            Image.fromarray(pixels).save(tmp_path / label / f"{label.lower()}{i}.png")
    return tmp_path


def test_evaluate_counts_every_image(labelled, tiny_screener):
    metrics = evaluate_folder(labelled, tiny_screener)
    c = metrics["confusion"]
    assert metrics["n"] == 7 and c["tn"] + c["fp"] == 3 and c["tp"] + c["fn"] == 4
    # The tiny bundle calls everything NORMAL inside its flag band: every FN and NORMAL call flagged.
    assert c["fn"] == 4 and metrics["fn_flagged_share"] == 1.0 and metrics["normal_calls_flagged_share"] == 1.0
    assert metrics["by_reason"]["near_threshold"]["normal_calls_share"] == 1.0
    assert metrics["out_of_scope_share"] == 0.0
    assert "sensitivity 0.0000" in format_report(metrics)


@pytest.mark.slow  # screens a labelled folder through the CLI
def test_cli_evaluate_text_and_json(labelled, tiny_bundle, monkeypatch, tmp_path):
    from pneumoscreen.cli import main

    monkeypatch.setenv("PNEUMOSCREEN_WEIGHTS_DIR", str(tiny_bundle))
    monkeypatch.setenv("PNEUMOSCREEN_DATA_DIR", str(tmp_path / "var"))
    result = CliRunner().invoke(main, ["evaluate", str(labelled), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 7
    text = CliRunner().invoke(main, ["evaluate", str(labelled)])
    assert text.exit_code == 0 and "AUC" in text.output and "confusion" in text.output
    (labelled / "NORMAL" / "x").mkdir()
    missing = CliRunner().invoke(main, ["evaluate", str(labelled / "NORMAL")])
    assert missing.exit_code != 0 and "missing class folder" in missing.output
