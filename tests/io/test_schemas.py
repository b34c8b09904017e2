"""Stores zarrstain writes validate against the NGFF JSON schemas of ../shared/ngff-schemas."""

from __future__ import annotations

import pytest

import zarrstain
from zarrstain.testing import assert_valid_store


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("kind", ["image", "plate", "bioformats2raw"])
def test_written_stores_match_json_schemas(make_store, tmp_path, schema_dir, version, kind):
    if schema_dir is None:
        pytest.skip("../shared/ngff-schemas is absent (set ZARRSTAIN_SHARED to its parent folder)")
    src = make_store(kind, version)
    scenes = zarrstain.open_scenes(src)
    preds = {
        sid: img.sel(c=["BF"]).astype("float32").assign_coords(c=["BF (copy)"])
        for sid, img in list(scenes.items())[:2]
    }
    out = tmp_path / "out.zarr"
    zarrstain.write_channels(src, preds, out=out, copy_channels=True)
    zarrstain.write_channels(src, {s: p.astype("uint16") for s, p in preds.items()})
    for store in (src, out):
        assert assert_valid_store(store, schema_dir) >= 1
