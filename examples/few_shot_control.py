"""FluoGen in zarrstain: a frozen diffusion backbone, a control branch from a few pairs, and
calibrated intervals.

Run: python examples/few_shot_control.py [OUTPUT_DIR] [--steps N] [--backbone-steps N]

1. writes a synthetic plate (3 × 4 wells, 2 fields each) with a low-SNR acquisition of the
   fluorescence beside the normal one (``low_snr=True``);
2. pretrains a diffusion backbone on every well's DNA alone (``unconditional=True``): the
   fluorescence a lab has everywhere, no pairs needed;
3. trains two control branches on that frozen backbone from 5 paired fields of row A:
   virtual staining (BF → DNA) and denoising (``DNA lowSNR`` → DNA), both with FluoGen's
   quantile heads;
4. calibrates the staining branch's intervals on row B (CQR, 90 %), predicts row C (which
   nothing saw) back into the plate and evaluates it: PCC, SSIM, coverage and width.

The numbers of a longer run, and the comparison with training from scratch and fnet, are in
the README ("Few pairs", from ``benchmarks/few_shot.py``).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.evaluation import metrics
from zarrstain.evaluation.evaluate import evaluate
from zarrstain.evaluation.report import format_table
from zarrstain.training import TrainConfig, train
from zarrstain.uncertainty.calibrate import calibrate

WELLS = {row: [f"{row}/{c}/{f}" for c in "1234" for f in "01"] for row in "ABC"}


def main(out_dir: str = "few-shot-example", steps: int = 300, backbone_steps: int = 600):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plate = datasets.make_plate(out / "plate.zarr", rows=list(WELLS), columns=list("1234"),
                                shape=(1, 1, 96, 96), levels=1, low_snr=True)  # fmt: skip
    common = {"targets": ["DNA"], "batch_size": 8, "patch": [64, 64], "normalization": "zscore",
              "checkpoint_every": max(steps, backbone_steps)}  # fmt: skip
    backbone = out / "backbone"
    train(plate, TrainConfig(model="diffusion2d", inputs=[], unconditional=True,
                             steps=backbone_steps, **common,
                             model_kwargs={"objective": "v", "zero_snr": True}),
          backbone, overwrite=True)  # fmt: skip
    pairs = WELLS["A"][:5]
    branches = {}
    for task, condition in (("staining", "BF"), ("denoising", "DNA lowSNR")):
        config = TrainConfig(model="control", backbone=str(backbone), inputs=[condition],
                             head="quantiles", scenes=pairs, steps=steps, **common)  # fmt: skip
        branches[task] = train(plate, config, out / f"branch-{task}", overwrite=True).model
    # the interval's width depends on the sampler: calibrate at the steps you predict with
    calibrated = calibrate(plate, branches["staining"], scenes=WELLS["B"], method="cqr",
                           alpha=0.1, options={"steps": 10},
                           out=out / "branch-staining-calibrated",
                           overwrite=True)  # fmt: skip
    print(f"CQR margin: {calibrated.head.calibration.adjustment[0]:.3f} (normalized units)")
    plan_prediction(plate, calibrated, scenes=WELLS["C"], halo="exact").run()
    ev = evaluate(plate, "DNA (predicted)", "DNA", scenes=WELLS["C"], input_channel="BF",
                  out=out / "evaluation")  # fmt: skip
    rows = [{"task": "staining (calibrated)", **{k: round(v, 3) for k, v in ev.summary.items()}}]
    # the denoising branch, in memory: the same backbone, another condition
    image = zarrstain.open_scenes(plate, scenes=WELLS["C"][:1])[WELLS["C"][0]]
    denoised = zarrstain.predict(image, branches["denoising"], options={"steps": 10})
    clean = image.sel(c="DNA").values[0, 0]
    rows.append({
        "task": "denoising (one field)",
        "pcc": round(metrics.pearson(clean, denoised.sel(c="DNA (predicted)").values[0, 0]), 3),
        "noisy input pcc": round(metrics.pearson(clean, image.sel(c="DNA lowSNR").values[0, 0]), 3),
    })  # fmt: skip
    print(format_table(rows))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description="FluoGen: a control branch from a few pairs")
    parser.add_argument("out", nargs="?", default="few-shot-example")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--backbone-steps", type=int, default=600)
    args = parser.parse_args()
    main(args.out, args.steps, args.backbone_steps)
