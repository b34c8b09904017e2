"""Writing channels: in place and into new stores, pyramids, provenance, refusal, idempotency."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import tree_digest

import zarrstain
from zarrstain.errors import (
    ChannelError,
    ChannelExistsError,
    ParameterError,
    ReadOnlyStoreError,
    ShapeMismatchError,
    UnsupportedError,
)
from zarrstain.io.metadata import ome_attrs
from zarrstain.testing import raise_if_dask_computes


def _prediction(image: xr.DataArray, label: str = "DNA (predicted)", factor: float = 0.5):
    """A stand-in prediction: a float function of the input, labeled like a model output."""
    out = image.sel(c=["BF"]).astype("float32") * factor + 0.25
    return out.assign_coords(c=[label])


def _block_mean(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Reference downsampling along y and x (factor 2, floor), computed in numpy."""
    ny, nx = shape[-2], shape[-1]
    a = a[..., : 2 * ny, : 2 * nx]
    return a.reshape(*a.shape[:-2], ny, 2, nx, 2).mean(axis=(-3, -1))


def _omero_labels(path, gpath=""):
    group = zarr.open_group(str(path), mode="r", path=gpath)
    return [c["label"] for c in ome_attrs(group)[1]["omero"]["channels"]]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_in_place_on_float_copy(make_store, tmp_path, validate, version):
    """In place into a float32 store: values exact, pyramid from written data, provenance."""
    src = make_store("image", version)
    image = zarrstain.open_image(src)
    floats = tmp_path / "float.zarr"
    zarrstain.write_channels(src, image.astype("float32"), out=floats)
    image = zarrstain.open_image(floats)
    before = tree_digest(floats)
    pred = _prediction(image)
    pred.attrs["zarrstain"] = {"model": "stand-in", "halo": 0, "fingerprint": "abc123"}
    zarrstain.write_channels(floats, pred)

    after = zarrstain.open_image(floats)
    assert list(after.c.values) == ["BF", "DNA", "Membrane", "DNA (predicted)"]
    np.testing.assert_array_equal(after.sel(c="DNA (predicted)").values, pred.values[:, 0])
    np.testing.assert_array_equal(after.isel(c=slice(0, 3)).values, image.values)
    # existing channels' chunk files were not rewritten
    changed = {k for k, v in tree_digest(floats).items() if before.get(k, v) != v}
    assert all(k.endswith((".zattrs", "zarr.json", ".zarray")) for k in changed), changed
    low = zarrstain.open_image(floats, level=1)
    np.testing.assert_allclose(
        low.sel(c="DNA (predicted)").values,
        _block_mean(pred.values[:, 0], low.shape[-2:]),
        rtol=1e-6,
    )
    prov = zarr.open_group(str(floats), mode="r").attrs["zarrstain"]["channels"]["DNA (predicted)"]
    assert prov["model"] == "stand-in" and prov["dtype"] == "float32"
    assert prov["fingerprint"] == "abc123" and prov["zarrstain_version"] == zarrstain.__version__
    assert "pending" not in zarr.open_group(str(floats), mode="r").attrs["zarrstain"]
    validate(floats)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_in_place_plate_with_dtype(make_store, validate, version):
    path = make_store("plate", version)
    scenes = zarrstain.open_scenes(path)
    preds = {sid: _prediction(img, factor=2.0) for sid, img in list(scenes.items())[:3]}
    zarrstain.write_channels(path, preds, dtype="uint16")
    for sid, img in zarrstain.open_scenes(path).items():
        if sid in preds:
            assert _omero_labels(path, sid)[-1] == "DNA (predicted)"
            expected = np.clip(np.round(preds[sid].values[:, 0]), 0, 65535).astype("uint16")
            got = img.sel(c="DNA (predicted)").values
            assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        else:
            assert list(img.c.values) == ["BF", "DNA", "Membrane"]
    validate(path)


def test_ome_zarr_py_reads_new_channels(make_store):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    path = make_store("plate", "0.5")
    image = zarrstain.open_image(path, "A/2/1")
    zarrstain.write_channels(path, _prediction(image, factor=1.0), dtype="uint16")
    nodes = list(Reader(parse_url(str(path / "A" / "2" / "1")))())
    assert nodes[0].metadata["channel_names"] == ["BF", "DNA", "Membrane", "DNA (predicted)"]
    assert nodes[0].data[0].shape == (1, 4, 4, 33, 30)


