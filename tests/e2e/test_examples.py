"""The examples run as users run them."""

from __future__ import annotations

import ast
import runpy
import sys

import numpy as np
import pytest
from conftest import ROOT

import zarrstain

EXAMPLES = ROOT / "examples"


def test_read_and_write_channels_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["example", str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / "read_and_write_channels.py"), run_name="__main__")
    plate = zarrstain.open_image(tmp_path / "out" / "plate.zarr", "A/2/0")
    assert list(plate.c.values)[-1] == "DNA (max projection)"
    new = zarrstain.open_image(tmp_path / "out" / "projections.zarr", "A/2/0")
    assert list(new.c.values) == ["BF", "DNA (max projection)"] and new.dtype == "float32"
    assert "projections.zarr  (OME-Zarr 0.5, plate, 2 scenes)" in capsys.readouterr().out


def test_predict_plate_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["example", str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / "predict_plate.py"), run_name="__main__")
    out = capsys.readouterr().out
    tiling = ast.literal_eval(out.split("blocks:")[1].split("\n")[0].strip())
    assert tiling["blocks"] > 1 and tiling["exact"]  # really cut into blocks, and exact
    assert float(out.split("max |tiled - whole volume| =")[1].split()[0]) < 1e-5
    written = zarrstain.open_image(tmp_path / "out" / "predicted.zarr", "A/2/0")
    assert list(written.c.values) == ["BF", "DNA", "Membrane", "DNA (predicted)"]


def test_custom_architecture_example(tmp_path, monkeypatch, capsys):
    from zarrstain.models import ARCHITECTURES

    saved = dict(ARCHITECTURES)
    monkeypatch.setattr(sys, "argv", ["example", str(tmp_path)])
    try:
        runpy.run_path(str(EXAMPLES / "custom_architecture.py"), run_name="__main__")
    finally:
        ARCHITECTURES.clear()
        ARCHITECTURES.update(saved)
    out = capsys.readouterr().out
    assert float(out.split("max |tiled - whole volume| =")[1].split()[0]) < 1e-5
    written = zarrstain.open_image(tmp_path / "predicted.zarr")
    assert list(written.c.values) == ["BF", "DNA (predicted)", "DNA (predicted) std"]
    value = written.sel(c="DNA (predicted)").values
    assert (
        np.array_equal(value, np.round(value)) and (written.sel(c="DNA (predicted) std") > 0).all()
    )


def test_gpu_benchmark_runs_its_steps_on_the_cpu(tmp_path, monkeypatch):
    """CI has no GPU: the script's steps run with --device cpu so they cannot rot unseen."""
    import json

    bench = EXAMPLES.parent / "benchmarks" / "gpu.py"
    argv = ["gpu.py", "--device", "cpu", "--size", "1", "16", "64", "64", "--block", "32"]
    # width 4: float16 convolutions on a CPU take 75 s per forward at width 32 (measured here)
    argv += ["--width", "4"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path)])
    runpy.run_path(str(bench), run_name="__main__")
    report = json.loads((tmp_path / "gpu.json").read_text())
    rows = report["rows"]
    assert {r["precision"] for r in rows} == {"float32", "tf32", "bfloat16", "float16"}
    exact = [r for r in rows if r["method"].startswith("zarrstain") and r["precision"] == "float32"]
    assert exact and all(r["max err (std)"] < 1e-5 for r in exact)
    assert report["store_to_store"]["ratio"] > 0


