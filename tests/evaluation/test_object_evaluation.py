"""``evaluate(objects=...)`` over a plate: scores, label images, resume, assays, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from scipy import ndimage as ndi

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ChannelExistsError, ParameterError
from zarrstain.evaluation.evaluate import Assay, evaluate
from zarrstain.evaluation.segment import NUCLEI
from zarrstain.io.labels import LabelWrite, label_names, stored_labels


@pytest.fixture
def plate(tmp_path):
    """The class plate (16 fields, control / translocated) and its class map."""
    return datasets.make_class_plate(tmp_path / "classes.zarr")


def _add(store, label, change, source="DNA"):
    """Write ``change(source pixels, field index)`` as channel ``label`` of every scene."""
    images = zarrstain.open_scenes(store)
    new = {}
    for k, (sid, image) in enumerate(images.items()):
        values = change(image.sel(c=[source]).values.astype(np.float64), k)
        new[sid] = (
            image.sel(c=[source]).copy(data=np.clip(values, 0, 65535)).assign_coords(c=[label])
        )
    zarrstain.write_channels(store, new, dtype="uint16")


def test_real_against_real_scores_one_and_writes_valid_labels(plate, validate):
    store, _ = plate
    events = []
    result = evaluate(store, "DNA", "DNA", objects="nuclei", progress=events.append)
    s = result.summary
    assert s["f1"] == s["mean_ap"] == s["precision"] == s["recall"] == 1.0
    assert s["count_error"] == 0.0 and s["n_true"] > 16
    assert {v for k, v in s.items() if k.startswith("r_")} == {1.0}  # exactly
    assert s["kid"] == 0.0 and s["profile_r"] == pytest.approx(1.0)
    assert all(r["f1"] == 1.0 for r in result.rows)
    assert set(result.objects.side) == {"real", "pred"} and set(result.wells.index) >= {"A/1"}
    assert [e.stage for e in events] == ["evaluate"] * 16 and events[-1].done == 16
    # the objects are an OME-Zarr label image of each field, valid and read by ome-zarr-py
    group = zarr.open_group(store / "A/1/0", mode="r")
    assert label_names(group) == ["DNA nuclei"]
    validate(store)
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    nodes = list(Reader(parse_url(str(store / "A/1/0")))())
    labels = [n for n in nodes if any(isinstance(s, Label) for s in n.specs)]
    assert len(labels) == 1 and labels[0].data[0].shape == (1, 1, 1, 96, 96)


def test_a_prediction_with_lost_nuclei_scores_lower(plate):
    store, _ = plate
    # a virtual stain that is the real one blurred beyond recognition in half of the fields
    _add(store, "DNA (predicted)", lambda a, k: ndi.uniform_filter(a, 25) if k % 2 else a)
    result = evaluate(store, "DNA (predicted)", "DNA", objects="nuclei", labels=False)
    f1 = [r["f1"] for r in result.rows]
    assert f1[0::2] == [1.0] * 8 and max(f1[1::2]) < 1.0
    assert result.summary["kid"] > 0 and result.summary["kid_low"] > 0
    assert label_names(zarr.open_group(store / "A/1/0", mode="r")) == []  # labels=False


def test_label_images_resume_an_interrupted_evaluation(plate, monkeypatch, validate):
    store, _ = plate
    _add(store, "DNA (predicted)", lambda a, k: a * 0.9)
    calls = []

    def counted(image, spacing):
        calls.append(1)
        return NUCLEI(image, spacing)

    finish, finished = LabelWrite.finish, []

    def crash_after_three(self, record):
        if len(finished) >= 6:  # the fourth field's label images are never finished
            raise OSError("disk full")
        finished.append(self.name)
        finish(self, record)

    monkeypatch.setattr(LabelWrite, "finish", crash_after_three)
    with pytest.raises(OSError, match="disk full"):
        evaluate(store, "DNA (predicted)", "DNA", objects=counted)
    monkeypatch.setattr(LabelWrite, "finish", finish)
    calls.clear()
    first = evaluate(store, "DNA (predicted)", "DNA", objects=counted)
    # the fields finished before the crash are read back, not segmented again
    assert 0 < len(calls) <= 2 * (16 - 3)
    calls.clear()
    again = evaluate(store, "DNA (predicted)", "DNA", objects=counted)
    assert calls == [] and again.summary == first.summary
    for sid in zarrstain.open_scenes(store):
        group = zarr.open_group(store / sid, mode="r")
        assert label_names(group) == ["DNA counted", "DNA (predicted) counted"]
        assert len(stored_labels(group, "DNA counted")["fingerprints"]) == 1
    validate(store)


def test_labels_zarrstain_did_not_write_are_never_replaced(plate):
    store, _ = plate
    group = zarr.open_group(store / "A/1/0/labels", mode="a")
    theirs = group.create_array("DNA nuclei", shape=(4,), dtype="uint8")
    theirs[:] = 7
    with pytest.raises(ChannelExistsError, match="was not written by zarrstain"):
        evaluate(store, "DNA", "DNA", objects="nuclei", scenes=["A/1/0"])
    assert list(zarr.open_array(store / "A/1/0/labels/DNA nuclei", mode="r")[:]) == [7] * 4


def test_the_assay_compares_real_and_virtual_stains_side_by_side(plate):
    store, table = plate
    result = evaluate(store, "Membrane", "Membrane", objects="cells", labels=False,
                      assay=Assay(classes=table))  # fmt: skip
    assay = result.assay
    assert (assay["negative"], assay["positive"], assay["groups"]) == (
        "control", "translocated", 16
    )  # fmt: skip
    assert assay["z_prime_real"] == assay["z_prime_pred"] > 0
    assert assay["effect_size_real"] > 2
    with pytest.raises(ParameterError, match="an assay compares objects' features"):
        evaluate(store, "Membrane", "Membrane", assay=Assay(classes=table))
    with pytest.raises(ParameterError, match="controls 'dmso' must name two classes"):
        Assay(classes=table, controls="dmso")
    with pytest.raises(ParameterError, match="needs each scene's class"):
        evaluate(store, "DNA", "DNA", objects="nuclei", labels=False, assay=Assay())


def test_samples_of_a_generative_model_get_their_diversity(plate):
    store, _ = plate
    rng = np.random.default_rng(0)
    for k in range(2):
        _add(store, f"DNA (predicted) sample {k}", lambda a, i: a + rng.normal(0, 50, a.shape))
    _add(store, "DNA (predicted)", lambda a, i: a)
    result = evaluate(store, "DNA (predicted)", "DNA", objects="nuclei", labels=False)
    assert set(result.objects.side) == {"real", "pred", "sample 0", "sample 1"}
    assert np.isfinite(result.summary["kid_samples"])


def test_cli_evaluates_objects_and_the_assay(plate, tmp_path):
    from zarrstain.cli.main import cli

    store, table = plate
    out = tmp_path / "eval"
    args = ["evaluate", str(store), "--prediction", "Membrane", "--target", "Membrane"]
    done = CliRunner().invoke(cli, [*args, "--objects", "cells", "--class-map",
                                    str(table), "--out", str(out)])  # fmt: skip
    assert done.exit_code == 0, done.output
    names = ("evaluation.csv", "summary.csv", "objects.csv", "wells.csv", "plate_f1.png")
    for name in (*names, "evaluation.md"):
        assert (out / name).is_file(), name
    report = (out / "evaluation.md").read_text()
    assert "## Assay" in report and "![f1 per well](plate_f1.png)" in report
    # each field's panel ends with the objects' outlines: green real, magenta predicted
    from PIL import Image

    panel = np.asarray(Image.open(out / "panels" / "A_1_0.png").convert("RGB"))
    last = panel[:, -200:]
    assert ((last == (0, 220, 0)).all(-1)).any() or ((last == (255, 0, 255)).all(-1)).any()
    assert "![A_1_0](panels/A_1_0.png)" in report
    assert "z_prime_real" in done.output
    bad = CliRunner().invoke(cli, [*args, "--objects", "stardist"])
    assert bad.exit_code != 0 and "no segmenter 'stardist'; installed: cells, nuclei" in bad.output


#: napari's OME-Zarr reader plug-in, in an environment of its own (it needs napari)
NAPARI_OME_ZARR = "napari-ome-zarr==0.10.0"

_NAPARI_SCRIPT = r"""
import contextlib, json, sys
from napari_ome_zarr._reader import napari_get_reader