def test_float_into_integer_store_needs_a_dtype(make_store):
    path = make_store("image", "0.5")
    before = tree_digest(path)
    with pytest.raises(
        UnsupportedError, match="stores uint16 and cannot hold float32.*dtype='uint16'"
    ):
        zarrstain.write_channels(path, _prediction(zarrstain.open_image(path)))
    assert tree_digest(path) == before


def test_existing_label_refused_store_untouched(make_store):
    path = make_store("image", "0.4")
    image = zarrstain.open_image(path)
    before = tree_digest(path)
    with pytest.raises(ChannelExistsError, match="channel 'DNA' already exists.*overwrite=True"):
        zarrstain.write_channels(path, _prediction(image, label="DNA"), dtype="uint16")
    assert tree_digest(path) == before


def test_repeating_a_finished_write_changes_nothing(make_store):
    path = make_store("plate", "0.4")
    image = zarrstain.open_image(path, "B/1/0")
    zarrstain.write_channels(path, _prediction(image), dtype="uint16")
    done = tree_digest(path)
    again = zarrstain.open_image(path, "B/1/0").sel(c=["BF", "DNA", "Membrane"])
    zarrstain.write_channels(path, _prediction(again), dtype="uint16")
    assert tree_digest(path) == done
    # different data under the same label is refused
    with pytest.raises(ChannelExistsError):
        zarrstain.write_channels(path, _prediction(again, factor=3.0), dtype="uint16")


def test_matching_fingerprint_skips_without_computing(make_store):
    path = make_store("image", "0.5")
    pred = _prediction(zarrstain.open_image(path))
    pred.attrs["zarrstain"] = {"fingerprint": "model-x/inputs-y"}
    zarrstain.write_channels(path, pred, dtype="uint16")
    done = tree_digest(path)
    with raise_if_dask_computes():
        zarrstain.write_channels(path, pred, dtype="uint16")
    assert tree_digest(path) == done
    pred.attrs["zarrstain"] = {"fingerprint": "model-z/inputs-y"}
    with raise_if_dask_computes(), pytest.raises(ChannelExistsError):
        zarrstain.write_channels(path, pred, dtype="uint16")


def test_overwrite_replaces_data_and_keeps_label(make_store, validate):
    path = make_store("image", "0.5")
    image = zarrstain.open_image(path)
    zarrstain.write_channels(path, _prediction(image, factor=1.0), dtype="uint16")
    zarrstain.write_channels(path, _prediction(image, factor=3.0), dtype="uint16", overwrite=True)
    after = zarrstain.open_image(path)
    assert list(after.c.values) == ["BF", "DNA", "Membrane", "DNA (predicted)"]
    expected = np.clip(np.round(image.sel(c="BF").values * 3.0 + 0.25), 0, 65535)
    np.testing.assert_allclose(after.sel(c="DNA (predicted)").values, expected, atol=1)
    validate(path)


def test_bad_predictions_fail_before_writing(make_store):
    path = make_store("plate", "0.5")
    image = zarrstain.open_image(path, "A/1/0")
    before = tree_digest(path)
    with pytest.raises(ShapeMismatchError, match="y=16 but .* has y=33"):
        zarrstain.write_channels(path, _prediction(image).isel(y=slice(0, 16)), dtype="uint16")
    with pytest.raises(ShapeMismatchError, match="dims"):
        zarrstain.write_channels(path, _prediction(image).isel(t=0), dtype="uint16")
    with pytest.raises(ChannelError, match="unique, non-empty channel labels"):
        two = xr.concat([_prediction(image), _prediction(image)], dim="c")
        zarrstain.write_channels(path, two, dtype="uint16")
    with pytest.raises(ChannelError, match="pass scene="):
        zarrstain.write_channels(path, _prediction(image).assign_attrs(scene=None), dtype="uint16")
    assert tree_digest(path) == before


