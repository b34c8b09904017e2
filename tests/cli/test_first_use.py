"""What a new user hits first, through the CLI: each test failed before the first-use fixes.

Repeats however the path is typed, trained models never silently replaced, ``--time`` per
scene, options checked before any work (one ``error:`` line, no traceback), advice that keeps
normalized predictions, messages that name CLI flags, ``-q`` / ``-v`` / batch-job progress, and
stores other writers write. After every refused command the store is byte-identical.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import tree_digest
from zarrstain.cli.main import cli

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ChannelExistsError, ParameterError
from zarrstain.testing import random_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return zarrstain.save_model(random_model(seed=7), tmp_path_factory.mktemp("m") / "nuclei")


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def refused(result, *fragments: str) -> str:
    """The one ``error:`` line of a refused command (exit 1, no traceback)."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not an escaped error
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    assert "unexpected" not in errors[0], errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def test_repeat_is_recognised_however_the_path_is_spelled(make_store, model_dir, monkeypatch):
    src = make_store("image", "0.5")
    monkeypatch.chdir(src.parent)
    first = run("predict", src.name, "--model", model_dir, "--dtype", "uint16", "--rescale")
    assert first.exit_code == 0, first.output
    after = tree_digest(src)
    for spelling in (f"./{src.name}/", f"{src.parent}//{src.name}", f"{src}/", str(src)):
        again = run("predict", spelling, "--model", model_dir, "--dtype", "uint16", "--rescale")
        assert again.exit_code == 0, (spelling, again.output)
        assert ": unchanged" in again.output, (spelling, again.output)
    assert tree_digest(src) == after
    record = zarr.open_group(src).attrs["zarrstain"]["channels"]["DNA (predicted)"]
    assert src.resolve().as_posix() in json.dumps(record)  # provenance names the resolved store


def test_train_never_replaces_a_model_silently(make_store, tmp_path):
    plate = make_store("plate", "0.5")
    out = zarrstain.save_model(random_model(seed=1), tmp_path / "mine")
    before = tree_digest(out)
    args = ["train", plate, "--input", "BF", "--target", "DNA", "--out", out, "--model", "fnet2d"]
    args += ["--depth", "2", "--mult-chan", "4", "--patch", "16x16", "--steps", "2"]
    refused(run(*args), "already holds a trained model", "--overwrite", "--resume")
    assert tree_digest(out) == before
    with pytest.raises(ParameterError, match=r"overwrite=True"):
        zarrstain.train(plate, zarrstain.training.TrainConfig(["BF"], ["DNA"]), out)
    assert tree_digest(out) == before
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "notes.txt").write_text("keep me")
    refused(run(*args[:7], tmp_path / "data", *args[8:]), "not a model package")
    replaced = run(*args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert zarrstain.load_model(out).kwargs["ndim"] == 2  # the new 2D model


@pytest.fixture
def uneven_plate(tmp_path):
    """A plate whose wells hold 4 and 2 time points."""
    path = datasets.make_plate(
        tmp_path / "uneven.zarr", rows=("A",), columns=("1", "2"), fields=1, shape=(4, 4, 33, 30)
    )
    datasets.make_image(path / "A" / "2" / "0", shape=(2, 4, 33, 30), seed=5)
    return path


def test_time_is_resolved_per_scene(uneven_plate, model_dir, tmp_path):
    before = tree_digest(uneven_plate)
    out = tmp_path / "pred.zarr"
    result = run("predict", uneven_plate, "--model", model_dir, "--time", "1:", "--out", out)
    assert result.exit_code == 0, result.output
    records = {
        s: zarr.open_group(out / s).attrs["zarrstain"]["channels"]["DNA (predicted)"]
        for s in ("A/1/0", "A/2/0")
    }
    assert records["A/1/0"]["time_points"] == [[1, 4]]
    assert records["A/2/0"]["time_points"] == [[1, 2]]
    # a stop beyond a short scene: that scene gets what it has, with a warning
    cut = run(
        "predict",
        uneven_plate,
        "--model",
        model_dir,
        "--time",
        "0:3",
        "--out",
        out.parent / "cut.zarr",
    )
    assert cut.exit_code == 0, cut.output
    assert "1 scene(s) have fewer time points" in cut.output and "A/2/0 (0:2)" in cut.output
    # a start beyond a scene names the scene and the way out
    refused(
        run("predict", uneven_plate, "--model", model_dir, "--time", "2:", "--out", out),
        "scene 'A/2/0' has 2 time point(s)",
        "--scene",
    )
    refused(run("predict", uneven_plate, "--model", model_dir, "--time", "5:2"), "is empty")
    refused(run("predict", uneven_plate, "--model", model_dir, "--time", "1:1"), "exclusive")
    refused(run("predict", uneven_plate, "--model", model_dir, "--time", "a:b"), "T0:T1")
    assert tree_digest(uneven_plate) == before


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--patch", "32x64"], ["--patch 32x64 has 2 size(s)", "fnet3d model needs 3"]),
        (["--patch", "20x20", "--model", "fnet2d"], ["multiple of 16", "use 32x32"]),
        (["--batch-size", "0"], ["--batch-size must be a whole number ≥ 1"]),
        (["--steps", "-3"], ["--steps must be"]),
        (["--lr", "0"], ["--lr must be a positive number"]),
        (["--val-fraction", "1.5"], ["--val-fraction must be between 0 and 1"]),
        (["--depth", "0"], ["--depth must be"]),
        (["--scene", "Q/1/0"], ["none of the scenes ['Q/1/0']", "available: A/1/0"]),
        (["--input", "Phase"], ["'Phase' is not in scene"]),
    ],
)
def test_train_options_are_checked_before_any_work(make_store, tmp_path, extra, fragments):
    plate = make_store("plate", "0.5")
    before = tree_digest(plate)
    args = ["train", plate, "--target", "DNA", "--out", tmp_path / "m", *extra]
    if "--input" not in extra:
        args += ["--input", "BF"]
    refused(run(*args), *fragments)
    assert not (tmp_path / "m").exists() and tree_digest(plate) == before


