"""The level-by-level writer (zarrstain.io.stream): write units, chunk bookkeeping, resume.

These are the pieces the crash-safety tests (test_crash.py, test_resume.py) rely on, tested on
plain zarr arrays so a failure points at the writer, not at the metadata around it.
"""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import zarr

from zarrstain.errors import UnsupportedError
from zarrstain.io.chunkgrid import delete_chunks, keys_in, stored_keys
from zarrstain.io.pyramid import downsample_to
from zarrstain.io.stream import PyramidWrite, region, write_pyramids


def _array(tmp_path, name, shape, chunks, shards=None, dtype="uint16", fill=0):
    # as the writer's handles are: every chunk written exists as a key, even all fill value
    root = zarr.open_group(tmp_path / "s.zarr", mode="a", zarr_format=3)
    return root.create_array(
        name,
        shape=shape,
        chunks=chunks,
        shards=shards,
        dtype=dtype,
        fill_value=fill,
        config={"write_empty_chunks": True},
    )


def _levels(tmp_path, c=3):
    """A (c, y, x) two-level pyramid: 8×12 in 4×4 chunks, then 4×6 in 2×2 chunks."""
    return [
        _array(tmp_path, "0", (c, 8, 12), (1, 4, 4)),
        _array(tmp_path, "1", (c, 4, 6), (1, 2, 2)),
    ]


def test_region_selects_channels_and_time():
    assert region(3, 0, 1, 2) == (slice(1, 3), slice(None), slice(None))
    assert region(4, 1, 0, 1, (0, slice(2, 5))) == (
        slice(2, 5),
        slice(0, 1),
        slice(None),
        slice(None),
    )


def test_keys_in_lists_every_touched_unit_clipped_at_the_edge(tmp_path):
    arr = _array(tmp_path, "a", (2, 10, 10), (1, 4, 4))
    units = dict(keys_in(arr, (slice(1, 2), slice(3, 9), slice(0, 10))))
    # y 3:9 touches chunk rows 0..2, x the whole width touches columns 0..2; the last is short
    assert len(units) == 1 * 3 * 3
    key = next(k for k in units if units[k][1].start == 8 and units[k][2].start == 8)
    assert units[key] == (slice(1, 2), slice(8, 10), slice(8, 10))
    assert dict(keys_in(arr, (slice(0, 0), slice(None), slice(None)))) == {}


def test_keys_in_counts_shards_not_inner_chunks(tmp_path):
    arr = _array(tmp_path, "a", (2, 8, 8), (1, 2, 2), shards=(1, 4, 4))
    assert len(dict(keys_in(arr, (slice(None), slice(None), slice(None))))) == 2 * 2 * 2


def test_delete_chunks_removes_only_the_touched_chunks(tmp_path):
    arr = _array(tmp_path, "a", (2, 8, 8), (1, 4, 4))
    arr[:] = 7
    assert len(stored_keys(arr)) == 8
    assert delete_chunks(arr, [(slice(1, 2), slice(0, 4), slice(None))]) == 2
    left = stored_keys(arr)
    assert len(left) == 6
    np.testing.assert_array_equal(arr[0], 7)  # the other channel untouched
    np.testing.assert_array_equal(arr[1, 4:], 7)
    np.testing.assert_array_equal(arr[1, :4], 0)  # deleted chunks read as the fill value
    assert delete_chunks(arr, [(slice(1, 2), slice(0, 4), slice(None))]) == 0  # already gone


def _job(arrays, data, start=1, **kwargs):
    return PyramidWrite(where="test", arrays=arrays, cax=0, blocks=[(data, start)], **kwargs)


def test_levels_are_derived_from_what_was_written(tmp_path):
    arrays = _levels(tmp_path)
    values = np.arange(2 * 8 * 12, dtype=np.uint16).reshape(2, 8, 12) * 3
    data = da.from_array(values, chunks=(1, 8, 5))  # not aligned with the store's chunks
    seen = {}

    def finish(lo, hi, record):
        seen.update(lo=lo, hi=hi, record=record)

    record = {"total": da.from_array(values).sum(), "bad": float("nan")}
    write_pyramids([_job(arrays, data, record=record, finish=finish)])
    np.testing.assert_array_equal(arrays[0][1:3], values)
    np.testing.assert_array_equal(arrays[0][0], 0)  # channel 0 is not part of the write
    expected = downsample_to(da.from_array(values), (2, 4, 6), "test").compute()
    np.testing.assert_array_equal(arrays[1][1:3], expected)
    # the display range comes from the smallest level; the record is computed and JSON-able
    assert seen["lo"] == [float(expected[0].min()), float(expected[1].min())]
    assert seen["hi"] == [float(expected[0].max()), float(expected[1].max())]
    assert seen["record"] == {"total": int(values.sum()), "bad": "nan"}


def test_a_resumed_write_computes_only_the_missing_chunks(tmp_path):
    arrays = _levels(tmp_path, c=1)
    values = np.full((1, 8, 12), 5, dtype=np.uint16)
    # an interrupted run wrote two full-resolution chunks (kept as they are: value 9)
    arrays[0][0, 0:4, 0:4] = 9
    arrays[0][0, 4:8, 8:12] = 9
    done = [stored_keys(arrays[0]), set()]
    assert len(done[0]) == 2
    computed = []
    lock = threading.Lock()

    def count(block, block_info=None):
        with lock:
            computed.append(block_info[0]["chunk-location"])
        return block

    data = da.from_array(values, chunks=(1, 4, 4)).map_blocks(count, dtype=values.dtype)
    write_pyramids([_job(arrays, data, start=0, done=done)])
    assert len(computed) == 6 - 2  # six chunks, two already written
    full = arrays[0][:]
    assert (full == 9).sum() == 2 * 16 and (full == 5).sum() == 4 * 16
    # level 1 is derived from level 0 as written, kept chunks included
    np.testing.assert_array_equal(arrays[1][0, 0:2, 0:2], 9)
    np.testing.assert_array_equal(arrays[1][0, 0:2, 2:6], 5)


def test_time_subsets_need_a_pyramid_that_keeps_t(tmp_path):
    arrays = [
        _array(tmp_path, "0", (4, 1, 8, 8), (1, 1, 4, 4)),
        _array(tmp_path, "1", (2, 1, 4, 4), (1, 1, 2, 2)),  # t halved too
    ]
    data = da.zeros((2, 1, 8, 8), dtype="uint16")
    job = PyramidWrite(
        where="A/1/0", arrays=arrays, cax=1, blocks=[(data, 0)], time=(0, slice(0, 2))
    )
    with pytest.raises(UnsupportedError, match="A/1/0: its pyramid downsamples t"):
        write_pyramids([job])
    assert stored_keys(arrays[0]) == set()  # refused before anything is written
