"""Readers other than zarrstain's see the channels it writes: bioio-ome-zarr and iohub.

Why
---
The validators (yaozarrs, the NGFF JSON schemas; see :func:`zarrstain.testing.assert_valid_store`)
check the spec, and ome-zarr-py's reader is checked in ``test_write.py``. Readers that users
open stores with have requirements of their own, beyond the spec: iohub's pydantic models
require ``omero.rdefs.defaultT`` and ``defaultZ``, which NGFF leaves optional, and drop *all*
channel names (with one logged warning) when they are missing. So a store that validates can
still lose its labels in a reader; these tests write channels with zarrstain (in place, into a
new store with ``out=``, into plates) and read them back with:

- **bioio-ome-zarr** (zarr 3), a test dependency, in this process, NGFF 0.4 and 0.5;
- **iohub** 0.2.3.post1, the last release for Python 3.11, which needs ``zarr<3`` and so runs
  in a virtual environment of its own (:mod:`envs`). It reads NGFF 0.4 (zarr v2) only; the
  current iohub (0.3, zarr 3, NGFF 0.4 and 0.5) reads back the stores it wrote itself in
  ``test_writers.py``.

Each reader must list every channel label, new ones included, and return for the new channel
exactly the pixels that zarrstain wrote.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from envs import READ_CASES, run_script, tool_python

import zarrstain
from zarrstain import datasets

SOURCE_LABELS = list(datasets.CHANNELS)
NEW = "DNA (predicted)"


def _prediction(image: xr.DataArray, label: str = NEW) -> xr.DataArray:
    """2·BF + 0.25 as float32: its uint16 cast is exactly 2·BF, known without zarrstain."""
    out = image.sel(c=["BF"]).astype("float32") * 2 + 0.25
    return out.assign_coords(c=[label])


def _as_uint16(pred: xr.DataArray) -> np.ndarray:
    """What ``dtype="uint16"`` stores for :func:`_prediction` (small values, no clipping)."""
    return np.floor(pred.values[:, 0]).astype("uint16")


# --- bioio-ome-zarr ------------------------------------------------------------------------


def _assert_bioio_reads(
    path: Path, labels: list[str], expected: np.ndarray, *, ome_model: bool = True
) -> None:
    """bioio lists ``labels``, reads ``expected`` as the last channel, on every level."""
    from bioio_ome_zarr import Reader

    reader = Reader(path)
    assert reader.channel_names == labels
    assert reader.dims.order == "TCZYX"
    got = reader.get_image_data("TCZYX", C=labels.index(labels[-1]))
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got[:, 0], expected)
    assert tuple(reader.physical_pixel_sizes) == datasets.VOXEL_UM
    for level in reader.resolution_levels[1:]:  # new channels are in every pyramid level
        reader.set_resolution_level(level)
        assert len(labels) == reader.dims.C, f"level {level}"
    if ome_model:
        # bioio's OME model (ome-types) is what bioio.BioImage users see as metadata
        names = [c.name for c in reader.ome_metadata.images[0].pixels.channels]
        assert names == labels


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_bioio_reads_channels_added_in_place(make_store, version):
    path = make_store("image", version)
    pred = _prediction(zarrstain.open_image(path))
    zarrstain.write_channels(path, pred, dtype="uint16")
    _assert_bioio_reads(path, [*SOURCE_LABELS, NEW], _as_uint16(pred))


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_bioio_reads_new_store(make_store, tmp_path, version):
    src = make_store("image", version)
    pred = _prediction(zarrstain.open_image(src))
    out = tmp_path / "out.zarr"
    zarrstain.write_channels(src, pred, out=out, copy_channels=["BF"])
    # bioio cannot build its OME model for float32 data (it looks up PixelType "FLOAT32",
    # ome-types calls it "float"): a bioio limitation, so only names and pixels are checked
    _assert_bioio_reads(out, ["BF", NEW], pred.values[:, 0], ome_model=False)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_bioio_reads_plate_scene(make_store, version):
    path = make_store("plate", version)
    pred = _prediction(zarrstain.open_image(path, "A/2/1"))
    zarrstain.write_channels(path, pred, dtype="uint16")
    # bioio opens a plate's fields one at a time (the plate root has no multiscales)
    _assert_bioio_reads(path / "A" / "2" / "1", [*SOURCE_LABELS, NEW], _as_uint16(pred))


# --- iohub, in an environment of its own -----------------------------------------------------

IOHUB_VERSION = "0.2.3.post1"


@pytest.fixture(scope="session")
def iohub_python() -> Path:
    """Interpreter of a venv holding iohub 0.2.3.post1 (reads NGFF 0.4, zarr 2)."""
    return tool_python(f"iohub=={IOHUB_VERSION}")


# Runs in iohub's venv. Reads each case the way an iohub user would and reports as JSON; when
# iohub drops the channel names it says why, by validating the metadata with iohub's own model.
_IOHUB_SCRIPT = (
    r"""
import hashlib
import numpy as np
import zarr
from iohub import open_ome_zarr
from iohub.ngff.models import ImagesMeta

def read(case):
    out = {}
    node = open_ome_zarr(case["path"], layout=case["layout"], mode="r")
    if case["layout"] == "hcs":
        out["positions"] = [name for name, _ in node.positions()]
        node = node[case["position"]]
    out["channel_names"] = getattr(node, "channel_names", None)  # unset if metadata rejected
    if out["channel_names"] is None:
        return out
    # dataset paths from the metadata: Position.data assumes the first level is named "0"
    paths = [d.path for d in node.metadata.multiscales[0].datasets]
    c = [a.name for a in node.axes].index("c")
    out["levels"] = [list(node[p].shape) for p in paths]
    data = np.take(node[paths[0]][:], node.get_channel_index(case["label"]), axis=c)
    data = np.ascontiguousarray(data)
    out.update(dtype=str(data.dtype), shape=list(data.shape))
    out["sha256"] = hashlib.sha256(data.tobytes()).hexdigest()
    return out

