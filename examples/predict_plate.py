"""Predict a channel for every field of a plate with a model, exactly tiled, and write it back.

Run: python examples/predict_plate.py [OUTPUT_DIR] [MODEL]

MODEL is a zarrstain model folder or a pytorch_fnet checkpoint (``model.p`` or its folder).
Without one, the example saves a small *untrained* fnet as a model package first: the numbers
it predicts mean nothing, but every step (loading, global normalization, exact tiling, writing
with pyramids and provenance) is the one a trained model goes through.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import format_plan, plan_prediction
from zarrstain.engine.tiling import predict_whole
from zarrstain.progress import ProgressEvent
from zarrstain.testing import random_model


def main(out_dir: str = "example-output", model_path: str | None = None) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plate = datasets.make_plate(
        out / "plate.zarr", rows=("A",), columns=("1", "2"), fields=1, shape=(1, 16, 70, 66)
    )
    if model_path is None:
        model_path = zarrstain.save_model(
            random_model(ndim=3, depth=2, mult_chan=4), out / "untrained-fnet", overwrite=True
        )
    model = zarrstain.load_model(model_path, output_label="DNA (predicted)")
    print(
        f"model {model.name}: {model.spatial_dims}D, divisor {model.divisor}, "
        f"receptive radius {model.receptive_radius}"
    )

    # 1. In Python: a lazy prediction of one scene, cut into blocks, exact at every voxel.
    image = zarrstain.open_image(plate, "A/1/0")
    inputs = dict(input_channels=["BF"]) if not model.input_labels else {}
    pred = zarrstain.predict(image, model, halo="exact", chunks={"y": 32, "x": 32}, **inputs)
    print("blocks:", pred.attrs["zarrstain"]["tiling"])
    whole = predict_whole(zarrstain.normalize(image.sel(c=["BF"]), "center").values, model)
    print("max |tiled - whole volume| =", float(np.abs(pred.values - whole).max()))

    # 2. Store to store: check and plan (metadata only), then run with a progress callback.
    plan = plan_prediction(
        plate, model, out=out / "predicted.zarr", copy_channels=True, halo="exact", **inputs
    )
    print(format_plan(plan.describe()))

    def report(event: ProgressEvent) -> None:  # every long call reports this way
        if event.done == event.total or event.done % 10 == 0:
            print(f"{event.stage}: block {event.done}/{event.total}")

    print(plan.run(progress=report))
    written = zarrstain.open_image(out / "predicted.zarr", "A/2/0")
    print("channels written:", list(written.c.values))
    return out / "predicted.zarr"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(*sys.argv[1:3])
