"""pix2pix vs MSE: what MMV_Im2Im's adversarial training buys, in PCC, SSIM and sharpness.

GANs are known to trade correlation for sharpness: an MSE-trained network predicts the mean
of the images its input allows (smooth where it is unsure), a discriminator pushes the
generator towards images that look acquired. This benchmark trains the same generator three
ways on the same patches, for the same steps, with the same generator optimizer:

- ``mse``: zarrstain's default training (``--model fnet2d``, MSE);
- ``pix2pix MMV``: ``--model pix2pix`` with MMV_Im2Im's label-free weights (BCE ×1 + MSE ×1000);
- ``pix2pix L1``: Isola et al.'s pix2pix weights (BCE ×1 + L1 ×100).

Both pix2pix runs use the PatchGAN critic's defaults (4 layers, 64 channels, Adam 2e-4,
β (0.5, 0.999)); the generator keeps zarrstain's Adam 1e-3 in all three, because the runs are
short (MMV_Im2Im's 2e-4 would leave every model undertrained and the comparison moot).

Tasks:

- **synthetic plate** (``datasets.make_plate``: 4 rows × 4 columns × 2 fields of 128², BF →
  DNA): trained on rows A-C, scored on row D.
- **ISL well** (``../shared/data/isl_condition_blue``, skipped when absent): 13 phase planes →
  DAPI, 2D fnet with a learned projection (``examples/isl_phase_to_dapi.py``'s recipe),
  trained on the left half, scored on the right half.

Scores: PCC, SSIM and ``sharpness`` (``zarrstain.evaluation.metrics``: the prediction's share
of power above half the Nyquist frequency over the target's; 1 = as much fine detail as the
target).
Writes ``<out>/pix2pix.json`` and ``pix2pix.md``. About 30 minutes on 2 CPU cores;
``--quick`` runs the pipeline at toy sizes (a smoke test, numbers meaningless).

Usage::

    python benchmarks/pix2pix.py [--out DIR] [--quick] [--device cpu|cuda] [--no-isl]
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
from common import PHASE, isl_well, run

import zarrstain
from zarrstain import datasets
from zarrstain.evaluation import metrics
from zarrstain.training import TrainConfig, train

FULL = {"size": 128, "steps": 600, "isl_steps": 600, "batch": 8, "patch": 64,
        "isl_patch": 128, "width": 16, "depth": 4}  # fmt: skip
QUICK = {"size": 64, "steps": 4, "isl_steps": 3, "batch": 2, "patch": 32, "isl_patch": 64,
         "width": 4, "depth": 2}  # fmt: skip

#: the three trainings compared: TrainConfig fields beyond the shared ones
RECIPES = {
    "mse": {"model": "fnet2d"},
    "pix2pix MMV": {"model": "pix2pix", "generator": "fnet2d"},
    "pix2pix L1": {"model": "pix2pix", "generator": "fnet2d", "reconstruction_loss": "l1",
                   "reconstruction_weight": 100.0},
}  # fmt: skip


def _scores(target: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    return {
        "pcc": round(metrics.pearson(target, prediction), 4),
        "ssim": round(metrics.ssim(target, prediction), 4),
        "sharpness": round(metrics.sharpness(target, prediction), 3),
    }


def _compare(task, stores, score, s, out: Path, steps: int, patch: int, **shared) -> list[dict]:
    """Train each recipe on the same data; ``score(model)`` returns its held-out scores."""
    rows = []
    for name, recipe in RECIPES.items():
        config = TrainConfig(**recipe, steps=steps, batch_size=s["batch"], patch=[patch] * 2,
                             depth=s["depth"], mult_chan=s["width"], normalization="zscore",
                             device=s["device"], checkpoint_every=steps, seed=0,
                             **shared)  # fmt: skip
        start = time.perf_counter()
        result = train(stores, config, out / name.replace(" ", "-"), overwrite=True)
        seconds = round(time.perf_counter() - start, 1)
        rows.append({"task": task, "training": name, **score(result.model), "train_s": seconds})
        logging.info("%s", rows[-1])
    return rows


def synthetic(out: Path, s: dict) -> list[dict]:
    plate = datasets.make_plate(out / "plate.zarr", rows=list("ABCD"), columns=list("1234"),
                                fields=2, shape=(1, 1, s["size"], s["size"]), levels=1,
                                seed=11)  # fmt: skip
    train_scenes = [f"{r}/{c}/{f}" for r in "ABC" for c in "1234" for f in "01"]
    held_out = list(zarrstain.open_scenes(plate, scenes=[f"D/{c}/{f}" for c in "1234"
                                                          for f in "01"]).values())  # fmt: skip

    def score(model) -> dict[str, float]:
        rows = []
        for image in held_out:
            pred = zarrstain.predict(image, model, device=s["device"])
            rows.append(_scores(image.sel(c="DNA").values, pred.values[:, 0]))
        return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}

    return _compare("synthetic BF → DNA", plate, score, s, out / "synthetic", s["steps"],
                    s["patch"], inputs=["BF"], targets=["DNA"],
                    scenes=train_scenes)  # fmt: skip


def isl(out: Path, s: dict) -> list[dict]:
    loaded = isl_well(out, corner=s["size"] < 128)  # --quick: a corner
    if loaded is None:
        return []
    well, data = loaded
    image = zarrstain.open_image(well)
    right = slice(data.shape[-1] // 2, None)

    def score(model) -> dict[str, float]:
        pred = zarrstain.predict(image, model, device=s["device"]).isel(x=right)
        return _scores(image.sel(c="DAPI").isel(x=right).values, pred.values[:, 0])

    return _compare("ISL phase → DAPI", well, score, s, out / "isl", s["isl_steps"],
                    s["isl_patch"], inputs=PHASE, targets=["DAPI"], projection=16,
                    val_fraction=0.5, validate_every=max(s["isl_steps"], 1))  # fmt: skip


def main() -> None:
    run("pix2pix", __doc__, (FULL, QUICK), synthetic, isl)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