out = {}
for path in json.load(sys.stdin):
    with contextlib.redirect_stdout(sys.stderr):  # the reader prints the metadata it reads
        layers = napari_get_reader(path)(path)
    out[path] = [[kind, str(kw.get("name")), list(data[0].shape)] for data, kw, kind in layers]
json.dump(out, sys.stdout)
"""


@pytest.mark.slow
def test_napari_opens_the_label_images(plate):
    from envs import run_script, tool_python

    store, _ = plate
    evaluate(store, "DNA", "DNA", objects="nuclei", scenes=["A/1/0", "B/2/1"])
    python = tool_python(NAPARI_OME_ZARR)
    paths = [str(store / "A/1/0"), str(store / "B/2/1")]
    found = run_script(python, _NAPARI_SCRIPT, paths)
    for path in paths:
        labels = [layer for layer in found[path] if layer[0] == "labels"]
        assert len(labels) == 1 and labels[0][1].endswith("DNA nuclei"), found[path]
        assert labels[0][2] == [1, 1, 1, 96, 96]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_label_images_validate_in_both_ngff_versions(make_store, validate, version):
    """A plate of either version: ome-zarr-models reads each label image as one."""
    from ome_zarr_models.v04.image_label import ImageLabel as ImageLabel04
    from ome_zarr_models.v05.image_label import ImageLabel as ImageLabel05

    store = make_store("plate", version)
    evaluate(store, "DNA", "DNA", objects="nuclei", scenes=["A/1/0", "B/2/1"])
    validate(store)
    model = ImageLabel05 if version == "0.5" else ImageLabel04
    for sid in ("A/1/0", "B/2/1"):
        group = zarr.open_group(store / sid / "labels" / "DNA nuclei", mode="r")
        label = model.from_zarr(group)
        assert label.attributes  # parsed, image-label and multiscales included
        levels = zarr.open_group(store / sid, mode="r")
        assert label_names(levels) == ["DNA nuclei"]


def test_a_second_acquisition_gives_the_pcc_ceiling(tmp_path):
    from zarrstain.evaluation.metrics import pcc_ceiling

    store = datasets.make_image(tmp_path / "snr.zarr", shape=(1, 2, 48, 48), low_snr=True)
    result = evaluate(store, "DNA", "DNA lowSNR", second_target="DNA lowSNR")
    image = zarrstain.open_image(store)
    low = image.sel(c="DNA lowSNR").values[0]
    assert result.rows[0]["pcc_ceiling"] == pcc_ceiling(low, low) == 1.0
    noisy = evaluate(store, "DNA lowSNR", "DNA", second_target="DNA lowSNR")
    expected = pcc_ceiling(image.sel(c="DNA").values[0], low)
    assert noisy.rows[0]["pcc_ceiling"] == expected and 0 < expected < 1
    assert noisy.summary["pcc_ceiling"] == expected


def test_cli_evaluates_on_worker_processes(plate):
    """--workers 2: the fields' tasks run in other processes; the scores are the same."""
    from zarrstain.cli.main import cli

    store, _ = plate
    args = ["-q", "evaluate", str(store), "--prediction", "DNA", "--target", "DNA",
            "--objects", "nuclei", "--no-labels", "--json", "--scene", "A/1/0",
            "--scene", "B/4/1"]  # fmt: skip
    here = CliRunner().invoke(cli, args)
    there = CliRunner().invoke(cli, [*args, "--workers", "2"])
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    import json

    rows = [json.loads(r.output)["rows"] for r in (here, there)]
    assert rows[0] == rows[1] and rows[1][0]["f1"] == 1.0


def test_a_time_lapse_gets_one_label_image_over_its_time_points(make_store, validate):
    store = make_store("image", "0.5")  # t=2, z=6: 3D objects, one label image for both
    first = evaluate(store, "DNA", "DNA", objects="nuclei")
    assert [(r["scene"], r["t"]) for r in first.rows] == [("", 0), ("", 1)]
    assert all(r["f1"] == 1.0 for r in first.rows)
    group = zarr.open_group(store, mode="r")
    assert label_names(group) == ["DNA nuclei"]
    labels = zarr.open_array(store / "labels" / "DNA nuclei" / "s0", mode="r")
    assert labels.shape[:2] == (2, 1) and labels[0].max() > 0 and labels[1].max() > 0
    assert len(stored_labels(group, "DNA nuclei")["fingerprints"]) == 2
    validate(store)
    again = evaluate(store, "DNA", "DNA", objects="nuclei")  # read back, same answers
    assert again.rows == first.rows
