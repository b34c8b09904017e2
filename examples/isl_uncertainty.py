"""Real data: where can In silico labeling's virtual DAPI / MAP2 / NFH be trusted?

Run: python examples/isl_uncertainty.py [OUTPUT_DIR] [--steps N] [--bins K] [--alphas A ...]
         [--device cuda]

The same well and recipe as ``isl_phase_to_dapi.py`` (a 2D fnet on 13 phase planes through a
learned projection, trained on the **left half**), with two uncertainty heads instead of one
value per stain:

- ``bins``: In silico labeling's per-pixel distribution over intensity bins (cross-entropy),
  written as its mean and std, with an interval from its CDF;
- ``quantiles``: lower / median / upper at α/2, 0.5, 1 − α/2 (pinball loss).

Each model is calibrated with CQR on the **top right** quarter (held out from training) and
evaluated on the **bottom right** quarter, which neither training nor calibration saw: Pearson
r of the value, coverage and width of the 90% interval (raw and calibrated), the std's rank
correlation with the error (bins), panels with the interval-width map, and a calibration curve
(nominal vs empirical coverage over α). Writes ``isl-uncertainty.md`` and, per head,
``evaluation-<head>-<stain>/`` and ``curve-<head>/calibration.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import zarrstain
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.evaluation.evaluate import evaluate
from zarrstain.evaluation.report import format_table, markdown_table
from zarrstain.training import TrainConfig, train
from zarrstain.uncertainty.calibrate import calibrate
from zarrstain.uncertainty.coverage import ALPHAS, calibration_curve

sys.path.insert(0, str(Path(__file__).resolve().parent))
from isl_phase_to_dapi import DATA, PHASE, STAINS, convert

ALPHA = 0.1


def recipe(steps: int, device: str) -> TrainConfig:
    """isl_phase_to_dapi.py's recipe, trained on the left half."""
    return TrainConfig(
        inputs=PHASE, targets=list(STAINS), model="fnet2d", depth=4, mult_chan=16,
        projection=16, steps=steps, batch_size=8, patch=[128, 128], normalization="zscore",
        val_fraction=0.5, val_patches=32, validate_every=100, checkpoint_every=200,
        device=device,
    )  # fmt: skip


def main(
    out_dir: str = "isl-uncertainty",
    steps: int = 600,
    bins: int = 64,
    data: Path = DATA / "isl_condition_blue",
    device: str = "auto",
    alphas: tuple[float, ...] = ALPHAS,
) -> list[dict]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not data.is_dir():
        raise SystemExit(f"{data} is absent: this example needs the shared ISL data")
    store = convert(data, out / "isl.zarr")
    image = zarrstain.open_image(store)
    w, h = image.sizes["x"], image.sizes["y"]
    right, top, bottom = slice(w // 2, w), slice(0, h // 2), slice(h // 2, h)
    cal_region, eval_region = {"x": right, "y": top}, {"x": right, "y": bottom}
    rows = []
    for head in ("bins", "quantiles"):
        config = dataclasses.replace(recipe(steps, device), head=head, bins=bins, alpha=ALPHA)
        model = train(store, config, out / f"model-{head}", overwrite=True).model
        calibrated = calibrate(
            store, model, alpha=ALPHA, region=cal_region, device=device,
            out=out / f"model-{head}-calibrated", overwrite=True,
        )  # fmt: skip
        predicted = out / f"predicted-{head}.zarr"
        plan = plan_prediction(
            store, calibrated, out=predicted, copy_channels=True, overwrite=True, device=device
        )
        plan.run()
        curve = calibration_curve(
            store, model, calibration_scenes=[""], scenes=[""], region=eval_region,
            calibration_region=cal_region, out=out / f"curve-{head}", alphas=alphas,
        )  # fmt: skip
        raw = {r["target"]: r["raw"] for r in curve if r["alpha"] == ALPHA}
        for stain in STAINS:
            ev = evaluate(
                predicted, f"{stain} (predicted)", stain, input_channel="phase z06",
                x_range=right, y_range=bottom, out=out / f"evaluation-{head}-{stain}",
            )  # fmt: skip
            s = ev.summary
            rows.append(
                {
                    "head": head,
                    "stain": stain,
                    "pcc": round(s["pcc"], 3),
                    "ssim": round(s["ssim"], 3),
                    "coverage raw": round(raw.get(stain, float("nan")), 3),
                    "coverage calibrated": round(s["coverage"], 3),
                    "width (target std)": round(s["interval_width"], 3),
                    "std~|error| (Spearman)": round(s.get("std_error_spearman", float("nan")), 3),
                }
            )
    print(format_table(rows))
    (out / "isl-uncertainty.md").write_text(
        f"Bottom right quarter of the well (never trained or calibrated on); intervals at "
        f"nominal {1 - ALPHA:.0%}, calibrated (CQR) on the top right quarter:\n\n"
        + markdown_table(rows)
        + "\n"
    )
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description="ISL uncertainty heads on real data")
    parser.add_argument("out", nargs="?", default="isl-uncertainty")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--bins", type=int, default=64)
    parser.add_argument("--data", type=Path, default=DATA / "isl_condition_blue")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    args = parser.parse_args()
    main(args.out, args.steps, args.bins, args.data, args.device, tuple(args.alphas))
