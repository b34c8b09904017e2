"""Plug-ins: a family and a model format from another package, found through entry points.

The end-to-end test builds ``tests/plugin_package`` (a package of its own with entry points in
its ``pyproject.toml``), installs it into a scratch folder and runs zarrstain in processes that
have that folder on their path: the CLI trains and predicts with the family (also on two dask
worker processes), ``load_model`` opens the plug-in's file format, and a package round-trips,
with no ``register`` call, no ``--preload`` and no zarrstain file touched.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import EntryPoint
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS

import zarrstain
from zarrstain.datasets import make_plate
from zarrstain.errors import ModelError
from zarrstain.models import ARCHITECTURES, FORMATS, ModelFormat, get_architecture, load_model
from zarrstain.models.plugins import PluginRegistry

PLUGIN = TESTS / "plugin_package"
ZARRSTAIN = Path(sys.executable).with_name("zarrstain")


def test_builtin_families_and_formats_are_entry_points():
    declared = ARCHITECTURES.entry_points()
    assert {"fnet", "diffusion", "classifier", "control", "viscy"} <= set(declared)
    assert all(ep.value.startswith("zarrstain.") for ep in declared.values())
    names = [f.name for f in zarrstain.models.format.formats()]
    assert names[:2] == ["zarrstain", "pytorch_fnet"]  # self-describing formats asked first
    assert {"torchscript", "viscy", "bioimageio"} <= set(names)


def test_a_plugin_module_is_imported_only_when_its_name_is_asked_for():
    code = textwrap.dedent(
        """
        import sys
        from zarrstain.models import get_architecture
        assert "zarrstain.models.diffusion.family" not in sys.modules
        assert get_architecture("fnet").name == "fnet"
        assert "zarrstain.models.diffusion.family" not in sys.modules
        assert get_architecture("diffusion").name == "diffusion"
        assert "zarrstain.models.diffusion.family" in sys.modules
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _fake(monkeypatch, registry: PluginRegistry, name: str, value: str) -> None:
    points = {**registry.entry_points(), name: EntryPoint(name, value, registry.group)}
    monkeypatch.setattr(registry, "_points", points)


def test_a_broken_plugin_names_itself_and_does_not_hide_the_others(monkeypatch, caplog):
    _fake(monkeypatch, ARCHITECTURES, "broken", "no_such_module_anywhere:Family")
    with pytest.raises(ModelError, match=r"plug-in 'broken' \(no_such_module_anywhere:Family.*"):
        get_architecture("broken")
    with caplog.at_level(logging.WARNING, logger="zarrstain"):
        listed = list(ARCHITECTURES)
    assert "fnet" in listed and "broken" not in listed
    assert "ModuleNotFoundError" in caplog.text
    monkeypatch.setattr(ARCHITECTURES, "_failed", set())


def test_a_plugin_must_be_what_its_group_holds_and_named_as_declared(monkeypatch):
    _fake(
        monkeypatch,
        ARCHITECTURES,
        "wrong-kind",
        "zarrstain.models.fnet.checkpoint:CHECKPOINT",
    )
    with pytest.raises(
        ModelError, match="is FileFormat, not an instance or subclass of Architecture"
    ):
        get_architecture("wrong-kind")
    _fake(monkeypatch, ARCHITECTURES, "alias", "zarrstain.models.fnet.family:FnetArchitecture")
    with pytest.raises(ModelError, match="declared as 'alias' but is named 'fnet'"):
        get_architecture("alias")


def test_unknown_architecture_lists_the_installed_ones():
    with pytest.raises(ModelError, match=r"unknown architecture 'vit'; installed: .*fnet.*entry"):
        get_architecture("vit")


class _Raises(ModelFormat):
    name = "raises"
    description = "nothing"
    priority = 0

    def guess_can_open(self, path):
        raise OSError("cannot look")


def test_a_format_whose_guess_fails_is_passed_over(monkeypatch, tmp_path, caplog):
    monkeypatch.setitem(FORMATS._items, "raises", _Raises())
    folder = zarrstain.save_model(zarrstain.testing.random_model(seed=1), tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="zarrstain"):
        assert load_model(folder).architecture == "fnet"
    assert "model format raises failed to inspect" in caplog.text


def test_a_file_no_format_opens_lists_what_would(tmp_path):
    junk = tmp_path / "weights.bin"
    junk.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError, match="not a model zarrstain can load: expected a zarrstain"):
        load_model(junk)