def test_no_command_ends_in_a_traceback(make_store, model_dir, tmp_path):
    plate = make_store("plate", "0.5")
    before = tree_digest(plate)
    afile = tmp_path / "afile"
    afile.write_text("not a store")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('steps = "many"\n')
    predict = ["predict", plate, "--model", model_dir]
    train = ["train", plate, "--input", "BF", "--target", "DNA", "--out", tmp_path / "m"]
    cases = [
        ([*predict, "--block-memory", "lots", "--dry-run"], "block memory 'lots' is not a size"),
        ([*predict, "--dtype", "foo", "--out", tmp_path / "o.zarr"], "dtype 'foo' is not"),
        ([*predict, "--dtype", "complex64", "--out", tmp_path / "o.zarr"], "--dtype"),
        ([*predict, "--workers", "0"], "--workers must be at least 1"),
        ([*predict, "--threads-per-worker", "0"], "--threads-per-worker must be at least 1"),
        ([*predict, "--scheduler-file", tmp_path / "none.json"], "no scheduler file"),
        ([*predict, "--out", afile], "exists and is not a zarr store; choose a new path"),
        ([*predict, "--out", afile, "--dry-run"], "choose a new path for --out"),
        (["predict", afile, "--model", model_dir], "is not a zarr group"),
        (["predict", plate, "--model", afile], "not a model zarrstain can load"),
        (["info", "http://127.0.0.1:9/plate.zarr"], "cannot reach http://127.0.0.1:9/plate.zarr"),
        (
            ["evaluate", plate, "--prediction", "DNA", "--target", "BF", "--out", afile],
            "is a file; choose a folder for the evaluation (--out)",
        ),
        (["demo", afile], "is a file; choose a folder for the demo"),
        (
            [*train, "--config", bad_toml],
            "--steps must be a whole number ≥ 1, not 'many'",
        ),
        ([*train, "--patch", "32 by 64"], "--patch '32 by 64' is not a size like 32x64x64"),
        ([*predict, "--dtype", "uint16", "--dtype", "x=uint8"], "--dtype LABEL=DTYPE"),
    ]
    for args, fragment in cases:
        refused(run(*args), fragment)
    assert tree_digest(plate) == before and afile.read_text() == "not a store"


