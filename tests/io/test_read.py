"""Reading: every layout, NGFF 0.4 and 0.5, axis subsets, coordinates, laziness, HTTP."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage

import zarrstain
from zarrstain import datasets
from zarrstain.errors import SceneNotFoundError, UnsupportedError
from zarrstain.testing import RecordingStore, chunk_keys

DIMS = ("t", "c", "z", "y", "x")
AXES = ["yx", "zyx", "cyx", "czyx", "tyx", "tzyx", "tcyx", "tczyx"]
SCALE = {"t": 30.0, "z": 2.0, "y": 0.5, "x": 0.25}


def _array(axes: str) -> np.ndarray:
    sizes = {"t": 2, "c": 3, "z": 5, "y": 19, "x": 23}
    shape = tuple(sizes[a] for a in axes)
    return np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)


def _expand(data: np.ndarray, axes: str) -> np.ndarray:
    return data[tuple(slice(None) if d in axes else None for d in DIMS)]


def _write_with(writer: str, path, data, axes, version):
    labels = [f"ch{i}" for i in range(data.shape[axes.index("c")])] if "c" in axes else None
    if writer == "ome-zarr-py":
        datasets.save_image(
            path, data, axes, ngff_version=version, channel_labels=labels, scale=SCALE, levels=2
        )
        return path
    # zarrstain's writer: copy every channel of an ome-zarr-py store into a new store
    src = path.with_name("src-" + path.name)
    datasets.save_image(
        src, data, axes, ngff_version=version, channel_labels=labels, scale=SCALE, levels=2
    )
    image = zarrstain.open_image(src)
    zarrstain.write_channels(src, image, out=path)
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("axes", AXES)
@pytest.mark.parametrize("writer", ["ome-zarr-py", "zarrstain"])
def test_axis_subsets_round_trip(tmp_path, version, axes, writer):
    data = _array(axes)
    path = _write_with(writer, tmp_path / "img.zarr", data, axes, version)
    image = zarrstain.open_image(path)
    assert image.dims == DIMS
    assert isinstance(image.data, da.Array)
    np.testing.assert_array_equal(image.values, _expand(data, axes))
    for d in "tzyx":
        expected = SCALE[d] * np.arange(image.sizes[d]) if d in axes else [0.0]
        np.testing.assert_allclose(image[d].values, expected)
    if "c" in axes:
        assert list(image.c.values) == ["ch0", "ch1", "ch2"]
    else:
        assert list(image.c.values) == ["0"]
    assert image.attrs["ngff_version"] == version
    # zarrstain's writer adds a channel axis where the source has none
    added_c = writer == "zarrstain" and "c" not in axes
    expected = ("tc" + axes[1:] if axes[0] == "t" else "c" + axes) if added_c else axes
    assert image.attrs["axes"] == expected
    assert image.attrs["units"]["y"] == "micrometer"
    assert len(image.attrs["levels"]) == 2


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_plate_scenes(make_store, version):
    path = make_store("plate", version)
    scenes = zarrstain.open_scenes(path)
    assert list(scenes) == [f"{w}/{f}" for w in ("A/1", "A/2", "B/1", "B/2") for f in (0, 1)]
    root = zarr.open_group(str(path), mode="r")
    for sid, image in scenes.items():
        assert image.attrs["scene"] == sid
        assert list(image.c.values) == ["BF", "DNA", "Membrane"]
        np.testing.assert_array_equal(image.values, root[f"{sid}/s0"][:])
    # different fields hold different cells
    assert not np.array_equal(scenes["A/1/0"].values, scenes["A/1/1"].values)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("series_list", [True, False])
def test_bioformats2raw_series(tmp_path, version, series_list):
    path = datasets.make_bioformats2raw(
        tmp_path / "bf.zarr", series=3, ngff_version=version, write_series_list=series_list
    )
    scenes = zarrstain.open_scenes(path)
    assert list(scenes) == ["0", "1", "2"]
    assert scenes["2"].shape == (1, 3, 8, 48, 40)


def test_timelapse_time_coordinates(make_store):
    image = zarrstain.open_image(make_store("image", "0.5"))
    assert image.sizes["t"] == 2
    np.testing.assert_allclose(image.t.values, [0.0, 60.0])
    assert image.attrs["units"]["t"] == "second"
    np.testing.assert_allclose(image.z.values[:2], [0.0, 2.0])  # anisotropic: z 2 µm
    np.testing.assert_allclose(image.x.values[:2], [0.0, 0.65])


def test_open_lower_level(make_store):
    path = make_store("image", "0.4")
    full = zarrstain.open_image(path)
    low = zarrstain.open_image(path, level=1)
    assert low.shape == tuple(full.attrs["levels"][1]["shape"])
    # coordinates follow the level's own scale and translation (ome-zarr-py records 37 → 18
    # as a pixel size of 0.65 * 37 / 18)
    np.testing.assert_allclose(np.diff(low.y.values), 0.65 * 37 / 18)
    assert low.y.values[0] > 0  # translation: level pixels are centred on the ones above
    with pytest.raises(UnsupportedError, match="levels 0..1, not 5"):
        zarrstain.open_image(path, level=5)


def test_opening_reads_metadata_only(make_store):
    path = make_store("plate", "0.5")
    store = RecordingStore(zarr.storage.LocalStore(path, read_only=True))
    scenes = zarrstain.open_scenes(store)
    assert scenes and chunk_keys(store.reads) == []
    # computing one block of one scene reads exactly the chunks of that block
    image = scenes["B/2/1"]
    block = image.data.blocks[0, 1, 0, 0, 0].compute()
    assert block.shape == (1, 1, 4, 32, 30)
    assert chunk_keys(store.reads) == ["B/2/1/s0/c/0/1/0/0/0"]


def test_scene_selection_errors(make_store):
    path = make_store("plate", "0.4")
    with pytest.raises(SceneNotFoundError, match="holds 8 scenes; pass scene="):
        zarrstain.open_image(path)
    with pytest.raises(SceneNotFoundError, match="'C/9/0' is not in .*available: 'A/1/0'"):
        zarrstain.open_image(path, "C/9/0")
    assert zarrstain.open_image(path, "B/1/1").attrs["scene"] == "B/1/1"


def test_dataarray_is_usable_with_xarray(make_store):
    image = zarrstain.open_image(make_store("image", "0.5"))
    dna = image.sel(c="DNA").isel(t=0).max("z")
    assert dna.dims == ("y", "x") and float(dna.max()) > 0
    assert isinstance(image, xr.DataArray)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_over_http(http_root, version):
    folder, url = http_root
    datasets.make_plate(
        folder / "plate.zarr",
        rows=("A",),
        columns=("1",),
        fields=2,
        shape=(1, 3, 20, 20),
        ngff_version=version,
    )
    local = zarrstain.open_scenes(folder / "plate.zarr")
    remote = zarrstain.open_scenes(f"{url}/plate.zarr")
    assert list(remote) == list(local) == ["A/1/0", "A/1/1"]
    xr.testing.assert_equal(remote["A/1/1"].drop_attrs(), local["A/1/1"].drop_attrs())


def test_an_open_store_is_parsed_once_and_reused(make_store, tmp_path):
    """plan_prediction opens and parses the store once for reading, dry-run and chunk checks."""
    from unittest import mock

    from zarrstain.engine.pipeline import plan_prediction
    from zarrstain.io import layout, opened
    from zarrstain.testing import random_model

    src = make_store("plate", "0.5")
    with mock.patch.object(opened, "find_layout", wraps=layout.find_layout) as parsed:
        plan = plan_prediction(src, random_model(seed=1), out=tmp_path / "o.zarr")
    assert parsed.call_count == 1 and len(plan.scenes) == 8
    store = opened.open_store(src)
    assert opened.open_store(store) is store  # reused as it is
    assert opened.open_store(store, "r+").mode == "r+"  # reopened to write
    assert zarrstain.open_scenes(store).keys() == zarrstain.open_scenes(src).keys()


@pytest.mark.parametrize(
    ("names", "types", "expected"),
    [
        # iohub (VisCy's writer): upper-case names, typed axes
        ("TCZYX", ["time", "channel", "space", "space", "space"], "tczyx"),
        # other names for typed axes: space axes are taken in NGFF's order, ..., z, y, x
        (["time", "ch", "depth", "row", "col"], ["time", "channel", "space", "space", "space"],
         "tczyx"),
        (["c", "Y", "X"], ["channel", "space", "space"], "cyx"),
        # an untyped time axis is read by its name, in any case
        ("TZYX", [None, "space", "space", "space"], "tzyx"),
    ],
)  # fmt: skip
def test_axes_are_read_by_type_then_name(tmp_path, names, types, expected):
    data = _array(expected)
    path = tmp_path / "a.zarr"
    datasets.save_image(path, data, expected, ngff_version="0.4")
    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"]
    ms[0]["axes"] = [
        {"name": n} | ({"type": t} if t else {}) | ({"unit": "micrometer"} if t == "space" else {})
        for n, t in zip(names, types, strict=True)
    ]
    group.attrs["multiscales"] = ms
    image = zarrstain.open_image(path)
    assert image.attrs["axes"] == expected
    np.testing.assert_array_equal(image.values, _expand(data, expected))
    if "space" in types:
        assert image.attrs["units"]["x"] == "micrometer"


def test_axes_zarrstain_cannot_represent_are_refused(tmp_path):
    path = tmp_path / "a.zarr"
    datasets.save_image(path, _array("zyx"), "zyx", ngff_version="0.4")
    group = zarr.open_group(str(path), mode="r+")
    ms = group.attrs["multiscales"]
    ms[0]["axes"][0] = {"name": "angle", "type": "angle"}
    group.attrs["multiscales"] = ms
    with pytest.raises(UnsupportedError, match="axis 'angle' .type 'angle'. is not supported"):
        zarrstain.open_image(path)
