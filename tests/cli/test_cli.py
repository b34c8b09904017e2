"""The command line: info, --version, demo, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from zarrstain.cli.main import cli

import zarrstain


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and zarrstain.__version__ in result.output


def test_info_text(make_store):
    path = make_store("plate", "0.4")
    result = CliRunner().invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "(OME-Zarr 0.4, plate, 8 scenes)" in out
    assert "'B/2/1'  t=1 c=3 z=4 y=33 x=30  uint16" in out
    assert "channels: BF, DNA, Membrane" in out
    assert "chunks:   t=1 c=1 z=4 y=32 x=30" in out
    assert "z=2 micrometer, y=0.65 micrometer" in out
    assert "levels:   s0 1x3x4x33x30; s1 1x3x4x16x15" in out


def test_info_json_lists_written_channels(make_store):
    path = make_store("image", "0.5")
    image = zarrstain.open_image(path)
    pred = (image.sel(c=["DNA"]) * 1).assign_coords(c=["DNA copy"])
    zarrstain.write_channels(path, pred)
    result = CliRunner().invoke(cli, ["info", "--json", str(path)])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["layout"] == "image" and info["ngff_version"] == "0.5"
    (scene,) = info["scenes"]
    assert scene["id"] == "" and scene["axes"] == "tczyx" and scene["dtype"] == "uint16"
    assert scene["channels"] == ["BF", "DNA", "Membrane", "DNA copy"]
    assert scene["shape"] == [2, 4, 6, 37, 42]
    assert "DNA copy" in scene["zarrstain"]["channels"]


def test_bad_input_gives_one_line_and_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "missing.zarr")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: no such store: '{tmp_path / 'missing.zarr'}'; check the path"
    ]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_demo_trains_predicts_and_evaluates(demo_run):
    """The README's main command: held-out Pearson r ≥ 0.85 (about 2.5 minutes on 2 cores)."""
    import csv

    result, folder = demo_run
    assert result.exit_code == 0, result.output
    scenes = zarrstain.open_scenes(folder / "plate.zarr")
    assert len(scenes) == 6
    # "DNA (predicted)" and, should the README test have run first, its "DNA (fnet)"
    assert all("DNA (predicted)" in s.c.values for s in scenes.values())
    with open(folder / "evaluation.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["scene"] for r in rows} == {"A/3/0", "B/3/0"}  # the held-out wells
    assert min(float(r["pcc"]) for r in rows) >= 0.85
    assert (folder / "panels" / "A_3_0.png").is_file()
    assert "mean" in result.output
    assert zarrstain.load_model(folder / "model").output_labels == ("DNA (predicted)",)