def test_scale_benchmark_runs_and_reports(tmp_path):
    """benchmarks/scale.py at toy size: every column reported, the outputs written."""
    import json
    import subprocess

    bench = EXAMPLES.parent / "benchmarks" / "scale.py"
    args = [sys.executable, str(bench), "--fields", "4", "--chunks", "32", "--models",
            "identity", "fnet", "--side", "64", "--repeat", "1",
            "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads((tmp_path / "scale.json").read_text())
    assert [(r["model"], r["fields"], r["chunks"]) for r in rows] == [
        ("identity", 4, "32"),
        ("fnet", 4, "32"),
    ]
    for row in rows:
        assert row["tasks/field"] > 0 and row["plan+run s"] > 0 and row["loop s"] > 0
        # one zarrstain/loop pair: its ratio is the median and both ends of the range
        assert row["repeats"] == 1 and row["device"] == "cpu"
        assert row["÷ loop range"] == f"{row['÷ loop']:.2f}–{row['÷ loop']:.2f}"
    assert (tmp_path / "scale.md").read_text().startswith("| fields")


def test_evaluation_benchmark_runs_and_reports(tmp_path):
    """benchmarks/evaluation.py at toy size: every step timed against the prediction."""
    import json
    import subprocess

    bench = EXAMPLES.parent / "benchmarks" / "evaluation.py"
    args = [sys.executable, str(bench), "--fields", "4", "--side", "64", "--out", str(tmp_path)]
    subprocess.run(args, check=True, capture_output=True, text=True, timeout=300)
    report = json.loads((tmp_path / "evaluation.json").read_text())
    steps = [r["step"] for r in report["rows"]]
    assert steps == ["predict", "pixels", "objects", "objects + labels"]
    assert all(r["seconds"] > 0 and r["÷ predict"] > 0 for r in report["rows"])
    assert report["rows"][2]["objects/field"] > 0
    assert not (tmp_path / "work").exists()  # the plate is removed after the run


@pytest.mark.slow  # about 30 s on 2 cores: CI runs it, the default suite not
def test_class_guided_diffusion_example_runs_quickly(tmp_path, monkeypatch):
    """Every model and prediction of the README's diffusion table, a few steps each."""
    import json

    monkeypatch.setattr(sys, "argv", ["example", "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(EXAMPLES / "class_guided_diffusion.py"), run_name="__main__")
    result = json.loads((tmp_path / "class_guided_diffusion.json").read_text())
    assert len(result["summary"]) == 6 and len(result["rows"]) == 6 * 8
    assert all(np.isfinite(r["pcc"]) for r in result["rows"])


@pytest.mark.slow  # about 30 s on 2 cores: CI runs it, the default suite not
def test_assay_evaluation_example_runs_quickly(tmp_path, monkeypatch):
    """Every stain of the README's assay table, a few training and sampling steps each."""
    import json

    monkeypatch.setattr(sys, "argv", ["example", "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(EXAMPLES / "assay_evaluation.py"), run_name="__main__")
    result = json.loads((tmp_path / "assay_evaluation.json").read_text())
    stains = [r["stain"] for r in result["rows"]]
    assert stains == ["real", "fnet", "diffusion, right class", "diffusion, wrong class"]
    real = result["rows"][0]
    assert real["f1"] == 1.0 and real["kid"] == 0.0 and real["z_prime"] > 0
    assert result["fields_evaluated"] == 24
    assert (tmp_path / "assay_evaluation.md").read_text().startswith("| stain | Z′")


@pytest.mark.slow  # about 30 s on 2 cores: CI runs it, the default suite not
def test_few_shot_control_example(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        sys, "argv", ["example", str(tmp_path), "--steps", "3", "--backbone-steps", "3"]
    )
    runpy.run_path(str(EXAMPLES / "few_shot_control.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "CQR margin:" in out and "denoising (one field)" in out
    written = zarrstain.open_image(tmp_path / "plate.zarr", "C/1/0")
    assert list(written.c.values)[-3:] == [f"DNA (predicted){s}" for s in ("", " lower", " upper")]
    assert (tmp_path / "evaluation" / "evaluation.csv").is_file()
    card = zarrstain.load_model(tmp_path / "branch-staining-calibrated")
    assert card.head.calibration.sampling == {"sampler": "ddim", "steps": 10}


def test_bioimageio_package_example(tmp_path, monkeypatch, capsys):
    pytest.importorskip("bioimageio.core")
    monkeypatch.setattr(sys, "argv", ["example", str(tmp_path / "out")])
    runpy.run_path(str(EXAMPLES / "bioimageio_package.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "test_model: passed" in out
    assert "channels written: ['DNA (predicted)']; max |package - original| = 0" in out


@pytest.mark.slow  # about 15 s on 2 cores
def test_unpaired_example_runs_quickly(tmp_path, monkeypatch):
    """The README's unpaired table: paired fnet and CycleGAN, evaluated on held-out wells."""
    import json

    monkeypatch.setattr(sys, "argv", ["example", "--quick", "--out", str(tmp_path)])
    runpy.run_path(str(EXAMPLES / "unpaired.py"), run_name="__main__")
    result = json.loads((tmp_path / "unpaired.json").read_text())
    assert [r["training"].split()[0] for r in result["rows"]] == ["paired", "unpaired"]
    assert all(len(r["pcc_fields"]) == 4 and np.isfinite(r["pcc"]) for r in result["rows"])
    assert (tmp_path / "unpaired.md").read_text().startswith("| training | held-out PCC")
