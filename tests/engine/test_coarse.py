"""Coarse tasks (zarrstain.engine.coarse, zarrstain.io.blockwrite): one task per model block.

``PredictionPlan.run`` computes each block from the store and writes it with the pyramid
levels it covers; ``predict`` → ``write_channels`` builds the same prediction lazily, chunk by
chunk. Both must store the same values in every level, whatever the chunking, tiling, padding,
dtypes and time points; and a field that fits one block costs a handful of tasks.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from dask.callbacks import Callback

import zarrstain
from zarrstain import datasets
from zarrstain.engine import coarse
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.io.write import write_channels
from zarrstain.testing import random_model


def _arrays(path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(arr[...]) for name, arr in root.arrays()} | {
        f"{g}/{name}": np.asarray(arr[...])
        for g, group in root.groups()
        for name, arr in _walk(group)
    }


def _walk(group, prefix=""):
    for name, arr in group.arrays():
        yield f"{prefix}{name}", arr
    for name, sub in group.groups():
        yield from _walk(sub, f"{prefix}{name}/")


def _omero(path, gpath):
    group = zarr.open_group(str(path), mode="r")[gpath] if gpath else zarr.open_group(str(path))
    attrs = group.attrs.asdict()
    omero = attrs.get("ome", attrs).get("omero", {})
    return [(c["label"], c["window"]) for c in omero.get("channels", [])]


def _lazy_reference(store, model, out, **kwargs):
    """The same prediction through predict → write_channels (the lazy route), same statistics."""
    plan = plan_prediction(store, model, out=out, **kwargs)
    computed, _ = coarse.statistics(plan, plan.scenes)
    preds = {s.scene: plan.predict(s.source, computed.get(s.scene)) for s in plan.scenes}
    write_channels(plan.opened, preds, time=plan.times, **plan.write.kwargs())
    return plan


class _Tasks(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def _pretask(self, key, dsk, state) -> None:
        self.n += 1


def _plate(tmp_path, shape, chunks=None, levels=2, fields=2):
    return datasets.make_plate(
        tmp_path / "plate.zarr", rows=("A",), columns=("1", "2"), fields=fields, shape=shape,
        seed=4, levels=levels, chunks=chunks,
    )  # fmt: skip


CASES = {
    # a 2D model over fields of 4 store chunks each, one block per field, 3 levels
    "whole field, 2D": dict(
        shape=(1, 1, 60, 64), model=dict(ndim=2, depth=2, mult_chan=4), levels=3,
        chunks=(1, 1, 1, 32, 32), kwargs=dict(input_channels=["BF"]),
    ),
    # tiled with the exact halo; sizes not multiples of the divisor (reflect padding), ragged
    # last blocks, two time points of three, a 3D model
    "tiled, 3D, time subset": dict(
        shape=(3, 8, 44, 40), model=dict(ndim=3, depth=2, mult_chan=4), levels=2,
        chunks=None, kwargs=dict(halo="exact", chunks={"y": 16, "x": 16}, time="1:3"),
    ),
    # two inputs not next to each other (BF, Membrane), percentile normalization (clipped)
    "percentile, two inputs": dict(
        shape=(1, 1, 40, 48), model=dict(ndim=2, depth=1, mult_chan=4,
                                         input_labels=("BF", "Membrane"),
                                         normalization="percentile"),
        levels=2, chunks=None, kwargs={},
    ),
    # quantile head (value + bounds) cast to uint16 with its own float32 spreads, tiled
    "head and dtypes": dict(
        shape=(1, 1, 48, 48), model=dict(ndim=2, depth=1, mult_chan=4, head={"kind": "quantiles"}),
        levels=2, chunks=None, kwargs=dict(chunks={"y": 32, "x": 32}, halo=8, dtype="uint16"),
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_block_tasks_store_what_the_lazy_route_stores(tmp_path, case):
    spec = CASES[case]
    store = _plate(tmp_path, spec["shape"], spec["chunks"], spec["levels"])
    model = random_model(seed=2, **spec["model"])
    out_fast, out_lazy = tmp_path / "fast.zarr", tmp_path / "lazy.zarr"
    plan = plan_prediction(store, model, out=out_fast, **spec["kwargs"])
    blocks = plan.n_blocks
    plan.run()
    reference = _lazy_reference(store, model, out_lazy, **spec["kwargs"])
    fast, lazy = _arrays(out_fast), _arrays(out_lazy)
    assert sorted(fast) == sorted(lazy)
    for name in lazy:
        np.testing.assert_array_equal(fast[name], lazy[name], err_msg=name)
    for s in plan.scenes:
        gpath = s.scene
        assert _omero(out_fast, gpath) == _omero(out_lazy, gpath)
    assert plan.blocks_run == reference.n_blocks == blocks


def test_in_place_rescaled_integers_equal_the_lazy_route(tmp_path):
    """In place (the store's uint16, rescaled), the two routes leave the same arrays."""
    shape = (2, 1, 40, 40)
    a = _plate(tmp_path / "a", shape, levels=2)
    b = _plate(tmp_path / "b", shape, levels=2)
    model = random_model(seed=1, ndim=2, depth=1, mult_chan=4, normalization="zscore")
    kwargs = dict(input_channels=["BF"], rescale=True)
    plan_prediction(a, model, **kwargs).run()
    plan = plan_prediction(b, model, **kwargs)
    computed, _ = coarse.statistics(plan, plan.scenes)
    preds = {s.scene: plan.predict(s.source, computed.get(s.scene)) for s in plan.scenes}
    write_channels(b, preds, time=plan.times, **plan.write.kwargs())
    fast, lazy = _arrays(a), _arrays(b)
    for name in lazy:
        np.testing.assert_array_equal(fast[name], lazy[name], err_msg=name)


def test_a_field_in_one_block_costs_a_few_tasks_whatever_the_chunking(tmp_path):
    """≤ 20 tasks per field (DESIGN decision 3), here with 64 store chunks per field."""
    store = _plate(tmp_path, (1, 1, 128, 128), chunks=(1, 1, 1, 16, 16), levels=3, fields=3)
    model = random_model(seed=3, ndim=2, depth=2, mult_chan=4)
    plan = plan_prediction(store, model, out=tmp_path / "out.zarr", input_channels=["BF"])
    assert all(s.tiling["blocks"] == 1 for s in plan.scenes)
    counter = _Tasks()
    with counter:
        plan.run()
    fields = len(plan.scenes)
    assert counter.n / fields <= 20, f"{counter.n} tasks for {fields} fields"
    assert plan.blocks_run == fields


def test_a_threaded_run_does_not_import_distributed(tmp_path):
    """Plan and run on the local threads without dask importing ``distributed`` (~0.1 s of
    every CLI run) to look for a client that cannot exist; a fresh process, as a user's."""
    import subprocess
    import sys

    store = datasets.make_plate(tmp_path / "p.zarr", rows=["A"], columns=["1"],
                                shape=(1, 1, 32, 32), levels=2)  # fmt: skip
    script = f"""
import sys
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.testing import random_model
plan = plan_prediction({str(store)!r}, random_model(ndim=2, depth=1, mult_chan=2),
                       out={str(tmp_path / "out.zarr")!r}, input_channels=["BF"])
assert plan.run() == {{"A/1/0": "written", "A/1/1": "written"}}
print("distributed" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "False"


def test_statistics_are_one_task_per_field_and_match_the_reductions(tmp_path):
    store = _plate(tmp_path, (2, 4, 32, 32), levels=1)
    model = random_model(seed=3, normalization="percentile")
    plan = plan_prediction(store, model, out=tmp_path / "out.zarr", input_channels=["BF"])
    computed, bad = coarse.statistics(plan, plan.scenes)
    for s in plan.scenes:
        expected = s.stats.compute()
        # percentiles of integers are exact either way
        np.testing.assert_array_equal(computed[s.scene]["offset"], expected["offset"])
        np.testing.assert_array_equal(computed[s.scene]["scale"], expected["scale"])
        assert bad[s.scene] is None  # integers hold no NaN


def test_a_planned_prediction_computes_what_run_writes(tmp_path):
    """Before run supplies the statistics, each block computes its field's own (once per
    process, not per block): the planned prediction equals what run writes."""
    store = _plate(tmp_path, (1, 1, 64, 64), fields=1)
    model = random_model(seed=3, ndim=2, depth=1, mult_chan=4, normalization="zscore")
    plan = plan_prediction(store, model, out=tmp_path / "out.zarr", input_channels=["BF"],
                           halo="exact", chunks={"y": 32, "x": 32})  # fmt: skip
    planned = {s.scene: s.prediction for s in plan.scenes}
    assert all(p.data.npartitions > 1 for p in planned.values())  # several blocks per field
    values = {scene: p.values for scene, p in planned.items()}
    assert coarse._own_statistics.cache_info().currsize >= len(planned)
    plan.run()
    for scene, v in values.items():
        written = zarrstain.open_image(tmp_path / "out.zarr", scene).values
        np.testing.assert_allclose(v, written, rtol=0, atol=1e-5 * np.abs(written).max())
