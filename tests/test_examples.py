"""The examples run as users run them."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import zarrstain

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
    assert float(out.split("max |tiled - whole volume| =")[1].split()[0]) < 1e-5
    written = zarrstain.open_image(tmp_path / "out" / "predicted.zarr", "A/2/0")
    assert list(written.c.values) == ["BF", "DNA", "Membrane", "DNA (predicted)"]
