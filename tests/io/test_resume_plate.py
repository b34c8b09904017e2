"""A plate run killed half way (SIGKILL) and run again: only the fields not yet complete are
computed, and the store ends as an uninterrupted run writes it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

import zarrstain
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.io.chunkgrid import stored_keys
from zarrstain.testing import random_model

CLI = [sys.executable, "-c", "from zarrstain.cli.main import main; main()"]
ROWS, COLUMNS, FIELDS = ("A", "B", "C", "D"), ("1", "2", "3", "4", "5", "6"), 4  # 96 fields
OPTIONS = {"normalization": "zscore", "input_channels": ["BF"]}


def _complete(out: Path, scenes: list[str]) -> int:
    """Fields whose every level holds all its chunks (each is one model block)."""
    if not (out / "zarr.json").exists():
        return 0
    root = zarr.open_group(str(out), mode="r")
    done = 0
    for scene in scenes:
        with warnings.catch_warnings():  # a zarr.json being written as we look
            warnings.simplefilter("ignore")
            try:
                levels = [arr for _, arr in root[scene].arrays()]
            except KeyError:
                continue
        whole = all(len(list(stored_keys(arr))) == arr.nchunks for arr in levels)
        done += len(levels) == 2 and whole
    return done


@pytest.mark.slow
def test_plate_killed_half_way_resumes_only_the_missing_fields(tmp_path, validate):
    store = zarrstain.datasets.make_plate(
        tmp_path / "plate.zarr", rows=ROWS, columns=COLUMNS, fields=FIELDS,
        shape=(1, 1, 96, 96), seed=2,
    )  # fmt: skip
    model = zarrstain.save_model(
        random_model(seed=1, ndim=2, depth=2, mult_chan=16, normalization="zscore"),
        tmp_path / "model",
    )
    reference = tmp_path / "reference.zarr"
    full = plan_prediction(store, model, out=reference, **OPTIONS)
    n = full.n_blocks
    scenes = [s.scene for s in full.scenes]
    assert n == len(scenes) == 96  # one block per field
    full.run()

    out = tmp_path / "out.zarr"
    args = [*CLI, "predict", str(store), "--model", str(model), "--out", str(out),
            "--normalization", "zscore", "--input-channel", "BF"]  # fmt: skip
    run = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _complete(out, scenes) < n // 2 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    complete = _complete(out, scenes)
    assert 0 < complete < n, complete

    again = plan_prediction(store, model, out=out, **OPTIONS)
    again.run()
    # every complete field is kept: only the others' blocks run (those cut short by the kill,
    # at most one per thread, are the only work done twice)
    assert again.blocks_run == n - complete, (complete, again.blocks_run)
    validate(out)
    for scene in scenes:
        for level in (0, 1):
            np.testing.assert_array_equal(
                zarrstain.open_image(out, scene, level=level).values,
                zarrstain.open_image(reference, scene, level=level).values,
            )
    for scene in scenes:  # every field finished: no pending record left
        record = zarr.open_group(str(out), path=scene, mode="r").attrs["zarrstain"]
        assert "pending" not in record