def explain(case, result):  # iohub's reason, should it reject the image's metadata
    try:
        image = zarr.open_group(case["path"], mode="r", path=case["position"] or "")
        ImagesMeta(**image.attrs.asdict())
    except Exception as exc:
        result["invalid"] = str(exc)
"""
    + READ_CASES
)


@dataclass
class IohubCase:
    path: Path
    labels: list[str]
    # the new channel (last label), full resolution, (t, z, y, x)
    expected: np.ndarray = field(repr=False)
    layout: str = "fov"
    position: str | None = None


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _iohub_cases(sources: dict[tuple[str, str], Path], base: Path) -> dict[str, IohubCase]:
    """NGFF 0.4 stores that zarrstain wrote channels into, one per way of writing."""

    def copy(kind: str, name: str) -> Path:
        return Path(shutil.copytree(sources[kind, "0.4"], base / name))

    cases = {}
    path = copy("image", "in-place.zarr")
    pred = _prediction(zarrstain.open_image(path))
    zarrstain.write_channels(path, pred, dtype="uint16")
    cases["image, in place"] = IohubCase(path, [*SOURCE_LABELS, NEW], _as_uint16(pred))

    # rdefs as zarrstain and ome-zarr-py wrote them before (no defaultT/defaultZ): completed
    path = copy("image", "legacy-rdefs.zarr")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["omero"] = {**group.attrs["omero"], "rdefs": {"model": "color"}}
    pred = _prediction(zarrstain.open_image(path))
    zarrstain.write_channels(path, pred, dtype="uint16")
    cases["image with incomplete rdefs, in place"] = IohubCase(
        path, [*SOURCE_LABELS, NEW], _as_uint16(pred)
    )

    # without omero metadata zarrstain creates it (index labels for the existing channels)
    path = copy("image", "no-omero.zarr")
    group = zarr.open_group(str(path), mode="r+")
    group.attrs.put({k: v for k, v in group.attrs.asdict().items() if k != "omero"})
    # the reader now labels the channels "0", "1", "2"; name them for _prediction's "BF"
    pred = _prediction(zarrstain.open_image(path).assign_coords(c=SOURCE_LABELS))
    zarrstain.write_channels(path, pred, dtype="uint16")
    cases["image without omero, in place"] = IohubCase(path, ["0", "1", "2", NEW], _as_uint16(pred))

    src = copy("image", "source.zarr")
    pred = _prediction(zarrstain.open_image(src))
    out = base / "out.zarr"
    zarrstain.write_channels(src, pred, out=out, copy_channels=["BF"])
    cases["image, out="] = IohubCase(out, ["BF", NEW], pred.values[:, 0])

    path = copy("plate", "plate.zarr")
    pred = _prediction(zarrstain.open_image(path, "A/2/1"))
    zarrstain.write_channels(path, pred, dtype="uint16")
    cases["plate, in place"] = IohubCase(
        path, [*SOURCE_LABELS, NEW], _as_uint16(pred), "hcs", "A/2/1"
    )

    src = copy("plate", "plate-source.zarr")
    out = base / "plate-out.zarr"
    preds = {s: _prediction(zarrstain.open_image(src, s)) for s in ("A/2/1", "B/1/0")}
    zarrstain.write_channels(src, preds, out=out, copy_channels=["BF"])
    cases["plate, out="] = IohubCase(out, ["BF", NEW], preds["B/1/0"].values[:, 0], "hcs", "B/1/0")
    return cases


@pytest.fixture(scope="module")
def iohub_results(
    iohub_python: Path, _source_stores, tmp_path_factory
) -> dict[str, tuple[IohubCase, dict[str, Any]]]:
    """Every case written, then read in one iohub subprocess (its imports take seconds)."""
    cases = _iohub_cases(_source_stores, tmp_path_factory.mktemp("iohub"))
    request = [
        {"name": n, "path": str(c.path), "layout": c.layout, "position": c.position}
        | {"label": c.labels[-1]}
        for n, c in cases.items()
    ]
    results = run_script(iohub_python, _IOHUB_SCRIPT, request)
    return {n: (c, results[n]) for n, c in cases.items()}


@pytest.mark.parametrize(
    "case",
    [
        "image, in place",
        "image with incomplete rdefs, in place",
        "image without omero, in place",
        "image, out=",
        "plate, in place",
        "plate, out=",
    ],
)
def test_iohub_reads(iohub_results, case):
    expected, got = iohub_results[case]
    why = f"iohub logged {got['warnings']}"
    if "invalid" in got:
        why += f"; iohub rejects the metadata: {got['invalid']}"
    assert "error" not in got, f"{got['error']}\n{why}"
    assert got["channel_names"] == expected.labels, f"{got['channel_names']}: {why}"
    assert got["warnings"] == []
    assert "invalid" not in got, why
    # every pyramid level grew by the new channel (axes t, c, z, y, x)
    assert all(shape[1] == len(expected.labels) for shape in got["levels"]), got["levels"]
    assert (got["dtype"], tuple(got["shape"])) == (
        str(expected.expected.dtype),
        expected.expected.shape,
    )
    assert got["sha256"] == _digest(expected.expected), "iohub reads other pixels"
    if expected.layout == "hcs":
        assert expected.position in got["positions"]
