"""Invalid or unsupported metadata gives a zarrstain error naming the store, field and fix."""

from __future__ import annotations

import json
import shutil

import pytest
import zarr

import zarrstain
from zarrstain.errors import (
    MetadataError,
    NotOmeZarrError,
    StoreNotFoundError,
    UnsupportedError,
    ZarrstainError,
)


def _edit_attrs(path, group_path, edit):
    group = zarr.open_group(str(path), mode="r+", path=group_path)
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    edit(ome)
    group.attrs.put(attrs)


def _ms(ome):
    return ome["multiscales"][0]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize(
    ("edit", "field", "text"),
    [
        (
            lambda o: _ms(o)["axes"].reverse(),
            "multiscales[0].axes",
            "axes in the order (x, y, z, c, t)",
        ),
        (
            lambda o: _ms(o)["axes"].insert(4, _ms(o)["axes"].pop(1)),
            "multiscales[0].axes",
            "axes in the order (t, z, y, x, c)",
        ),
        (
            lambda o: _ms(o)["datasets"][0]["coordinateTransformations"][0].update(scale=[1, 1, 1]),
            "multiscales[0].datasets[0].coordinateTransformations[0].scale",
            "3 values for 5 axes",
        ),
        (
            lambda o: _ms(o)["datasets"].append(
                {
                    "path": "s9",
                    "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, 8, 8]}],
                }
            ),
            "multiscales[0].datasets[2].path",
            "level 's9' is listed but no array exists",
        ),
        (lambda o: _ms(o).pop("datasets"), "multiscales[0].datasets", "None"),
        (
            lambda o: _ms(o)["axes"][2].update(name="q", type="angle"),
            None,
            "axis 'q' (type 'angle') is not supported",
        ),
    ],
)
def test_invalid_image_metadata(make_store, version, edit, field, text):
    path = make_store("image", version)
    _edit_attrs(path, "", edit)
    with pytest.raises(ZarrstainError) as info:
        zarrstain.open_image(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert str(path) in message and text in message and "\n" not in message
    if field is not None:
        assert isinstance(info.value, MetadataError) and info.value.field == field


def test_dimension_names_must_match_axes(make_store):
    path = make_store("image", "0.5")
    meta_file = path / "s0" / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["dimension_names"] = ["t", "c", "z", "x", "y"]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(MetadataError, match=r"s0/zarr.json dimension_names.*expected the axes"):
        zarrstain.open_image(path)


def test_plate_listing_a_missing_well(make_store):
    path = make_store("plate", "0.4")
    shutil.rmtree(path / "B" / "2")
    with pytest.raises(MetadataError, match=r"plate.wells\[3\].path.*'B/2' is listed but no group"):
        zarrstain.open_scenes(path)


def test_well_listing_a_missing_field(make_store):
    path = make_store("plate", "0.5")
    shutil.rmtree(path / "A" / "1" / "1")
    with pytest.raises(MetadataError, match=r"well.images\[1\].path.*field '1' is listed"):
        zarrstain.open_scenes(path)


def test_plate_metadata_checked_against_the_spec_models(make_store):
    path = make_store("plate", "0.5")
    _edit_attrs(path, "", lambda o: o["plate"].pop("columns"))
    with pytest.raises(MetadataError, match="columns"):
        zarrstain.open_scenes(path)


@pytest.mark.parametrize("version", ["0.1", "0.3", "0.6"])
def test_unsupported_versions(make_store, version):
    path = make_store("image", "0.4")
    _edit_attrs(path, "", lambda o: _ms(o).update(version=version))
    with pytest.raises(
        UnsupportedError, match=f"OME-Zarr {version}, which zarrstain does not read"
    ):
        zarrstain.open_image(path)


def test_version_and_zarr_format_must_agree(make_store):
    path = make_store("image", "0.4")
    _edit_attrs(path, "", lambda o: _ms(o).update(version="0.5"))
    with pytest.raises(MetadataError, match="OME-Zarr 0.5 in a zarr v2 group"):
        zarrstain.open_image(path)


def test_not_ome_zarr(tmp_path):
    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w").create_array(
        "a", shape=(2,), dtype="u1"
    )
    with pytest.raises(NotOmeZarrError, match="holds no OME-Zarr metadata"):
        zarrstain.open_scenes(tmp_path / "plain.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotOmeZarrError, match="is not a zarr group"):
        zarrstain.open_scenes(tmp_path / "empty")
    with pytest.raises(StoreNotFoundError, match="no such store"):
        zarrstain.open_scenes(tmp_path / "missing.zarr")
    with pytest.raises(FileNotFoundError):  # built-in types still catch zarrstain errors
        zarrstain.open_scenes(tmp_path / "missing.zarr")
