"""Real data: In silico labeling's rat neurons, 13 phase-contrast planes → DAPI, MAP2, NFH.

Run: python examples/isl_phase_to_dapi.py [OUTPUT_DIR] [--steps N] [--device cuda] [--data DIR]

1. converts ``../shared/data/isl_condition_blue`` (13 phase planes and confocal DAPI, MAP2, NFH
   max projections, 1024×1024, uint16; Christiansen et al. 2018, Apache-2.0) into an OME-Zarr
   image whose channels are ``phase z00`` … ``phase z12``, ``DAPI``, ``MAP2``, ``NFH``;
2. trains a 2D fnet on the left half of the well: the 13 planes enter as input channels through
   a learned per-pixel projection (In silico labeling's way of reading a z-stack), the three
   stains are its outputs;
3. predicts the whole well, writes the predicted channels back in place (in the stains' units:
   the model carries their intensity scale), and evaluates the right half, which training never
   saw: ``evaluation.csv`` / ``.md`` per stain and a PNG panel each.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.evaluation.evaluate import evaluate
from zarrstain.evaluation.report import format_table
from zarrstain.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ZARRSTAIN_SHARED", ROOT.parent / "shared")) / "data"
PHASE = [f"phase z{i:02d}" for i in range(13)]
STAINS = {"DAPI": "dapi", "MAP2": "map2", "NFH": "nfh"}


def convert(source: Path, store: Path) -> Path:
    """The ISL PNGs as one OME-Zarr image (c, y, x), phase planes first."""
    planes = [np.asarray(Image.open(source / f"phase_z{i:02d}.png")) for i in range(13)]
    planes += [
        np.asarray(Image.open(source / f"{n}_confocal_maxproject.png")) for n in STAINS.values()
    ]
    data = np.stack(planes).astype(np.uint16)
    if store.exists():
        shutil.rmtree(store)
    datasets.save_image(
        store, data, "cyx", channel_labels=PHASE + list(STAINS), chunks=(1, 256, 256), levels=3
    )
    return store


def main(
    out_dir: str = "isl-output",
    steps: int = 600,
    data: Path = DATA / "isl_condition_blue",
    stains: tuple[str, ...] = tuple(STAINS),
    device: str = "auto",
):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not data.is_dir():
        raise SystemExit(f"{data} is absent: this example needs the shared ISL data")
    store = convert(data, out / "isl.zarr")
    config = TrainConfig(
        inputs=PHASE,
        targets=list(stains),
        model="fnet2d",
        depth=4,
        mult_chan=16,
        projection=16,
        steps=steps,
        batch_size=8,
        patch=[128, 128],
        normalization="zscore",
        val_fraction=0.5,
        val_patches=32,
        validate_every=100,
        checkpoint_every=200,
        device=device,
    )
    result = train(store, config, out / "model", overwrite=True)  # this script remakes its outputs
    # predict the whole well; evaluate only the right half, which training never saw
    plan_prediction(store, result.model, halo="exact", device=device).run()
    width = zarrstain.open_image(store).sizes["x"]
    right = slice(width // 2, width)
    rows = []
    for stain in stains:
        ev = evaluate(
            store,
            f"{stain} (predicted)",
            stain,
            input_channel="phase z06",
            x_range=right,
            out=out / f"evaluation-{stain}",
        )
        rows.append({"stain": stain, **{k: round(v, 4) for k, v in ev.summary.items()}})
    print(format_table(rows))
    (out / "isl-evaluation.md").write_text(
        "Right half of the well (held out), 2D fnet on 13 phase planes:\n\n"
        + zarrstain.evaluation.report.markdown_table(rows)
        + "\n"
    )
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description="ISL phase → DAPI/MAP2/NFH on real data")
    parser.add_argument("out", nargs="?", default="isl-output")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--data", type=Path, default=DATA / "isl_condition_blue")
    parser.add_argument("--stains", nargs="+", default=list(STAINS), choices=list(STAINS))
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    main(args.out, args.steps, args.data, tuple(args.stains), args.device)
