"""Store-level prediction (zarrstain.engine.pipeline): time ranges, plans, runs and their progress.

The CLI's ``predict`` is a thin layer over these (tests/cli/test_cli_predict.py drives it end to
end); here the Python API is held to the same behaviour directly.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tree_digest

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import parse_time, plan_prediction
from zarrstain.errors import ChannelExistsError, DataError, ParameterError
from zarrstain.progress import ProgressEvent
from zarrstain.testing import raise_if_dask_computes, random_model

CHUNKS = {"y": 16, "x": 16}


@pytest.fixture(scope="module")
def model():
    return random_model(seed=5)


@pytest.mark.parametrize(
    ("spec", "n_t", "expected"),
    [
        (None, 4, None),
        ("1:3", 4, slice(1, 3)),
        ("2", 4, slice(2, 3)),
        (":2", 4, slice(0, 2)),
        ("1:", 4, slice(1, 4)),
        ("1:9", 4, slice(1, 4)),  # a stop beyond the scene is cut to it
        (3, 4, slice(3, 4)),
        (slice(0, 2), 4, slice(0, 2)),
    ],
)
def test_parse_time(spec, n_t, expected):
    assert parse_time(spec, n_t) == expected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("a:b", "is not T or T0:T1"),
        ("1:2:3", "is not T or T0:T1"),
        (slice(0, 4, 2), "has a step"),
        ("-1:2", "negative index"),
        ("3:3", "is empty"),
        ("5:", "is outside 0:4: scene 'A/1/0' has 4 time point(s)"),
    ],
)
def test_bad_time_ranges_say_what_is_wrong(spec, fragment):
    with pytest.raises(ParameterError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        parse_time(spec, 4, scene="A/1/0")


def test_planning_reads_metadata_only_and_describes_itself_as_json(make_store, model, tmp_path):
    src = make_store("plate", "0.5")
    out = tmp_path / "out.zarr"
    before = tree_digest(src)
    with raise_if_dask_computes():
        plan = plan_prediction(src, model, out=out, halo=4, chunks=CHUNKS)
    assert not out.exists() and tree_digest(src) == before
    described = json.loads(json.dumps(plan.describe()))
    assert described["blocks_to_run"] == plan.n_blocks > len(plan.scenes) == 8
    assert {s["status"] for s in described["scenes"]} == {"to write"}
    assert described["scenes"][0]["outputs"] == ["DNA (predicted)"]


def test_run_reports_every_block_once_as_progress_events(make_store, model, tmp_path):
    src = make_store("plate", "0.5")
    plan = plan_prediction(src, model, out=tmp_path / "out.zarr", halo=4, chunks=CHUNKS)
    n = plan.n_blocks  # of the scenes still to write: all, before the run
    events: list[ProgressEvent] = []
    statuses = plan.run(progress=events.append)
    assert set(statuses.values()) == {"written"}
    assert [e.done for e in events] == list(range(1, n + 1)) and plan.blocks_run == n
    assert {(e.stage, e.total) for e in events} == {("predict", n)}
    assert events[-1].fraction == 1.0
    # the same plan again: every scene already holds it; nothing runs, nothing is reported
    again = plan_prediction(src, model, out=tmp_path / "out.zarr", halo=4, chunks=CHUNKS)
    assert again.n_blocks == 0
    more: list[ProgressEvent] = []
    assert set(again.run(progress=more.append).values()) == {"unchanged"}
    assert more == []


def test_nonfinite_inputs_are_refused_before_anything_is_written(tmp_path, model):
    data = np.random.default_rng(0).normal(size=(1, 1, 8, 32, 32)).astype(np.float32)
    data[0, 0, 2, 3, 4] = np.nan
    store = tmp_path / "nan.zarr"
    datasets.save_image(store, data, "tczyx", channel_labels=["BF"])
    before = tree_digest(store)
    plan = plan_prediction(store, model, dtype="float32")
    with pytest.raises(DataError, match="channel 'BF' holds 1 NaN/inf voxels"):
        plan.run()
    assert tree_digest(store) == before


def test_an_acquired_channel_is_never_replaced(make_store):
    src = make_store("plate", "0.5")
    acquired = random_model(seed=5, output_labels=("DNA",))
    with pytest.raises(ChannelExistsError, match="already has an acquired channel 'DNA'"):
        plan_prediction(src, acquired, overwrite=True)
    assert "DNA" in zarrstain.open_image(src, "A/1/0").c.values
