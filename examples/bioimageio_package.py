"""Share a model as a bioimage.io package, check it as the zoo does, and run it over a plate.

Run: python examples/bioimageio_package.py [OUTPUT_DIR] [MODEL]

MODEL is any model ``zarrstain.load_model`` reads (a zarrstain package, a pytorch_fnet
checkpoint, a VisCy ``.ckpt`` with its card ...). Without one, the example saves a small
*untrained* 2D fnet first: the numbers mean nothing, every step is the one a trained model
takes. Needs ``pip install 'zarrstain[bioimageio]'``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.export import export_bioimageio
from zarrstain.export.bioimageio import sample_from_store
from zarrstain.testing import random_model


def main(out_dir: str = "example-output", model_path: str | None = None) -> Path:
    from bioimageio.core import test_model

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plate = datasets.make_plate(
        out / "plate.zarr", rows=("A",), columns=("1",), fields=1, shape=(1, 1, 96, 96)
    )
    if model_path is None:
        untrained = random_model(ndim=2, depth=2, mult_chan=4, normalization="zscore")
        model_path = zarrstain.save_model(untrained, out / "untrained-fnet", overwrite=True)
    model = zarrstain.load_model(model_path)

    # 1. Export: both weight formats, test tensors and a cover from a field of the plate.
    package = export_bioimageio(
        model,
        out / "model.zip",
        sample=sample_from_store(plate, model),
        authors=["Example Author"],
        overwrite=True,
    )
    # 2. The zoo's own check: the package reproduces its test output with both formats.
    summary = test_model(package)
    print(f"bioimageio.core test_model: {summary.status}")

    # 3. Any bioimage.io package loads as a model and runs lazily over whole plates.
    loaded = zarrstain.load_model(package)
    plan_prediction(plate, loaded, out=out / "predicted.zarr", halo="exact").run()
    written = zarrstain.open_image(out / "predicted.zarr", "A/1/0")
    direct = zarrstain.predict(zarrstain.open_image(plate, "A/1/0"), model, halo="exact")
    diff = np.abs(written.sel(c=list(model.output_labels)).values - direct.values).max()
    labels = [str(c) for c in written.c.values]
    print(f"channels written: {labels}; max |package - original| = {diff:.2g}")
    return package


if __name__ == "__main__":
    main(*sys.argv[1:3])
