"""Viewers opening the output while ``watch`` writes it: napari-ome-zarr and iohub, each in an
environment of its own (``tests/envs.py``), reading in a loop during a live run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zarrstain
from zarrstain import datasets
from zarrstain.live import watch

WRITER = Path(__file__).with_name("stream_writer.py")
T = 5

# Runs in the reader's venv: opens the store again and again until it shows T time points (or
# the deadline passes), recording what a user of that reader would see each time.
_LOOP = r"""
import json, sys, time
import numpy as np
request = json.load(sys.stdin)
path, T, deadline = request["path"], request["T"], time.time() + request["timeout"]
seen = []
while time.time() < deadline:
    try:
        n, channels, sums = look(path)
        seen.append({"t": n, "channels": channels, "sums": sums})
        if n >= T:
            break
    except Exception as exc:
        seen.append({"error": f"{type(exc).__name__}: {exc}"})
    time.sleep(0.05)
json.dump(seen, sys.stdout)
"""

_IOHUB = (
    r"""
from iohub import open_ome_zarr

def look(path):
    with open_ome_zarr(path, layout="fov", mode="r") as pos:
        first = pos.metadata.multiscales[0].datasets[0].path
        data = pos[first][:]
        sums = [float(d.astype("f8").sum()) for d in data]
        return data.shape[0], list(pos.channel_names), sums
"""
    + _LOOP
)

_NAPARI = (
    r"""
import contextlib
from napari_ome_zarr._reader import napari_get_reader

def look(path):
    with contextlib.redirect_stdout(sys.stderr):
        layers = napari_get_reader(path)(path)
    data, kwargs, kind = layers[0]
    full = np.asarray(data[0])
    names = kwargs.get("name")
    sums = [float(full[t].astype("f8").sum()) for t in range(full.shape[0])]
    return full.shape[0], names if isinstance(names, list) else [names], sums
"""
    + _LOOP
)


@pytest.mark.slow
def test_napari_and_iohub_see_only_complete_time_points_during_a_run(tmp_path, model3d):
    from envs import tool_python

    # (the versions tests/io/test_readers.py and the label tests use: envs shared, built once)
    pythons = {"iohub": tool_python("iohub==0.2.3.post1"),
               "napari-ome-zarr": tool_python("napari-ome-zarr==0.10.0")}  # fmt: skip
    # NGFF 0.4 / zarr v2: what iohub 0.2 reads
    reference = datasets.make_image(tmp_path / "acquired.zarr", shape=(T, 8, 32, 32),
                                    ngff_version="0.4", seed=1)  # fmt: skip
    live, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    request = {"path": str(out), "T": T, "timeout": 180}
    readers = {
        "iohub": _reader(pythons["iohub"], _IOHUB, request, tmp_path / "iohub.log"),
        "napari-ome-zarr": _reader(
            pythons["napari-ome-zarr"], _NAPARI, request, tmp_path / "napari.log"
        ),
    }
    writer = subprocess.Popen([sys.executable, str(WRITER), "zarr", str(reference), str(live),
                               "--interval", "0.8"])  # fmt: skip
    try:
        result = watch(live, model3d, out=out, until=T, idle_timeout=60, max_batch=1)
    finally:
        writer.wait(timeout=120)
    assert result.time_points == {"": T}
    final = zarrstain.open_image(out).values.astype(np.float64)
    for who, proc in readers.items():
        stdout = proc.stdout.read()
        proc.wait(timeout=240)
        log = (tmp_path / ("iohub.log" if who == "iohub" else "napari.log")).read_text()
        assert proc.returncode == 0, f"{who}: {log[-2000:]}"
        _check(json.loads(stdout), final, "DNA (predicted)", who)


def _reader(python: Path, script: str, request: dict, log: Path) -> subprocess.Popen:
    # (stderr to a file: napari-ome-zarr prints the metadata it reads, every time)
    with open(log, "w") as err:
        proc = subprocess.Popen([str(python), "-I", "-c", script], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
    proc.stdin.write(json.dumps(request))
    proc.stdin.close()
    return proc


def _check(seen: list[dict], final: np.ndarray, label: str, who: str) -> None:
    looks = [s for s in seen if "error" not in s]
    assert looks and looks[-1]["t"] == T, f"{who}: {seen[-3:]}"
    # errors only before the output existed (the first prediction not yet written)
    first = seen.index(looks[0])
    assert all("error" not in s for s in seen[first:]), f"{who}: {seen[first:]}"
    counts = [s["t"] for s in looks]
    assert counts == sorted(counts) and len(set(counts)) > 1, f"{who} saw {counts}"
    expected = [float(final[t].sum()) for t in range(T)]
    for s in looks:  # every time point shown is complete: its pixels are the final ones
        assert s["channels"][-1].endswith(label), f"{who}: {s['channels']}"
        np.testing.assert_allclose(s["sums"], expected[: s["t"]], rtol=1e-5)
