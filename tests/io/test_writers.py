"""Stores that other tools wrote: zarrstain reads them, predicts into them, their writers read back.

Why
---
Users bring stores written by the tools of the field, not by zarrstain. Each writer has its
own valid dialect of NGFF: iohub (VisCy's writer) names its axes ``T, C, Z, Y, X`` (typed
``time``, ``channel``, ``space``); ngff-zarr writes levels at ``scale0/image`` and
consolidated metadata by default, and no omero channel labels; ome-zarr-py names its levels
``s0, s1``. Each test here writes a store with the tool itself, then runs ``zarrstain info``,
``zarrstain predict`` in place and into ``--out``, and reads the results back with the writer:
it must list every channel and return exactly the pixels zarrstain wrote.

iohub runs in an environment of its own (:mod:`envs`): its current release (0.3.11, zarr 3,
NGFF 0.4 and 0.5) where an interpreter of Python >= 3.12 is found on this machine, else
0.3.0a7, the last 0.3 build that installs on Python 3.11 (same axis names).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from click.testing import CliRunner
from conftest import tree_digest
from envs import READ_CASES, find_python, run_script, tool_python
from zarrstain.cli.main import cli

import zarrstain
from zarrstain.testing import random_model

NEW = "DNA (predicted)"


def run(*args: Any):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A small 3D fnet reading ``Phase3D``, VisCy's name for its phase channel."""
    model = random_model(seed=3, input_labels=("Phase3D",))
    return zarrstain.save_model(model, tmp_path_factory.mktemp("m") / "phase-to-dna")


def _expected(store: Path, scene: str, model_dir: Path, channel: str = "Phase3D") -> np.ndarray:
    """What zarrstain predicts for ``scene`` in memory, (t, z, y, x)."""
    image = zarrstain.open_image(store, scene)
    model = zarrstain.load_model(model_dir)
    pred = zarrstain.predict(image, model, halo="exact", input_channels=[channel])
    return pred.values[:, 0]


def _predict_both_ways(
    store: Path, model_dir: Path, tmp_path: Path, *extra: Any, integer: bool = False
) -> Path:
    """``predict`` into ``--out`` (source untouched), then in place; returns the out store.

    ``integer``: the store holds integers, so in place needs ``--dtype uint16``.
    """
    before = tree_digest(store)
    out = tmp_path / f"{store.stem}-out.zarr"
    result = run("predict", store, "--model", model_dir, "--out", out, "--halo", "exact", *extra)
    assert result.exit_code == 0, result.output
    assert tree_digest(store) == before
    if integer:
        extra = (*extra, "--dtype", "uint16")
    result = run("predict", store, "--model", model_dir, "--halo", "exact", *extra)
    assert result.exit_code == 0, result.output
    return out


# --- iohub ----------------------------------------------------------------------------------

_WRITE = r"""
import hashlib, json, sys
import numpy as np
import iohub
from iohub.ngff import open_ome_zarr
from iohub.ngff.models import TransformationMeta

out = {"iohub": iohub.__version__, "stores": {}}
for case in json.load(sys.stdin):
    scale = TransformationMeta(type="scale", scale=[1.0, 1.0, 2.0, 0.5, 0.5])
    digests = {}
    with open_ome_zarr(case["path"], layout=case["layout"], mode="w-",
                       channel_names=case["channels"], version=case["version"]) as node:
        for i, name in enumerate(case["positions"]):
            pos = node.create_position(*name.split("/")) if name else node
            rng = np.random.default_rng(i)
            data = (rng.random(case["shape"], dtype="float32") * 100).astype("float32")
            pos.create_image("0", data, transform=[scale])
            if case["levels"] > 1:
                pos.initialize_pyramid(case["levels"])
                pos.compute_pyramid()
            digests[name] = hashlib.sha256(data.tobytes()).hexdigest()
    out["stores"][case["path"]] = digests
json.dump(out, sys.stdout)
"""

# Reads each store the way an iohub user would: positions, channel names, levels, pixels.
_READ = (
    r"""
import hashlib
import numpy as np
from iohub.ngff import open_ome_zarr

def read(case):
    out = {}
    node = open_ome_zarr(case["path"], layout=case["layout"], mode="r")
    if case["layout"] == "hcs":
        out["positions"] = sorted(name for name, _ in node.positions())
        node = node[case["position"]]
    out["channel_names"] = node.channel_names
    out["axes"] = [a.name for a in node.axes]
    c = [a.type for a in node.axes].index("channel")
    paths = [d.path for d in node.metadata.multiscales[0].datasets]
    out["levels"] = [list(node[p].shape) for p in paths]
    data = np.take(node[paths[0]][:], node.get_channel_index(case["label"]), axis=c)
    out["sha256"] = hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()
    return out
"""
    + READ_CASES
)


