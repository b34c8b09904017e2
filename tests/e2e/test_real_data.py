"""The ISL real-data example and ablation run end to end (a few steps; ../shared/data needed)."""

from __future__ import annotations

import importlib.util
import math
import runpy
import sys

import pytest
from conftest import ROOT, SHARED

import zarrstain

ISL = SHARED / "data" / "isl_condition_blue"
pytestmark = pytest.mark.skipif(not ISL.is_dir(), reason=f"the ISL data ({ISL}) is absent")


def test_isl_example_trains_predicts_and_evaluates(tmp_path, monkeypatch, capsys):
    out = tmp_path / "isl"
    monkeypatch.setattr(sys, "argv", ["example", str(out), "--steps", "2", "--data", str(ISL)])
    runpy.run_path(str(ROOT / "examples" / "isl_phase_to_dapi.py"), run_name="__main__")
    image = zarrstain.open_image(out / "isl.zarr")
    labels = list(image.c.values)
    assert labels[:13] == [f"phase z{i:02d}" for i in range(13)]
    assert labels[-3:] == ["DAPI (predicted)", "MAP2 (predicted)", "NFH (predicted)"]
    table = (out / "isl-evaluation.md").read_text()
    for stain in ("DAPI", "MAP2", "NFH"):
        assert f"| {stain} |" in table
        assert (out / f"evaluation-{stain}" / "panels" / "image.png").is_file()
    assert "pcc" in capsys.readouterr().out


@pytest.mark.slow
def test_isl_uncertainty_example_calibrates_and_reports_coverage(tmp_path, monkeypatch, capsys):
    out = tmp_path / "islu"
    args = [str(out), "--steps", "2", "--bins", "8", "--alphas", "0.1", "--data", str(ISL)]
    monkeypatch.setattr(sys, "argv", ["example", *args])
    runpy.run_path(str(ROOT / "examples" / "isl_uncertainty.py"), run_name="__main__")
    table = (out / "isl-uncertainty.md").read_text()
    for head in ("bins", "quantiles"):
        for stain in ("DAPI", "MAP2", "NFH"):
            assert f"| {head} | {stain} |" in table
            panel = out / f"evaluation-{head}-{stain}" / "panels" / "image.png"
            assert panel.is_file()
        assert (out / f"curve-{head}" / "calibration.png").is_file()
        predicted = zarrstain.open_image(out / f"predicted-{head}.zarr")
        assert "DAPI (predicted) upper" in list(predicted.c.values)
    assert "coverage calibrated" in capsys.readouterr().out


def test_isl_ablation_variant_reports_both_halves():
    spec = importlib.util.spec_from_file_location(
        "isl_ablation", ROOT / "benchmarks" / "isl_ablation.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    settings = {"steps": 2, "bs": 2, "patch": 64, "down": 2, "ema": 0.99, "aug": "d4scale"}
    settings["loss"] = "ce"  # the binned output's mean is the prediction
    row = bench.run_variant("smoke", settings, ISL)
    for stain in bench.STAINS:
        for half in ("right", "left"):
            assert -1 <= row[f"{stain} {half}"] <= 1 and math.isfinite(row[f"{stain} {half}"])
    assert row["steps"] == 2 and row["down"] == 2


@pytest.mark.slow  # about 20 s on 2 cores
def test_viscy_finetune_example_trains_on_the_real_well_and_exports(tmp_path, monkeypatch):
    import json

    out = tmp_path / "viscy"
    monkeypatch.setattr(sys, "argv", ["example", "--out", str(out), "--quick"])
    runpy.run_path(str(ROOT / "examples" / "viscy_finetune.py"), run_name="__main__")
    result = json.loads((out / "viscy_finetune.json").read_text())
    assert len(result["rows"]) == 2
    assert all(math.isfinite(r[s]) for r in result["rows"] for s in ("DAPI", "MAP2"))
    tuned = zarrstain.load_model(out / "fcmae-tuned.ckpt")  # VisCy's layout, read back
    assert tuned.architecture == "viscy" and len(tuned.output_labels) == 2
