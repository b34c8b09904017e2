"""Model packages on disk, and the contract every registered architecture must satisfy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import assert_same

import zarrstain
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.tiling import predict_whole
from zarrstain.errors import ModelError
from zarrstain.models import ARCHITECTURES, BlockContext
from zarrstain.testing import random_model

SMALL = {
    "fnet": {"depth": 2, "mult_chan": 3},
    "diffusion": {"width": 4, "mults": [1, 2], "sample_steps": 3},
    "classifier": {"class_names": ["a", "b"], "output_labels": ("p(a)", "p(b)"), "width": 4},
}
#: architectures that write their own channels (a sampler's mean and std, class
#: probabilities), not a head's
OWN_OUTPUTS = {"diffusion", "classifier"}
#: architectures built on another package (a control branch needs its backbone) or loaded
#: from a file only (TorchScript, VisCy, bioimage.io): their contract (shapes, radius, exact
#: tiling, package round trip) is tested in these files
CONTRACT_ELSEWHERE = {
    "control": "tests/models/diffusion/test_control.py",
    "torchscript": "tests/models/formats/test_torchscript.py",
    "viscy": "tests/models/viscy/test_viscy.py",
    "bioimageio": "tests/models/formats/test_bioimageio.py",
}
assert set(ARCHITECTURES) <= set(SMALL) | set(CONTRACT_ELSEWHERE), "add new architectures"


def _measured_radius(model, size: int) -> int:
    """Largest input offset with a non-zero gradient on the centre output voxel, over axes.

    Of the first pass (a sampler's first step), as the architecture runs it.
    """
    shape = (1, model.in_channels) + (size,) * model.spatial_dims
    x = torch.randn(shape, requires_grad=True)
    out = model.spec.run(model.module, x, BlockContext.whole(x, options=model.run_options))
    centre = (0, 0) + (size // 2,) * model.spatial_dims
    out[centre].backward()
    support = np.argwhere(x.grad[0].abs().sum(0).numpy() > 0)
    return int(np.abs(support - size // 2).max())


#: every output head (zarrstain.models.heads); the bins head's mode is left out here: an argmax
#: is discontinuous, so float rounding between tiles can flip it at near-ties
HEADS = {
    "value": None,
    "bins": {"kind": "bins", "bins": 8, "range": [-2.0, 2.0], "extras": ["median"],
             "interval": True},
    "quantiles": {"kind": "quantiles", "alpha": 0.2},
}  # fmt: skip


@pytest.mark.parametrize(
    ("architecture", "head"),
    [(a, h) for a in sorted(set(ARCHITECTURES) - set(CONTRACT_ELSEWHERE)) for h in sorted(HEADS)
     if a not in OWN_OUTPUTS or h == "value"],
)  # fmt: skip
@pytest.mark.parametrize("ndim", [2, 3])
def test_architecture_contract(architecture, ndim, head, tmp_path):
    extra = {"head": HEADS[head]} if HEADS[head] else {}
    model = random_model(architecture, ndim=ndim, **SMALL[architecture], **extra)
    assert model.spatial_dims == ndim and len(model.receptive_radius) == ndim
    assert model.divisor >= 1 and model.content_hash
    # 1. same spatial size out as in, for multiples of the divisor
    size = 4 * model.divisor
    x = torch.randn((2, model.in_channels) + (size,) * ndim)
    out = model.forward(x)
    assert out.shape == (2, len(model.output_labels)) + (size,) * ndim
    # 2. the declared receptive radius bounds the measured one
    model.module.train(False)
    assert _measured_radius(model, 2 * model.receptive_radius[0] + 2 * model.divisor) <= max(
        model.receptive_radius
    )
    # 3. exact tiling reproduces the whole-volume forward
    shape = (1, model.in_channels, 1 if ndim == 2 else 2 * model.divisor + 3, 61, 70)
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    chunks = {"y": 2 * model.divisor, "x": 2 * model.divisor}
    pred = zarrstain.predict(
        data,
        model,
        predict_options=PredictOptions(halo="exact", normalize=None, chunks=chunks, batch_size=1),
    )
    assert_same(pred.values, predict_whole(data, model))
    # 4. a package round trip keeps the weights, labels and hash
    loaded = zarrstain.load_model(zarrstain.save_model(model, tmp_path / "pkg"))
    assert loaded.content_hash == model.content_hash
    assert loaded.input_labels == model.input_labels
    assert loaded.output_labels == model.output_labels
    np.testing.assert_array_equal(loaded.forward(x).numpy(), out.numpy())


@pytest.fixture
def package(tmp_path):
    model = random_model(seed=2)
    return zarrstain.save_model(model, tmp_path / "pkg", training={"steps": 10}), model


def test_card_is_human_readable(package):
    folder, model = package
    card = json.loads((folder / "card.json").read_text())
    assert card["architecture"] == "fnet" and card["kwargs"]["depth"] == 2
    assert card["input_labels"] == ["BF"] and card["output_labels"] == ["DNA (predicted)"]
    assert card["divisor"] == 4 and card["receptive_radius"] == [24, 24, 24]
    assert card["normalization"] == "center" and card["training"] == {"steps": 10}
    assert card["content_hash"] == model.content_hash
    assert "DNA (predicted)" in (folder / "README.md").read_text()


def test_output_label_renames_single_output(package):
    folder, _ = package
    assert zarrstain.load_model(folder, output_label="Nuclei").output_labels == ("Nuclei",)


def test_swapped_weights_are_refused(package, tmp_path):
    folder, _ = package
    other = random_model(seed=3)
    torch.save(other.module.state_dict(), folder / "weights.pt")
    with pytest.raises(ModelError, match="does not match its card"):
        zarrstain.load_model(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: {**c, "format": "other"}, "not a zarrstain model card"),
        (lambda c: {**c, "format_version": 9}, "upgrade zarrstain"),
        (lambda c: {**c, "architecture": "vit"}, "unknown architecture 'vit'"),
        (lambda c: {**c, "kwargs": {**c["kwargs"], "depth": 3}}, "weights do not load"),
        (lambda c: {k: v for k, v in c.items() if k != "output_labels"}, "lacks 'output_labels'"),
    ],
)
def test_bad_cards(package, change, message):
    folder, _ = package
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps(change(card)))
    with pytest.raises(ModelError, match=message):
        zarrstain.load_model(folder)


def test_unreadable_card_and_weights(package):
    folder, _ = package
    (folder / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(ModelError, match="weights do not load"):
        zarrstain.load_model(folder)
    (folder / "card.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read the model card"):
        zarrstain.load_model(folder)


def test_save_refuses_to_replace_other_things(package, tmp_path):
    folder, model = package
    with pytest.raises(ModelError, match="overwrite=True"):
        zarrstain.save_model(model, folder)
    assert zarrstain.save_model(model, folder, overwrite=True) == folder
    (tmp_path / "data").mkdir()
    with pytest.raises(ModelError, match="not a model package"):
        zarrstain.save_model(model, tmp_path / "data", overwrite=True)


def test_foreign_paths(tmp_path):
    with pytest.raises(ModelError, match="no model at"):
        zarrstain.load_model(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelError, match="not a model zarrstain can load"):
        zarrstain.load_model(tmp_path / "weights.bin")