@pytest.fixture(scope="module")
def iohub_python() -> Path:
    """iohub's current release on Python >= 3.12 when there is one, else 0.3.0a7 here."""
    found = find_python((3, 12))
    if found is not None:
        return tool_python("iohub==0.3.11", found[0])
    return tool_python("iohub==0.3.0a7")


@pytest.fixture(scope="module")
def iohub_stores(iohub_python, tmp_path_factory) -> tuple[str, dict[str, dict[str, str]]]:
    """A plate (NGFF 0.4 and 0.5) and a single position (0.5) written by iohub itself."""
    base = tmp_path_factory.mktemp("iohub-written")
    version = run_script(
        iohub_python, "import iohub, json; print(json.dumps(iohub.__version__))", 0
    )
    # iohub 0.3.0a7 computes pyramids with tensorstore, which it does not install
    levels = 1 if version.startswith("0.3.0a") else 2
    cases = [
        {"path": str(base / f"plate{v}.zarr"), "layout": "hcs", "version": v,
         "positions": ["A/1/0", "B/2/0"], "shape": [2, 2, 5, 40, 44]}
        for v in ("0.4", "0.5")
    ] + [
        {"path": str(base / "fov.zarr"), "layout": "fov", "version": "0.5",
         "positions": [""], "shape": [1, 2, 5, 40, 44]}
    ]  # fmt: skip
    for case in cases:
        case.update(channels=["Phase3D", "Nuclei"], levels=levels)
    written = run_script(iohub_python, _WRITE, cases)
    return written["iohub"], written["stores"]


