"""Intervals end to end through the CLI: train a quantiles head, calibrate, predict, evaluate."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from zarrstain.cli.main import cli

from zarrstain import datasets

CAL = ["A/1/0", "A/2/0", "A/3/0"]
HELD_OUT = ["B/1/0", "B/2/0"]


def run(*args):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def _scenes(flag, scenes):
    return [a for s in scenes for a in (flag, s)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("intervals")
    plate = datasets.make_plate(
        base / "plate.zarr", rows=("A", "B"), columns=("1", "2", "3"), fields=1,
        shape=(1, 2, 64, 64), seed=8,
    )  # fmt: skip
    run(
        "train", plate, "--input", "BF", "--target", "DNA", "--model", "fnet2d", "--depth", "2",
        "--mult-chan", "8", "--steps", "60", "--patch", "32x32", "--batch-size", "8",
        "--head", "quantiles", "--alpha", "0.2", "--val-scene", "B/3/0", "--out", base / "m",
    )  # fmt: skip
    return plate, base


def test_calibrate_predict_evaluate(trained):
    plate, base = trained
    done = run(
        "calibrate", plate, "--model", base / "m", *_scenes("--scene", CAL), "--alpha", "0.2",
        "--out", base / "calibrated",
    )  # fmt: skip
    assert "calibrated model:" in done.output and "cqr, alpha 0.2" in done.output
    run("predict", plate, "--model", base / "calibrated", *_scenes("--scene", HELD_OUT))
    report = run(
        "evaluate", plate, "--prediction", "DNA (predicted)", "--target", "DNA",
        *_scenes("--scene", HELD_OUT), "--out", base / "evaluation", "--json",
    )  # fmt: skip
    rows = json.loads(report.output)["rows"]
    assert {"coverage", "interval_width"} <= set(rows[0])
    # scenes the calibration never saw: near the nominal 0.8 (a 60-step model, 2 scenes)
    covered = sum(r["coverage"] for r in rows) / len(rows)
    assert 0.65 < covered < 0.95, rows
    assert (base / "evaluation" / "panels" / "B_1_0.png").is_file()


def test_calibration_curve(trained):
    plate, base = trained
    out = base / "curve"
    done = CliRunner().invoke(
        cli,
        [
            "evaluate", str(plate), "--target", "DNA", *_scenes("--scene", HELD_OUT),
            "--calibration-curve", "--model", str(base / "m"),
            *_scenes("--calibration-scene", CAL), "--alphas", "0.2,0.5", "--out", str(out),
        ],
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    rows = list(csv.DictReader((out / "calibration.csv").open()))
    assert [float(r["nominal"]) for r in rows] == [0.8, 0.5]
    assert all(abs(float(r["calibrated"]) - float(r["nominal"])) < 0.15 for r in rows)
    assert (out / "calibration.png").stat().st_size > 1000
    bad = CliRunner().invoke(cli, ["evaluate", str(plate), "--target", "DNA",
                                   "--calibration-curve"])  # fmt: skip
    assert bad.exit_code != 0 and "--calibration-curve needs --model" in bad.output