def test_normalized_predictions_are_not_rounded_away(make_store, model_dir, tmp_path):
    src = make_store("image", "0.5")  # uint16; the random model predicts normalized units
    before = tree_digest(src)
    line = refused(run("predict", src, "--model", model_dir), "normalized units")
    assert line.index("--out") < line.index("--dtype uint16 --rescale")  # --out first
    assert "=" not in line.split("normalized units")[1]  # flags, not Python keywords
    assert tree_digest(src) == before
    refused(
        run("predict", src, "--model", model_dir, "--rescale", "--out", tmp_path / "f.zarr"),
        "integer dtype",
    )
    warned = run("predict", src, "--model", model_dir, "--dtype", "uint16", "--dry-run")
    assert warned.exit_code == 0 and "negative values become 0" in warned.output
    assert "--rescale" in warned.output
    done = run("predict", src, "--model", model_dir, "--dtype", "uint16", "--rescale")
    assert done.exit_code == 0, done.output
    record = zarr.open_group(src).attrs["zarrstain"]["channels"]["DNA (predicted)"]
    scale, offset = record["rescale"]["scale"], record["rescale"]["offset"]
    stored = zarrstain.open_image(src).sel(c=["DNA (predicted)"]).values.astype(np.float64)
    model = zarrstain.load_model(model_dir)
    expected = zarrstain.predict(zarrstain.open_image(src).sel(c=["BF"]), model).values
    np.testing.assert_allclose(stored * scale + offset, expected, atol=scale)
    assert np.mean(stored == 0) < 0.01  # rounding normalized units left most voxels at 0


def test_cli_messages_name_flags_python_messages_keywords(make_store, model_dir, tmp_path):
    src = make_store("plate", "0.5")
    args = ["predict", src, "--model", model_dir, "--scene", "A/1/0", "--dtype", "uint16"]
    assert run(*args).exit_code == 0
    before = tree_digest(src)
    line = refused(run(*args, "--halo", "exact"), "already exists", "--overwrite")
    assert "overwrite=True" not in line and "--output-label" in line
    with pytest.raises(ChannelExistsError, match=r"overwrite=True"):
        zarrstain.engine.pipeline.plan_prediction(
            src, model_dir, scenes="A/1/0", halo="exact", dtype="uint16", rescale=True
        )
    unnamed = zarrstain.save_model(random_model(seed=2, input_labels=("a",)), tmp_path / "unnamed")
    card = json.loads((unnamed / "card.json").read_text())
    card["input_labels"] = []  # a model that names no inputs, as pytorch_fnet checkpoints
    (unnamed / "card.json").write_text(json.dumps(card))
    line = refused(run("predict", src, "--model", unnamed), "--input-channel NAME")
    assert "input_channels" not in line
    # --copy-channels with an acquired label as the output: the flag to change is named
    refused(
        run(*args, "--out", tmp_path / "o.zarr", "--copy-channels", "--output-label", "DNA"),
        "'DNA' would be both copied and written anew",
        "--output-label",
    )
    # an earlier prediction is not copied: the new one takes its place
    copied = run(*args[:-2], "--out", tmp_path / "o.zarr", "--copy-channels", "--halo", "exact")
    assert copied.exit_code == 0, copied.output
    labels = zarrstain.open_image(tmp_path / "o.zarr", "A/1/0").coords["c"].values.tolist()
    assert labels == ["BF", "DNA", "Membrane", "DNA (predicted)"]
    thin = datasets.make_image(tmp_path / "thin.zarr", shape=(1, 2, 32, 32), seed=1)
    line = refused(run("predict", thin, "--model", model_dir, "--out", tmp_path / "t.zarr"))
    assert "3D model 'fnet'" in line and line.count("fnet") == 1
    assert tree_digest(src) == before