def test_new_store_mirrors_plate_layout(make_store, tmp_path, validate):
    src = make_store("plate", "0.4")
    before = tree_digest(src)
    out = tmp_path / "predicted.zarr"
    scenes = zarrstain.open_scenes(src)
    first = {s: _prediction(scenes[s]) for s in ["A/1/0", "B/2/1"]}
    zarrstain.write_channels(src, first, out=out, copy_channels=["BF"])
    assert tree_digest(src) == before  # the source is only read
    written = zarrstain.open_scenes(out)
    assert list(written) == ["A/1/0", "B/2/1"]
    assert list(written["A/1/0"].c.values) == ["BF", "DNA (predicted)"]
    assert written["A/1/0"].dtype == np.float32  # float predictions stay float32
    np.testing.assert_array_equal(written["B/2/1"].sel(c="BF").values, scenes["B/2/1"].sel(c="BF"))
    validate(out)
    # a later run adds scenes; plate and well metadata list the union
    zarrstain.write_channels(src, _prediction(scenes["A/1/1"]), out=out, copy_channels=["BF"])
    assert list(zarrstain.open_scenes(out)) == ["A/1/0", "A/1/1", "B/2/1"]
    validate(out)
    # and adds channels to scenes already there
    zarrstain.write_channels(src, _prediction(scenes["A/1/0"], "Membrane (predicted)"), out=out)
    assert list(zarrstain.open_image(out, "A/1/0").c.values) == [
        "BF",
        "DNA (predicted)",
        "Membrane (predicted)",
    ]
    validate(out)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_new_store_bioformats2raw(make_store, tmp_path, validate, version):
    src = make_store("bioformats2raw", version)
    scenes = zarrstain.open_scenes(src)
    out = tmp_path / "out.zarr"
    zarrstain.write_channels(src, {"1": _prediction(scenes["1"])}, out=out)
    assert list(zarrstain.open_scenes(out)) == ["1"]
    validate(out)


def test_http_store_is_read_only():
    with pytest.raises(ReadOnlyStoreError, match="HTTP stores are read-only.*out="):
        zarrstain.write_channels("http://127.0.0.1:9/plate.zarr", xr.DataArray([0]))


def test_out_over_http_is_refused_before_anything_is_written(make_store):
    src = make_store("image", "0.5")
    before = tree_digest(src)
    pred = _prediction(zarrstain.open_image(src))
    with pytest.raises(ReadOnlyStoreError, match="HTTP stores are read-only.*s3://"):
        zarrstain.write_channels(src, pred, out="https://127.0.0.1:9/pred.zarr")
    assert tree_digest(src) == before


def test_unlabeled_float_store_uses_reader_labels(tmp_path, validate):
    """Labels the reader shows ("0", ...) are the ones copy/refusal use; windows stay finite."""
    from zarrstain import datasets

    src = tmp_path / "unlabeled.zarr"
    data = np.linspace(-1, 1, 5 * 24 * 20, dtype=np.float32).reshape(5, 24, 20)
    datasets.save_image(src, data, "zyx", ngff_version="0.5")
    image = zarrstain.open_image(src)
    assert list(image.c.values) == ["0"]
    out = tmp_path / "out.zarr"
    pred = (image * 2).assign_coords(c=["doubled"])
    zarrstain.write_channels(src, pred, out=out, copy_channels=True)
    written = zarrstain.open_image(out)
    assert list(written.c.values) == ["0", "doubled"]
    np.testing.assert_array_equal(written.sel(c="0").values, image.sel(c="0").values)
    windows = [
        c["window"] for c in ome_attrs(zarr.open_group(str(out), mode="r"))[1]["omero"]["channels"]
    ]
    assert all(np.isfinite(v) for w in windows for v in w.values())
    validate(out)
    with pytest.raises(ChannelExistsError, match="channel 'doubled' already exists"):
        zarrstain.write_channels(out, (written.sel(c=["doubled"]) * 3), overwrite=False)
    with pytest.raises(ChannelExistsError, match="channel '0' already exists"):
        zarrstain.write_channels(src, pred.assign_coords(c=["0"]) + 1, out=out)


def test_floats_into_integers_are_rounded_and_clipped(make_store):
    path = make_store("image", "0.5")
    image = zarrstain.open_image(path)
    values = np.array([-5.0, 0.4, 0.6, 70000.0, 65535.4], np.float32)
    pred = xr.zeros_like(image.sel(c=["DNA"]), dtype=np.float32)
    pred[0, 0, 0, 0, : values.size] = values
    zarrstain.write_channels(path, pred.assign_coords(c=["clipped"]), dtype="uint16")
    stored = zarrstain.open_image(path).sel(c="clipped").values[0, 0, 0, : values.size]
    np.testing.assert_array_equal(stored, [0, 0, 1, 65535, 65535])  # no wrap-around


def test_dtype_texts_give_one_dtype_or_one_per_label():
    from zarrstain.io.dtypes import dtypes_from_text

    assert dtypes_from_text([]) is None
    assert dtypes_from_text(["uint16"]) == "uint16"
    # split at the last "=": a label may hold one
    assert dtypes_from_text(["a=b=uint16", "DNA std=float32"]) == {
        "a=b": "uint16",
        "DNA std": "float32",
    }
    with pytest.raises(ParameterError, match="dtype 'uint16' among several"):
        dtypes_from_text(["uint16", "x=uint8"])
