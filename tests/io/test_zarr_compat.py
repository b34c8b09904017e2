"""Contract tests of the zarr internals zarrstain relies on (``zarrstain.io._zarr_compat``).

Each test names the internal it pins; when a zarr release changes one, it fails here, and the
cap on zarr in pyproject.toml stays until ``_zarr_compat`` follows.
"""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import ROOT

from zarrstain.io import _zarr_compat as compat


@pytest.fixture(params=[2, 3], ids=["zarr-v2", "zarr-v3"])
def array(request, tmp_path):
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=request.param)
    group = root.create_group("img")
    arr = group.create_array("0", shape=(2, 6, 6), chunks=(1, 3, 3), dtype="uint16", fill_value=0)
    arr[:] = np.arange(72, dtype="uint16").reshape(2, 6, 6)
    return arr


def _reopen(arr):
    return zarr.open_array(arr.store_path.store, path=arr.path, mode="r")


def test_grown_view_writes_beyond_the_stored_shape_without_metadata(array):
    """Array(AsyncArray(metadata.update_shape(...), store_path, config)) is how appends work."""
    view = compat.grown_view(array, (4, 6, 6))
    assert view.shape == (4, 6, 6) and _reopen(array).shape == (2, 6, 6)
    view[2:4] = 7
    reader = _reopen(array)
    assert reader.shape == (2, 6, 6)  # readers still see the stored shape: nothing is partial
    np.testing.assert_array_equal(reader[:], np.arange(72).reshape(2, 6, 6))
    array.resize((4, 6, 6))
    np.testing.assert_array_equal(_reopen(array)[2:4], 7)


def test_grown_view_writes_empty_chunks(array):
    """config write_empty_chunks: chunks equal to the fill value still get a key."""
    view = compat.grown_view(array, (3, 6, 6))
    view[2] = 0
    keys = compat.list_keys(array)
    assert {compat.chunk_key(array, (2, i, j)) for i in (0, 1) for j in (0, 1)} <= keys


def test_chunk_keys_match_the_files_and_listing_is_relative(array):
    """metadata.encode_chunk_key and store.list_prefix through store_path, run with sync."""
    keys = compat.list_keys(array)
    expected = {compat.chunk_key(array, (t, i, j)) for t in (0, 1) for i in (0, 1) for j in (0, 1)}
    assert expected <= keys
    first = compat.chunk_key(array, (1, 0, 1))
    assert first == ("c/1/0/1" if array.metadata.zarr_format == 3 else "1.0.1")
    assert (array.metadata.zarr_format == 3) == ("zarr.json" in keys)
    assert compat.can_list(array)


def test_delete_keys_removes_exactly_those_chunks(array):
    """store.delete through store_path: the chunk reads as the fill value afterwards."""
    key = compat.chunk_key(array, (0, 1, 1))
    compat.delete_keys(array, [key])
    assert key not in compat.list_keys(array)
    data = _reopen(array)[:]
    assert (data[0, 3:, 3:] == 0).all() and data[0, 0, 0] == 0 and data[1, 0, 0] == 36
    compat.delete_keys(array, [])  # nothing to delete is fine


@pytest.mark.parametrize("checked", [False, True])
@pytest.mark.parametrize("zarr_format", [2, 3])
def test_create_image_makes_the_group_and_arrays_in_one_call(tmp_path, zarr_format, checked):
    """Group.create_hierarchy with metadata documents made in memory; Array(AsyncArray(...));
    ``checked``: save_metadata gathered (write_nodes), the same store as a result."""
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=zarr_format)
    root.require_group("A/1").attrs.put({"well": "kept"})
    levels = [("0", (1, 2, 8, 8), (1, 1, 4, 4)), ("1", (1, 2, 4, 4), (1, 1, 4, 4))]
    group, arrays = compat.create_image(root, "A/1/0", {"x": 1}, levels, "float32", "tcyx", checked)
    arrays[1][...] = 0  # the fill value, written all the same (write_empty_chunks)
    arrays[0][0, 1] = 5
    reread = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert reread["A/1"].attrs.asdict() == {"well": "kept"}  # the parent left as it was
    assert reread["A/1/0"].attrs.asdict() == {"x": 1} == group.attrs.asdict()
    for (path, shape, chunks), arr in zip(levels, arrays, strict=True):
        stored = reread[f"A/1/0/{path}"]
        assert (stored.shape, stored.chunks, stored.dtype) == (shape, chunks, np.float32)
        assert stored.fill_value == 0 and arr.path == stored.path
        if zarr_format == 3:
            assert stored.metadata.dimension_names == tuple("tcyx")
    assert {compat.chunk_key(arrays[1], (0, c, 0, 0)) for c in (0, 1)} <= compat.list_keys(
        arrays[1]
    )
    np.testing.assert_array_equal(reread["A/1/0/0"][0, 1], 5)
    if zarr_format == 2:  # NGFF 0.4: "/" separated chunk keys
        assert compat.chunk_key(arrays[0], (0, 1, 0, 1)) == "0/1/0/1"
    if not checked:
        with pytest.raises(Exception):  # noqa: B017 (zarr's error type differs by version)
            compat.create_image(root, "A/1/0", {}, levels, "float32", "tcyx")  # exists: refused


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_write_nodes_writes_groups_that_zarr_opens(tmp_path, zarr_format):
    """save_metadata gathered: rows and wells of a new plate, readable as groups."""
    from zarr.core.group import GroupMetadata

    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=zarr_format)
    nodes = {p: GroupMetadata(zarr_format=zarr_format) for p in ("A", "A/1", "B", "B/2")}
    groups = compat.write_nodes(root, nodes)
    assert sorted(groups) == sorted(nodes)
    groups["A/1"].attrs.put({"well": 1})
    reread = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert sorted(k for k, _ in reread.groups()) == ["A", "B"]
    assert reread["A/1"].attrs.asdict() == {"well": 1} and reread["B/2"].attrs.asdict() == {}


def test_write_nodes_bounds_the_writes_in_flight(tmp_path, monkeypatch):
    """A plate's thousands of wells are written a few hundred at a time (flat memory), all of
    them."""
    import asyncio

    from zarr.core.group import GroupMetadata

    in_flight, most = [0], [0]
    save = compat.save_metadata

    async def counted(*args, **kwargs):
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        await asyncio.sleep(0)  # let the others of its slice start
        try:
            return await save(*args, **kwargs)
        finally:
            in_flight[0] -= 1

    monkeypatch.setattr(compat, "save_metadata", counted)
    monkeypatch.setattr(compat, "NODES_IN_FLIGHT", 3)
    root = zarr.open_group(tmp_path / "s.zarr", mode="w", zarr_format=3)
    nodes = {f"A/{i}": GroupMetadata(zarr_format=3) for i in range(8)}
    root.require_group("A")
    compat.write_nodes(root, nodes)
    assert most[0] == 3
    assert sorted(k for k, _ in zarr.open_group(tmp_path / "s.zarr/A", mode="r").groups()) == [
        str(i) for i in range(8)
    ]


def test_pyproject_caps_zarr_at_a_tested_minor_release():
    import re

    text = (ROOT / "pyproject.toml").read_text()
    cap = re.search(r'"zarr>=[\d.]+,<(\d+)\.(\d+)"', text)
    assert cap, "zarr must be capped: these contract tests justify the cap"
    major, minor = map(int, zarr.__version__.split(".")[:2])
    assert (major, minor) < (int(cap[1]), int(cap[2]))