@pytest.mark.slow  # about 30 s on 2 cores: CI runs it, the default suite not
def test_quiet_verbose_and_batch_progress(make_store, model_dir, tmp_path):
    src = make_store("plate", "0.5")
    pred = run("-q", "predict", src, "--model", model_dir, "--dtype", "uint16", "--rescale")
    assert pred.exit_code == 0 and pred.output == ""
    ev = run(
        "-q", "evaluate", src, "--prediction", "DNA (predicted)", "--target", "DNA",
        "--out", tmp_path / "ev",
    )  # fmt: skip
    assert ev.exit_code == 0 and ev.output == ""
    assert (tmp_path / "ev" / "evaluation.csv").is_file()
    # -v: every line once; no TTY (CliRunner): progress as lines
    for extra in ([], ["--workers", "1"]):
        out = tmp_path / f"v{len(extra)}.zarr"
        verbose = run("-v", "predict", src, "--model", model_dir, "--out", out, *extra)
        assert verbose.exit_code == 0, verbose.output
        lines = [line for line in verbose.output.splitlines() if line.strip()]
        assert len(lines) == len(set(lines)), "\n".join(lines)
        assert sum("running on http" in line for line in lines) == len(extra) // 2
    # (on a cluster block events arrive asynchronously: the threaded run's lines are exact)
    verbose = run("predict", src, "--model", model_dir, "--out", tmp_path / "p.zarr")
    assert "predicting blocks: block 8/8 (100%)" in verbose.output, verbose.output
    plate_args = ["--model", "fnet2d", "--depth", "2", "--mult-chan", "4", "--patch", "16x16"]
    trained = run(
        "train", src, "--input", "BF", "--target", "DNA", "--out", tmp_path / "m",
        *plate_args, "--steps", "20", "--batch-size", "2", "--val-scene", "B/2/1",
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    steps = [line for line in trained.output.splitlines() if line.startswith("training: step")]
    # the first step, then one line per tenth (CliRunner is no TTY)
    assert len(steps) == 11 and steps[-1].startswith("training: step 20/20 (100%), loss")
    assert "val r" in steps[-1]


def test_ngff_04_without_version_is_read_with_a_warning(tmp_path, caplog):
    path = datasets.make_image(
        tmp_path / "noversion.zarr", shape=(1, 6, 37, 42), ngff_version="0.4"
    )
    attrs = json.loads((path / ".zattrs").read_text())
    del attrs["multiscales"][0]["version"]  # optional in 0.4 (valid in the spec's own tests)
    (path / ".zattrs").write_text(json.dumps(attrs))
    with caplog.at_level(logging.WARNING, logger="zarrstain"):
        image = zarrstain.open_image(path)
        zarrstain.open_image(path)
    assert image.attrs["ngff_version"] == "0.4" and image.coords["c"].values[0] == "BF"
    warnings = [r for r in caplog.records if "without a version" in r.getMessage()]
    assert len(warnings) == 1
    result = run("info", path)
    assert result.exit_code == 0 and "OME-Zarr 0.4" in result.output


def test_dask_style_chunks_tuples(make_store):
    image = zarrstain.open_image(make_store("image", "0.5"))
    model = random_model(seed=3)
    whole = zarrstain.predict(image, model, halo="exact").values
    as_tuple = zarrstain.predict(image, model, halo="exact", chunks=(1, 1, -1, 16, 16))
    np.testing.assert_allclose(as_tuple.values, whole, rtol=0, atol=1e-6 * np.abs(whole).max())
    as_dict = zarrstain.predict(image, model, halo="exact", chunks={"z": 8, "y": 16, "x": 16})
    assert as_tuple.attrs["zarrstain"]["tiling"] == as_dict.attrs["zarrstain"]["tiling"]
    with pytest.raises(ParameterError, match=r"chunks=\(16, 16\)"):
        zarrstain.predict(image, model, chunks=(16, 16))
    with pytest.raises(ParameterError, match="not a block size"):
        zarrstain.predict(image, model, chunks={"y": 0})


def test_written_rdefs_are_complete(make_store):
    src = make_store("image", "0.4")
    attrs = json.loads((src / ".zattrs").read_text())
    attrs["omero"]["rdefs"] = {"model": "color"}  # what zarrstain wrote before
    (src / ".zattrs").write_text(json.dumps(attrs))
    image = zarrstain.open_image(src)
    pred = (image.sel(c=["BF"]) * 2).assign_coords(c=["Twice"])
    zarrstain.write_channels(src, pred, dtype="uint16")
    rdefs = json.loads((src / ".zattrs").read_text())["omero"]["rdefs"]
    assert rdefs == {"model": "color", "defaultT": 0, "defaultZ": image.sizes["z"] // 2}
