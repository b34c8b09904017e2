"""Add your own architecture: a value + std model, trained, tiled exactly and written back.

Defines a small plug-in (``MeanStd``: a value and its standard deviation per target, trained
with a Gaussian negative log-likelihood), registers it, trains it for a few steps on a
generated image, predicts with exact tiling and writes both channels into a new store: the
value as uint16, the std as float32. No engine file knows this architecture.

Usage::

    python examples/custom_architecture.py [DIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import zarrstain
from zarrstain import datasets
from zarrstain.engine.options import PredictOptions
from zarrstain.engine.tiling import predict_whole
from zarrstain.models import Architecture, Geometry, Head, register
from zarrstain.training import TrainConfig


class MeanStd(Architecture):
    """A local 3D net predicting a value and its standard deviation per target."""

    name = "example-mean-std"
    loss_name = "Gaussian NLL"

    def build(self, in_channels: int = 1, out_channels: int = 2, width: int = 8) -> nn.Module:
        return nn.Sequential(
            nn.Conv3d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv3d(width, out_channels, 3, padding=1),
        )

    def geometry(self, kwargs):  # two 3-convolutions: radius 2 along each axis, all local
        return Geometry(spatial_dims=3, divisor=1, radii=((2, 2, 2),), local=True)

    def heads(self, kwargs):
        return (Head("value"), Head("std", " std", dtype="float32"))

    def channels(self, kwargs, n_inputs, n_outputs):
        return {"in_channels": n_inputs, "out_channels": n_outputs, **kwargs}

    def bytes_per_voxel(self, kwargs):
        return 4 * 4 * int(kwargs.get("width", 8)) + 64

    def run(self, module, x, context):
        out = module(x)
        return torch.cat([out[:, 0::2], nn.functional.softplus(out[:, 1::2]) + 1e-3], 1)

    def loss(self, prediction, target):
        return nn.functional.gaussian_nll_loss(prediction[:, 0::2], target, prediction[:, 1::2])


def main(folder: Path) -> None:
    register(MeanStd(), replace=True)
    store = datasets.make_image(folder / "image.zarr", shape=(1, 8, 64, 64), seed=0)
    config = TrainConfig(
        inputs=["BF"], targets=["DNA"], model="example-mean-std", steps=20, batch_size=4,
        patch=[8, 32, 32], device="cpu",
    )  # fmt: skip
    result = zarrstain.train(store, config, folder / "mean-std-model", overwrite=True)
    model = zarrstain.load_model(result.package)
    print(f"trained {model.architecture}: {list(model.output_labels)}")
    print(f"loss {result.history[0]['loss']:.3f} → {result.history[-1]['loss']:.3f}")

    scene = zarrstain.open_image(store)
    pred = zarrstain.predict(scene, model, halo="exact", chunks={"y": 16, "x": 16})
    blocks = {"y": 16, "x": 16}
    # in normalized units (no denormalization), exactly tiled: the settings as one object
    run = PredictOptions(denormalize=False, normalize="none", halo="exact", chunks=blocks)
    raw = zarrstain.predict(scene, model, predict_options=run)
    whole = predict_whole(scene.sel(c=["BF"]).values.astype(np.float32), model)
    print(f"max |tiled - whole volume| = {np.abs(raw.values - whole).max():.2e}")

    out = folder / "predicted.zarr"
    zarrstain.write_channels(
        store, pred, out=out, copy_channels=["BF"], dtype={"DNA (predicted)": "uint16"},
        overwrite=True,
    )  # fmt: skip
    written = zarrstain.open_image(out)
    std = written.sel(c="DNA (predicted) std").values
    print(f"wrote {[str(c) for c in written.c.values]} to {out}")
    print(f"std channel: mean {std.mean():.1f} (in DNA's units: the target's scale, no offset)")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
