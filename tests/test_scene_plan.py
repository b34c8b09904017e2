"""Plans of plates hold one batch of scenes' arrays at a time (zarrstain.scene_plan).

A planned scene's arrays (source, prediction, statistics, block source) are built when used
and released after each batch, so the driver's memory is flat in the number of fields. What a
plate planned and run in batches of 2 writes must equal what it writes in one batch holding
everything, and a scene built again must be the scene that was checked.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import zarrstain.io.recent
import zarrstain.io.write
import zarrstain.pipeline
import zarrstain.scene_plan
from zarrstain import datasets
from zarrstain.pipeline import plan_prediction
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
    monkeypatch.setattr(zarrstain.pipeline, "BATCH", 2)
    monkeypatch.setattr(zarrstain.io.write, "BATCH", 2)
    monkeypatch.setattr(zarrstain.io.recent, "HELD", 3)
    held: list[int] = []
    build = zarrstain.scene_plan.build_scene

    def counting(plan, scene):
        held.append(sum(s.held for s in plan.scenes))
        return build(plan, scene)

    monkeypatch.setattr(zarrstain.scene_plan, "build_scene", counting)
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
        m.setattr(zarrstain.pipeline, "BATCH", 64)
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
        full = zarrstain.scene_plan.build_scene(plan, scene.scene)
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