@pytest.fixture(scope="module")
def plugin_env(tmp_path_factory):
    """Environment of processes that see the plug-in, installed into a scratch folder."""
    root = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, root / "src")  # builds write into the source tree
    site = root / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
         "--no-build-isolation", "--target", str(site), str(source)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def _run(env, *args: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in args], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


CHECK = """
import json, sys
import numpy as np
import zarrstain
from zarrstain.models import load_model, save_model

store, package, copy, weights = sys.argv[1:5]
model = load_model(package)  # no register: the entry point names the family
assert model.architecture == "mean-std" and model.spec.loss_name == "Gaussian NLL"
again = load_model(save_model(model, copy))
assert again.content_hash == model.content_hash
image = zarrstain.open_image(store, "A/1/0")
expected = zarrstain.predict(image, model, halo="exact").values
assert np.array_equal(zarrstain.predict(image, again, halo="exact").values, expected)
written = image.sel(c=["DNA (predicted)", "DNA (predicted) std"]).values
np.testing.assert_allclose(written, np.clip(np.rint(expected), 0, 65535), atol=1)  # uint16
state = model.module.state_dict()
json.dump({"input": "BF", "target": "DNA", "weight": state["weight"].tolist(),
           "bias": state["bias"].tolist(), "normalization": model.normalization,
           "output_intensity": model.output_intensity}, open(weights, "w"))
print(json.dumps(expected.tolist()))
"""


def test_a_family_from_another_package_trains_predicts_and_round_trips(plugin_env, tmp_path):
    assert "mean-std" not in ARCHITECTURES.entry_points()  # not installed in this process
    store = make_plate(tmp_path / "plate.zarr", rows=("A",), columns=("1", "2"), fields=1,
                       shape=(1, 2, 32, 32), levels=1)  # fmt: skip
    package = tmp_path / "meanstd"
    _run(plugin_env, ZARRSTAIN, "train", store, "--model", "mean-std", "--input", "BF",
         "--target", "DNA", "--steps", "3", "--patch", "16x16", "--out", package)  # fmt: skip
    card = json.loads((package / "card.json").read_text())
    assert card["architecture"] == "mean-std"
    # two dask worker processes find the family by its entry point, no --preload
    out = _run(plugin_env, ZARRSTAIN, "predict", store, "--model", package, "--workers", "2",
               "--halo", "exact")  # fmt: skip
    assert "A/1/0: written" in out.stdout + out.stderr
    weights = tmp_path / "trained.meanstd.json"
    done = _run(plugin_env, sys.executable, "-c", CHECK, store, package, tmp_path / "copy",
                weights)  # fmt: skip
    expected = np.array(json.loads(done.stdout.splitlines()[-1]), dtype=np.float32)
    # the plug-in's own file format, through the CLI like any model file
    new = tmp_path / "from-json.zarr"
    _run(plugin_env, ZARRSTAIN, "predict", store, "--model", weights, "--out", new,
         "--halo", "exact", "--scene", "A/1/0")  # fmt: skip
    image = zarrstain.open_image(new, "A/1/0")
    assert list(image.coords["c"].values) == ["DNA (predicted)", "DNA (predicted) std"]
    np.testing.assert_allclose(image.values, expected, rtol=1e-5, atol=1e-5)
    # the family's run option: a flag made from its declared schema, checked by zarrstain
    scaled = tmp_path / "scaled.zarr"
    _run(plugin_env, ZARRSTAIN, "predict", store, "--model", package, "--out", scaled,
         "--halo", "exact", "--scene", "A/1/0", "--std-scale", "2")  # fmt: skip
    values = zarrstain.open_image(scaled, "A/1/0").values
    np.testing.assert_allclose(values[:, 0], expected[:, 0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(values[:, 1], 2 * expected[:, 1], rtol=1e-5, atol=1e-5)
    bad = subprocess.run(
        [ZARRSTAIN, "predict", store, "--model", package, "--std-scale", "-1"],
        env=plugin_env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "--std-scale must be a number ≥ 0, not -1" in bad.stderr
    help_text = _run(plugin_env, ZARRSTAIN, "predict", "--help").stdout
    assert "--std-scale FLOAT" in help_text and "mean-std: Multiply the predicted std" in help_text
    assert "mean-std" not in ARCHITECTURES.entry_points()
    # its segmenter, found by --objects through its entry point
    scores = _run(plugin_env, ZARRSTAIN, "evaluate", store, "--prediction", "DNA (predicted)",
                  "--target", "DNA", "--objects", "brightest", "--no-labels", "--json")  # fmt: skip
    summary = json.loads(scores.stdout)["summary"]
    assert summary["n_true"] > 0 and 0 <= summary["f1"] <= 1
