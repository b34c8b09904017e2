"""Plans of plates hold one batch of scenes' arrays at a time (zarrstain.engine.scene_plan).

A planned scene's arrays (source, prediction, statistics, block source) are built when used
and released after each batch, so the driver's memory is flat in the number of fields. What a
plate planned and run in batches of 2 writes must equal what it writes in one batch holding
everything, and a scene built again must be the scene that was checked.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import zarr

import zarrstain.engine.pipeline
import zarrstain.engine.scene_plan
import zarrstain.io.recent
import zarrstain.io.write
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.testing import random_model


def _plate(path):
    return datasets.make_plate(
        path, rows=("A",), columns=("1", "2"), fields=3, shape=(1, 1, 24, 32), seed=5, levels=2
    )


def _arrays(path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    found = {}

    def walk(group, prefix):
        for name, arr in group.arrays():
            found[prefix + name] = np.asarray(arr[...])
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(root, "")
    return found


@pytest.fixture
def batches_of_two(monkeypatch):
    """BATCH = 2, 3 images' metadata held, and a record of how many scenes hold arrays
    whenever one is built."""
    monkeypatch.setattr(zarrstain.engine.pipeline, "BATCH", 2)
    monkeypatch.setattr(zarrstain.io.write, "BATCH", 2)
    monkeypatch.setattr(zarrstain.io.recent, "HELD", 3)
    held: list[int] = []
    build = zarrstain.engine.scene_plan.build_scene

    def counting(plan, scene):
        held.append(sum(s.held for s in plan.scenes))
        return build(plan, scene)

    monkeypatch.setattr(zarrstain.engine.scene_plan, "build_scene", counting)
    return held


@pytest.mark.parametrize("in_place", [False, True])
def test_a_plate_in_batches_holds_one_batch_and_writes_what_one_batch_writes(
    tmp_path, batches_of_two, in_place
):
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4, normalization="zscore")
    kwargs = dict(input_channels=["BF"], dtype="uint16" if in_place else "float32")
    ref_store, store = _plate(tmp_path / "ref.zarr"), _plate(tmp_path / "plate.zarr")
    ref_out = None if in_place else tmp_path / "ref-out.zarr"
    out = None if in_place else tmp_path / "out.zarr"

    plan = plan_prediction(store, model, out=out, **kwargs)
    assert len(plan.scenes) == 6
    assert not any(s.held for s in plan.scenes)  # released batch by batch
    described = plan.describe()  # from the summaries: nothing is built for it
    assert [s["status"] for s in described["scenes"]] == ["to write"] * 6
    assert plan.run() == {s.scene: "written" for s in plan.scenes}
    assert not any(s.held for s in plan.scenes)
    # parsed metadata and opened groups: the 3 used last (read again when needed)
    assert len(plan.opened._metas) <= 3 and len(plan.opened.layout.groups) <= 3
    # planning: at most the batch being planned; running: the batch being written
    assert max(batches_of_two) <= 2

    with pytest.MonkeyPatch.context() as m:  # one batch: every scene held throughout
        m.setattr(zarrstain.engine.pipeline, "BATCH", 64)
        m.setattr(zarrstain.io.write, "BATCH", 64)
        m.setattr(zarrstain.io.recent, "HELD", 1024)
        reference = plan_prediction(ref_store, model, out=ref_out, **kwargs)
        reference.run()
        assert all(s.held for s in reference.scenes)
    got, want = _arrays(out or store), _arrays(ref_out or ref_store)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # a second run finds every scene done, from the fingerprints of released scenes
    again = plan_prediction(store, model, out=out, **kwargs)
    assert {s.status for s in again.scenes} == {"unchanged"}


@pytest.mark.parametrize("in_place", [False, True])
def test_the_next_batch_is_prepared_while_one_is_written(
    tmp_path, batches_of_two, monkeypatch, in_place
):
    """Reading a batch's fields and computing their statistics overlaps the writing (the
    model's forwards) of the batch before it, so a GPU does not wait on reads; a refusal of a
    later batch still comes after the earlier batches are written, and is raised."""
    import threading
    import time

    import zarrstain.engine.coarse

    events: list[tuple[str, float, float, threading.Thread]] = []
    write, statistics = zarrstain.io.write.write_pyramids, zarrstain.engine.coarse.statistics

    def slow_write(jobs):
        start = time.perf_counter()
        time.sleep(0.3)  # the model, slow
        write(jobs)
        events.append(("write", start, time.perf_counter(), threading.current_thread()))

    def timed_statistics(plan, scenes):
        start = time.perf_counter()
        out = statistics(plan, scenes)
        events.append(("stats", start, time.perf_counter(), threading.current_thread()))
        return out

    monkeypatch.setattr(zarrstain.io.write, "write_pyramids", slow_write)
    monkeypatch.setattr(zarrstain.engine.coarse, "statistics", timed_statistics)
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4, normalization="zscore")
    kwargs = dict(input_channels=["BF"], dtype="uint16" if in_place else "float32")
    store = _plate(tmp_path / "plate.zarr")
    plan = plan_prediction(store, model, out=None if in_place else tmp_path / "out.zarr", **kwargs)
    events.clear()  # (planning computes none; in place, the run's first pass checks all)
    assert plan.run() == {s.scene: "written" for s in plan.scenes}
    writes = [e for e in events if e[0] == "write"]
    assert len(writes) == 3  # 6 fields, batches of 2
    if not in_place:  # --out: each batch's statistics while the batch before is written
        stats = sorted((e for e in events if e[0] == "stats"), key=lambda e: e[1])
        assert len(stats) == 3
        for k in (1, 2):
            assert stats[k][1] < writes[k - 1][2] and stats[k][3] is not writes[k - 1][3]
    else:  # in place, the statistics come first; batches are still written one by one
        assert all(a[2] <= b[1] for a, b in itertools.pairwise(writes))


def test_a_batch_refused_while_the_one_before_is_written_stops_the_run_after_it(
    tmp_path, batches_of_two
):
    """A constant field in the third batch: prepared (and refused) while the second batch is
    written; the first two batches end complete, the refused batch is not begun."""
    from zarrstain.errors import DataError

    store = _plate(tmp_path / "plate.zarr")
    field = zarr.open_group(str(store), mode="r+")["A/2/1/s0"]
    field[0, 0] = 100  # BF of A/2/1, every z: constant
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4, normalization="zscore")
    out = tmp_path / "out.zarr"
    plan = plan_prediction(store, model, out=out, input_channels=["BF"])
    with pytest.raises(DataError, match="A/2/1"):
        plan.run()
    root = zarr.open_group(str(out), mode="r")
    for scene in ("A/1/0", "A/1/1", "A/1/2", "A/2/0"):
        assert "multiscales" in root[scene].attrs["ome"], scene
    assert "A/2/1" not in root["A/2"] and "A/2/2" not in root["A/2"]


def test_a_released_scene_is_built_again_as_it_was_checked(tmp_path, batches_of_two):
    store = _plate(tmp_path / "plate.zarr")
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4)
    plan = plan_prediction(store, model, out=tmp_path / "out.zarr", input_channels=["BF"])
    for scene in (plan.scenes[0], plan.scenes[3]):  # planned in full; planned like the first
        first = scene.prediction
        assert scene.held
        scene.release()
        again = scene.prediction
        assert again is not first
        assert again.attrs["zarrstain"]["fingerprint"] == scene.fingerprint
        assert again.attrs["zarrstain"] == first.attrs["zarrstain"]
        assert again.data.name == first.data.name  # the same graph (deterministic names)
        assert scene.describe()["outputs"] == [str(c) for c in again.coords["c"].values]


@pytest.mark.parametrize("normalization", ["zscore", "percentile"])
def test_fields_planned_like_the_first_are_what_planning_each_in_full_gives(
    tmp_path, batches_of_two, normalization
):
    """One field of a uniform plate is built in full; the others are derived from it, and
    equal what building each in full gives: provenance, fingerprint, statistics, values."""
    store = _plate(tmp_path / "plate.zarr")
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4, normalization=normalization)
    plan = plan_prediction(store, model, out=tmp_path / "out.zarr", input_channels=["BF"])
    assert len(batches_of_two) == 1  # planning built the first field only
    for scene in plan.scenes[1:]:
        assert scene.fingerprint is None  # not built while planning
        derived = scene.arrays
        full = zarrstain.engine.scene_plan.build_scene(plan, scene.scene)
        assert derived.planned is not None and full.planned is not None
        got, want = derived.prediction, full.prediction
        assert got.attrs["zarrstain"]["fingerprint"] == want.attrs["zarrstain"]["fingerprint"]
        assert got.data.name == want.data.name
        assert got.attrs["zarrstain"]["input"] == want.attrs["zarrstain"]["input"]
        assert {k: v for k, v in got.attrs.items() if k != "zarrstain"} == {
            k: v for k, v in want.attrs.items() if k != "zarrstain"
        }
        for part in ("offset", "scale"):
            np.testing.assert_array_equal(derived.stats[part].values, full.stats[part].values)
        np.testing.assert_array_equal(got.values, want.values)
        assert derived.source.identical(full.source)
    fingerprints = {s.fingerprint for s in plan.scenes}
    assert len(fingerprints) == len(plan.scenes)  # each field its own


def test_fields_of_other_shapes_are_planned_in_full(tmp_path, batches_of_two):
    """A plate whose fields differ in shape: each shape is planned (and checked) in full."""
    store = _plate(tmp_path / "plate.zarr")
    root = zarr.open_group(str(store), mode="r+")
    group = root["A/2/1"]
    for name, arr in list(group.arrays()):  # one field cropped to 24 x 24 (12 x 12 at level 1)
        data = arr[..., : arr.shape[-2]]
        del group[name]
        group.create_array(name, data=data, chunks=data.shape)
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4)
    plan = plan_prediction(store, model, out=tmp_path / "out.zarr", input_channels=["BF"])
    assert len(batches_of_two) == 2  # A/1/0 and the cropped A/2/1
    shapes = {s.scene: s.shape_tzyx for s in plan.scenes}
    assert shapes["A/2/1"][-1] == 24 and shapes["A/2/2"][-1] == 32
    plan.run()
    out = zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    assert out["A/2/1/s0"].shape[-1] == 24 and out["A/2/2/s0"].shape[-1] == 32
