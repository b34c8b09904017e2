"""The command line: info, --version, demo, and one-line errors with a non-zero exit."""

from __future__ import annotations

import json

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
    assert "z=1 micrometer, y=0.25 micrometer" in out
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


def test_demo(tmp_path):
    result = CliRunner().invoke(cli, ["demo", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    assert "plate, 12 scenes" in result.output
    assert "channels: BF, DNA, Membrane, DNA (smoothed)" in result.output
    scenes = zarrstain.open_scenes(tmp_path / "demo" / "plate.zarr")
    assert all(list(s.c.values)[-1] == "DNA (smoothed)" for s in scenes.values())
