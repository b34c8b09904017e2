"""Few-sample adaptation: FluoGen's control branch vs the same network from scratch vs fnet.

A lab has fluorescence everywhere and paired (brightfield, fluorescence) images of a few
fields. FluoGen's answer: pretrain a diffusion backbone on the fluorescence alone, freeze it,
and train a control branch on the pairs. This benchmark measures whether that beats the two
obvious alternatives trained on the same N pairs for the same number of steps:

- ``control``: a branch with quantile heads on the frozen backbone (``--model control``);
- ``scratch``: the same conditional diffusion network (the backbone's layout, reading the
  condition itself) trained from scratch on the N pairs (``--model diffusion2d``);
- ``fnet``: pytorch_fnet's U-Net (``--model fnet2d``), MSE.

Tasks:

- **synthetic plate** (rows A-G × 4 columns × 2 fields of 96², ``datasets.make_plate`` with
  ``low_snr=True``): the backbone is pretrained on every well's DNA (unpaired fluorescence);
  pairs come from N = 5, 10, 30 fields of rows A-D; row E calibrates the control branch's
  intervals (CQR, α = 0.1); rows F-G (16 fields) are held out for PCC / SSIM, coverage and
  width. Virtual staining BF → DNA at every N, and denoising ``DNA lowSNR`` → DNA at N = 10
  on the same backbone (with the noisy input's own PCC as the floor).
- **ISL well** (``../shared/data/isl_condition_blue``, skipped when absent): the backbone on
  the DAPI of the left half; pairs are N patches of 128² from the left half (13 phase planes →
  DAPI); the right half is held out (its left quarter calibrates, the rest evaluates).

Diffusion models sample with 10 deterministic DDIM steps (FluoGen's setting) and seed 0.
Writes ``<out>/few_shot.json`` and ``few_shot.md``. About 60 minutes on 2 CPU cores;
``--quick`` runs the whole pipeline at toy sizes in about two minutes (a smoke test, numbers
meaningless).

Usage::

    python benchmarks/few_shot.py [--out DIR] [--quick] [--device cpu|cuda] [--no-isl]
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
from zarrstain.uncertainty.calibrate import calibrate

FULL = {"size": 96, "rows": "ABCDEFG", "backbone_steps": 1500, "steps": 400, "width": 16,
        "patch": 64, "batch": 8, "sample_steps": 10, "n": (5, 10, 30), "denoise_n": 10,
        "isl_n": (10, 30), "isl_backbone_steps": 1000, "isl_patch": 128}  # fmt: skip
QUICK = {"size": 32, "rows": "ABCDEFG", "backbone_steps": 4, "steps": 3, "width": 8,
         "patch": 32, "batch": 2, "sample_steps": 2, "n": (5,), "denoise_n": 5,
         "isl_n": (5,), "isl_backbone_steps": 3, "isl_patch": 64}  # fmt: skip


def _diffusion_kwargs(s: dict) -> dict:
    mults = [1, 2] if s["width"] < 16 else [1, 2, 2]
    return {"width": s["width"], "mults": mults, "objective": "v", "zero_snr": True}


def _config(s: dict, model: str, inputs: list[str], target: str, steps: int, **kw) -> TrainConfig:
    return TrainConfig(model=model, inputs=inputs, targets=[target], steps=steps,
                       batch_size=s["batch"], patch=[s["patch"]] * 2, normalization="zscore",
                       device=s["device"], checkpoint_every=max(steps, 1), **kw)  # fmt: skip


def _train_all(s, stores, backbone, inputs, target, scenes, out) -> dict:
    """The three models on the same pairs, for the same steps; their training seconds."""
    models, seconds = {}, {}
    recipes = {
        "control": {"model": "control", "backbone": str(backbone), "head": "quantiles"},
        "scratch": {"model": "diffusion2d", "model_kwargs": _diffusion_kwargs(s)},
        "fnet": {"model": "fnet2d", "depth": 3, "mult_chan": s["width"]},
    }
    for name, recipe in recipes.items():
        start = time.perf_counter()
        config = _config(s, recipe.pop("model"), inputs, target, s["steps"], scenes=scenes,
                         **recipe)  # fmt: skip
        models[name] = train(stores, config, out / name, overwrite=True).model
        seconds[name] = round(time.perf_counter() - start, 1)
    return {"models": models, "seconds": seconds}


def _scores(model, images, target: str, s: dict, crop=None) -> dict:
    """Mean PCC / SSIM (and coverage / width with an interval) over held-out images."""
    rows = []
    for image in images:
        sampled = {"steps": s["sample_steps"]} if model.spec.stochastic else None
        pred = zarrstain.predict(image, model, device=s["device"], options=sampled)
        if crop is not None:
            pred, image = pred.isel(x=crop), image.isel(x=crop)
        y = image.sel(c=target).values[0, 0].astype(np.float64)
        label = model.output_labels[0]
        p = pred.sel(c=label).values[0, 0]
        row = {"pcc": metrics.pearson(y, p), "ssim": metrics.ssim(y, p)}
        if f"{label} lower" in model.output_labels:
            lo, hi = (pred.sel(c=f"{label} {b}").values[0, 0] for b in ("lower", "upper"))
            row["coverage"] = metrics.coverage(y, lo, hi)
            row["width"] = metrics.interval_width(y, lo, hi)
        rows.append(row)
    return {k: round(float(np.mean([r[k] for r in rows])), 4) for k in rows[0]}


def _rows(task, n, trained, images, target, s, calibrate_with, crop=None) -> list[dict]:
    out = []
    for name, model in trained["models"].items():
        if name == "control":
            model = calibrate_with(model)
        row = {"task": task, "N": n, "model": name, **_scores(model, images, target, s, crop)}
        out.append({**row, "train_s": trained["seconds"][name]})
        logging.info("%s", out[-1])
    return out


def synthetic(out: Path, s: dict) -> list[dict]:
    rows_ = s["rows"]
    plate = datasets.make_plate(out / "plate.zarr", rows=list(rows_), columns=list("1234"),
                                fields=2, shape=(1, 1, s["size"], s["size"]), levels=1,
                                low_snr=True, seed=7)  # fmt: skip

    def scenes(rows: str) -> list[str]:
        return [f"{r}/{c}/{f}" for r in rows for c in "1234" for f in "01"]

    pool = list(np.random.default_rng(0).permutation(scenes(rows_[:4])))
    cal, test = scenes(rows_[4]), scenes(rows_[5:])
    backbone = out / "backbone"
    config = _config(s, "diffusion2d", [], "DNA", s["backbone_steps"], unconditional=True,
                     model_kwargs=_diffusion_kwargs(s))  # fmt: skip
    train(plate, config, backbone, overwrite=True)  # every well's DNA: unpaired fluorescence
    images = list(zarrstain.open_scenes(plate, scenes=test).values())

    def calibrated(model):
        return calibrate(plate, model, scenes=cal, method="cqr",
                         options={"steps": s["sample_steps"]})  # fmt: skip

    rows = []
    for n in s["n"]:
        trained = _train_all(s, plate, backbone, ["BF"], "DNA", pool[:n], out / f"stain-{n}")
        rows += _rows("synthetic BF → DNA", n, trained, images, "DNA", s, calibrated)
    n = s["denoise_n"]
    trained = _train_all(s, plate, backbone, ["DNA lowSNR"], "DNA", pool[:n], out / f"noise-{n}")
    rows += _rows("synthetic DNA lowSNR → DNA", n, trained, images, "DNA", s, calibrated)
    noisy = [
        metrics.pearson(im.sel(c="DNA").values[0, 0], im.sel(c="DNA lowSNR").values[0, 0])
        for im in images
    ]
    rows.append({"task": "synthetic DNA lowSNR → DNA", "N": 0, "model": "noisy input",
                 "pcc": round(float(np.mean(noisy)), 4)})  # fmt: skip
    return rows


def isl(out: Path, s: dict) -> list[dict]:
    loaded = isl_well(out, corner=s["size"] < 96)  # --quick: a corner
    if loaded is None:
        return []
    well, data = loaded
    width = data.shape[-1]
    backbone = out / "isl-backbone"
    config = _config(s, "diffusion2d", [], "DAPI", s["isl_backbone_steps"], unconditional=True,
                     model_kwargs=_diffusion_kwargs(s), val_fraction=0.5)  # fmt: skip
    train(well, config, backbone, overwrite=True)  # the left half's DAPI only
    # the right half: its first quarter of the width calibrates, the rest evaluates; each
    # predicted with 64 px of context to its left
    image = zarrstain.open_image(well)
    half, margin = width // 2, 64
    cal_image = image.isel(x=slice(half - margin, half + width // 8))
    test_image = image.isel(x=slice(half + width // 8 - margin, width))
    datasets.save_image(out / "isl-cal.zarr", cal_image.values[0, :, 0], "cyx", levels=1,
                        channel_labels=[*PHASE, "DAPI"], chunks=(1, 256, 256))  # fmt: skip
    rng = np.random.default_rng(0)
    p = s["isl_patch"]
    rows = []
    for n in s["isl_n"]:
        stores = []
        for k in range(n):  # N paired patches of the left half, each its own image
            y0, x0 = rng.integers(0, data.shape[1] - p), rng.integers(0, half - p)
            path = out / f"isl-patches-{n}" / f"{k}.zarr"
            datasets.save_image(path, data[:, y0 : y0 + p, x0 : x0 + p], "cyx",
                                channel_labels=[*PHASE, "DAPI"], levels=1)  # fmt: skip
            stores.append(path)
        s_patch = {**s, "patch": min(s["patch"], p)}
        trained = _train_all(s_patch, stores, backbone, PHASE, "DAPI", None, out / f"isl-{n}")

        def calibrated(model):
            return calibrate(out / "isl-cal.zarr", model, method="cqr",
                             options={"steps": s["sample_steps"]},
                             region={"x": slice(margin, None)})  # fmt: skip

        rows += _rows("ISL phase → DAPI", n, trained, [test_image], "DAPI", s, calibrated,
                      crop=slice(margin, None))  # fmt: skip
    return rows


def main() -> None:
    run("few_shot", __doc__, (FULL, QUICK), synthetic, isl)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    main()
