"""``zarrstain predict`` killed with SIGKILL mid-write, then run again: only the missing chunks
are computed, and the result equals an uninterrupted run."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr
from conftest import tree_digest

import zarrstain
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.io.chunkgrid import stored_keys
from zarrstain.testing import random_model

CLI = [sys.executable, "-c", "from zarrstain.cli.main import main; main()"]
OPTIONS = {"halo": "exact", "normalization": "zscore", "dtype": "uint16", "block_memory": "32MB"}


def _args(store, model, *extra):
    cli_options = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]
    return [*CLI, "predict", str(store), "--model", str(model), *cli_options, *extra]


def _new_chunks(store, slot):
    """Level-0 chunk keys of channel ``slot`` of every scene (written, listed or not)."""
    root = zarr.open_group(str(store), mode="r")
    keys = 0
    for well in ("A/1", "A/2"):
        arr = root[f"{well}/0/s0"]
        keys += sum(1 for k in stored_keys(arr) if k.split("/")[2:3] == [str(slot)])
    return keys


@pytest.mark.slow
def test_sigkill_then_rerun_computes_only_what_is_missing(tmp_path, validate):
    store = zarrstain.datasets.make_plate(
        tmp_path / "plate.zarr",
        rows=("A",),
        columns=("1", "2"),
        fields=1,
        shape=(2, 8, 128, 128),
        seed=4,
    )
    model = zarrstain.save_model(
        random_model(seed=3, depth=2, mult_chan=8, normalization="zscore"), tmp_path / "model"
    )
    reference = tmp_path / "reference.zarr"
    shutil.copytree(store, reference)
    full = plan_prediction(reference, model, **OPTIONS)
    n_blocks = full.n_blocks
    full.run()
    assert full.blocks_run == n_blocks
    before = {s: zarrstain.open_image(store, s).compute() for s in ("A/1/0", "A/2/0")}

    run = subprocess.Popen(_args(store, model), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while _new_chunks(store, 3) < 24 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL, "the run ended before it could be killed"

    validate(store)  # valid, and the existing channels untouched
    for scene, image in before.items():
        now = zarrstain.open_image(store, scene)
        assert list(now.c.values) == list(image.c.values)  # nothing half-written is listed
        np.testing.assert_array_equal(now.values, image.values)
    written = _new_chunks(store, 3)
    assert written > 0

    again = plan_prediction(store, model, **OPTIONS)
    again.run()
    # the chunks written before the kill were kept, not computed again
    assert 0 < again.blocks_run < n_blocks, (written, again.blocks_run, n_blocks)
    validate(store)
    for scene in before:
        for level in (0, 1):
            np.testing.assert_array_equal(
                zarrstain.open_image(store, scene, level=level).values,
                zarrstain.open_image(reference, scene, level=level).values,
            )
    digest = tree_digest(store)  # the same command once more: nothing to do, nothing changes
    finished = subprocess.run(_args(store, model), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert "unchanged" in finished.stdout
    assert tree_digest(store) == digest