def _copy(src: str, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_an_iohub_plate_is_read_predicted_and_read_back_by_iohub(
    iohub_stores, iohub_python, model_dir, validate, tmp_path, version
):
    iohub_version, stores = iohub_stores
    src = next(p for p in stores if p.endswith(f"plate{version}.zarr"))
    plate = _copy(src, tmp_path / "plate.zarr")

    info = run("info", plate)
    assert info.exit_code == 0, info.output
    assert "'A/1/0'" in info.output and "channels: Phase3D, Nuclei" in info.output
    scenes = zarrstain.open_scenes(plate)
    assert sorted(scenes) == ["A/1/0", "B/2/0"]
    image = scenes["A/1/0"]
    assert image.dims == ("t", "c", "z", "y", "x") and image.shape == (2, 2, 5, 40, 44)
    assert image.attrs["axes"] == "tczyx"
    assert image.attrs["units"]["z"] == "micrometer"
    np.testing.assert_allclose(np.diff(image.coords["z"].values), 2.0)
    # zarrstain reads exactly the pixels iohub wrote
    for scene, digest in stores[src].items():
        assert _digest(scenes[scene].values) == digest, scene

    out = _predict_both_ways(plate, model_dir, tmp_path)
    validate(plate)
    validate(out)
    expected = {s: _expected(tmp_path / "plate.zarr", s, model_dir) for s in scenes}
    for store in (plate, out):
        got = zarrstain.open_scenes(store)
        for scene in scenes:
            assert list(got[scene].coords["c"].values)[-1] == NEW
            np.testing.assert_allclose(got[scene].sel(c=NEW).values, expected[scene], atol=1e-5)

    request = [
        {"name": f"{name} {scene}", "path": str(store), "layout": "hcs", "position": scene,
         "label": NEW}
        for name, store in (("in place", plate), ("out", out))
        for scene in scenes
    ]  # fmt: skip
    results = run_script(iohub_python, _READ, request)
    for case in request:
        got = results[case["name"]]
        assert "error" not in got, got["error"]
        assert got["warnings"] == [], f"iohub {iohub_version} warned: {got['warnings']}"
        assert got["positions"] == ["A/1/0", "B/2/0"]
        labels = ["Phase3D", "Nuclei", NEW] if case["path"] == str(plate) else [NEW]
        assert got["channel_names"] == labels
        # iohub's own axis names are kept in place; every level grew by the new channel
        if case["path"] == str(plate):
            assert got["axes"] == ["T", "C", "Z", "Y", "X"]
        assert all(shape[1] == len(labels) for shape in got["levels"]), got["levels"]
        written = expected[case["position"]].astype("float32")
        assert got["sha256"] == _digest(written), f"iohub reads other pixels: {case['name']}"


@pytest.mark.slow
def test_an_iohub_position_predicts_in_place(iohub_stores, iohub_python, model_dir, tmp_path):
    _, stores = iohub_stores
    src = next(p for p in stores if p.endswith("fov.zarr"))
    fov = _copy(src, tmp_path / "fov.zarr")
    assert _digest(zarrstain.open_image(fov).values) == stores[src][""]
    result = run("predict", fov, "--model", model_dir)
    assert result.exit_code == 0, result.output
    expected = _expected(fov, "", model_dir)
    request = [{"name": "fov", "path": str(fov), "layout": "fov", "label": NEW}]
    got = run_script(iohub_python, _READ, request)["fov"]
    assert "error" not in got, got["error"]
    assert got["channel_names"] == ["Phase3D", "Nuclei", NEW]
    assert got["sha256"] == _digest(expected.astype("float32"))


# --- ngff-zarr ------------------------------------------------------------------------------


def _ngff_zarr_image(path: Path, version: str, chunks: dict[str, int]) -> np.ndarray:
    """A czyx image written by ngff-zarr with a 2-level pyramid (consolidated metadata)."""
    import ngff_zarr as nz

    data = np.random.default_rng(5).integers(0, 4000, (2, 6, 40, 36)).astype("uint16")
    image = nz.to_ngff_image(
        data,
        dims=["c", "z", "y", "x"],
        scale={"z": 2.0, "y": 0.5, "x": 0.5},
        axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"},
    )
    multiscales = nz.to_multiscales(image, scale_factors=[2], chunks=chunks)
    nz.to_ngff_zarr(str(path), multiscales, version=version)
    return data


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_an_ngff_zarr_image_is_read_predicted_and_read_back_by_ngff_zarr(
    model_dir, validate, tmp_path, version
):
    import ngff_zarr as nz

    # one channel per chunk (in place needs it); ngff-zarr's default chunking gets --out only
    path = tmp_path / "image.zarr"
    data = _ngff_zarr_image(path, version, {"c": 1, "z": 6, "y": 32, "x": 32})
    image = zarrstain.open_image(path)
    assert image.shape == (1, 2, 6, 40, 36)
    np.testing.assert_array_equal(image.values[0], data)
    assert [lvl["path"] for lvl in image.attrs["levels"]] == ["scale0/image", "scale1/image"]

    out = _predict_both_ways(path, model_dir, tmp_path, "--input-channel", "0", integer=True)
    validate(path)
    validate(out)
    expected = _expected(tmp_path / "image.zarr", "", model_dir, "0")
    for store, n in ((path, 3), (out, 1)):
        back = nz.from_ngff_zarr(str(store))
        assert [i.data.shape[0] for i in back.images] == [n, n]  # every level has the channel
        assert back.metadata.omero.channels[-1].label == NEW
        written = np.asarray(back.images[0].data[-1])
        if store == path:  # in place: cast to the store's uint16
            np.testing.assert_array_equal(written, zarrstain.open_image(path).sel(c=NEW)[0])
        else:
            np.testing.assert_allclose(written, expected[0], atol=1e-5)
    # the consolidated metadata ngff-zarr wrote was refreshed: readers that trust it see
    # the new channel, zarr's own open too
    snapshot = zarr.open_group(str(path), mode="r", use_consolidated=True)
    assert snapshot.metadata.consolidated_metadata is not None
    assert snapshot["scale0/image"].shape[0] == 3


def test_ngff_zarr_default_chunks_are_predicted_into_out_and_refused_in_place(model_dir, tmp_path):
    path = tmp_path / "image.zarr"
    _ngff_zarr_image(path, "0.5", {"c": 2, "z": 6, "y": 32, "x": 32})
    before = tree_digest(path)
    result = run("predict", path, "--model", model_dir, "--input-channel", "0", "--dtype", "uint16")
    assert result.exit_code != 0
    assert "one channel per chunk" in result.output and "--out" in result.output
    assert tree_digest(path) == before
    result = run("predict", path, "--model", model_dir, "--input-channel", "0", "--out",
                 tmp_path / "out.zarr")  # fmt: skip
    assert result.exit_code == 0, result.output


# --- ome-zarr-py ----------------------------------------------------------------------------


def test_an_ome_zarr_py_image_is_read_predicted_and_read_back_by_ome_zarr_py(
    model_dir, validate, tmp_path
):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr.writer import write_image

    path = tmp_path / "image.zarr"
    data = np.random.default_rng(6).integers(0, 4000, (2, 6, 48, 40)).astype("uint16")
    root = zarr.open_group(str(path), mode="w-", zarr_format=2)
    write_image(data, root, axes="czyx", storage_options={"chunks": (1, 6, 32, 32)})
    image = zarrstain.open_image(path)
    np.testing.assert_array_equal(image.values[0], data)

    out = _predict_both_ways(path, model_dir, tmp_path, "--input-channel", "0", integer=True)
    validate(path)
    validate(out)
    for store, n in ((path, 3), (out, 1)):
        nodes = list(Reader(parse_url(str(store)))())
        levels = nodes[0].data
        assert all(level.shape[0] == n for level in levels), [lv.shape for lv in levels]
        got = zarrstain.open_image(store).sel(c=NEW).values
        np.testing.assert_array_equal(np.asarray(levels[0][-1]), got[0])
