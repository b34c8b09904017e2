"""Complete time points of a growing array, decided from the store (issue 32's foundation)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from zarrstain.io.growth import complete_time_points


def _array(tmp_path, zarr_format: int, t_chunk: int = 1, shards=None) -> zarr.Array:
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=zarr_format)
    kwargs = {"shards": shards} if shards else {}
    return root.create_array("0", shape=(0, 1, 2, 8, 8), chunks=(t_chunk, 1, 1, 4, 4),
                             dtype="uint16", fill_value=0, **kwargs)  # fmt: skip


def _append(arr: zarr.Array, frames: int, *, last_partial: bool = False) -> None:
    """What a streaming writer does: grow the time axis, then write the new time points."""
    start = arr.shape[0]
    arr.resize((start + frames, *arr.shape[1:]))
    for t in range(start, start + frames):
        value = np.full(arr.shape[1:], t + 1, dtype="uint16")
        if last_partial and t == start + frames - 1:
            arr[t, :, 0] = value[:, 0]  # a stalled writer: half the planes written
        else:
            arr[t] = value


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_time_points_count_when_all_their_chunks_are_written(tmp_path, zarr_format):
    arr = _array(tmp_path, zarr_format)
    assert complete_time_points(arr) == 0
    _append(arr, 2)
    assert complete_time_points(arr) == 2
    _append(arr, 1, last_partial=True)  # declared, half written: not complete
    assert arr.shape[0] == 3 and complete_time_points(arr) == 2
    arr[2] = 9
    assert complete_time_points(arr) == 3


def test_a_blank_time_point_counts_once_a_later_one_is_written(tmp_path):
    arr = _array(tmp_path, 3)
    _append(arr, 1)
    arr.resize((3, *arr.shape[1:]))
    arr[1, :, 0] = 5  # time point 1: its second plane blank (fill value chunks not written)
    assert complete_time_points(arr) == 1
    arr[2] = 7  # the writer moved on: time point 1 was whole
    assert complete_time_points(arr) == 3


def test_chunks_spanning_time_points_count_once_the_writer_moved_past(tmp_path):
    arr = _array(tmp_path, 3, t_chunk=2)
    _append(arr, 1)  # the chunk of time points 0-1 exists after time point 0 alone
    assert complete_time_points(arr) == 0
    _append(arr, 1)
    assert complete_time_points(arr) == 0  # 1 may still be in flight
    assert complete_time_points(arr, final=True) == 2  # the writer closed the store
    _append(arr, 1)  # the writer started the next chunk: 0-1 are done
    assert complete_time_points(arr) == 2


def test_sharded_arrays_count_by_shard(tmp_path):
    """A shard's key is the unit: present once the writer stored the shard."""
    arr = _array(tmp_path, 3, shards=(1, 1, 2, 8, 8))
    _append(arr, 2)
    assert complete_time_points(arr) == 2
    arr.resize((3, *arr.shape[1:]))  # declared, not yet stored
    assert complete_time_points(arr) == 2
