"""Two predict processes writing into one plate in place at the same time."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import zarr

import zarrstain
from zarrstain.testing import random_model

CLI = [sys.executable, "-c", "from zarrstain.cli.main import main; main()"]


def _start(store, model, *extra):
    args = [
        "predict",
        str(store),
        "--model",
        str(model),
        "--dtype",
        "uint16",
        "--halo",
        "8",
        "--normalization",
        "zscore",
        *map(str, extra),
    ]
    return subprocess.Popen(
        [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_concurrent_writers_in_place(make_store, tmp_path, validate):
    src = make_store("plate", "0.5")
    a, b, c = (
        zarrstain.save_model(
            random_model(seed=20 + k, output_labels=(f"{name} (predicted)",)), tmp_path / name
        )
        for k, name in enumerate("ABC")
    )
    # different scenes with one model, and a second model into the same scenes, all at once
    runs = [
        _start(src, a, "--scene", "A/1/0", "--scene", "A/1/1", "--scene", "A/2/0"),
        _start(src, a, "--scene", "B/1/0", "--scene", "B/2/1"),
        _start(src, b, "--scene", "A/1/0", "--scene", "A/1/1", "--scene", "B/2/1"),
        _start(src, c, "--scene", "A/1/0"),
    ]
    outputs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0, 0, 0], outputs
    validate(src)
    expected = {
        "A/1/0": ["A (predicted)", "B (predicted)", "C (predicted)"],
        "A/1/1": ["A (predicted)", "B (predicted)"],
        "A/2/0": ["A (predicted)"],
        "B/1/0": ["A (predicted)"],
        "B/2/1": ["A (predicted)", "B (predicted)"],
        "A/2/1": [],
    }
    for sid, new in expected.items():
        image = zarrstain.open_image(src, sid)
        labels = list(image.coords["c"].values)
        assert labels[:3] == ["BF", "DNA", "Membrane"]
        assert sorted(labels[3:]) == new  # each once, whatever order the writers finished in
        group = zarr.open_group(src / sid, mode="r")
        assert "pending" not in (group.attrs.get("zarrstain") or {})
        for label in new:  # every channel holds its own model's prediction
            model = zarrstain.load_model({"A": a, "B": b, "C": c}[label[0]])
            pred = zarrstain.predict(image.sel(c=["BF"]), model, halo=8, normalize="zscore")
            np.testing.assert_array_equal(
                image.sel(c=[label]).values, np.clip(np.round(pred.values), 0, 65535)
            )
