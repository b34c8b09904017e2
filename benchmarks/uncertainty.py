"""Uncertainty benchmark: coverage of raw and calibrated intervals, and what heads cost.

On a synthetic plate (BF → DNA, 12 wells of 16 time points each: 192 images), trains a 2D fnet
with a ``quantiles`` head (α = 0.1) and one with a ``bins`` head on the first four wells,
calibrates on the next four and counts coverage on the last four, which neither saw:

- per nominal coverage 0.8, 0.9, 0.95 and head: the raw interval's coverage (bins: its CDF at
  that α; quantiles: at its own α only), CQR's and RCPS's (δ = 0.1), and the calibrated
  interval's mean width in target standard deviations;
- the time of one prediction of a 1024×1024 field by each head against a ``value`` model of the
  same network (median of ``--repeat`` runs after a warm-up; the ratio is the overhead).

Writes ``<out>/uncertainty.json`` and ``<out>/uncertainty.md`` and prints the tables.

Usage::

    python benchmarks/uncertainty.py [--steps 200] [--repeat 3] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

import zarrstain
from zarrstain import datasets
from zarrstain.errors import ParameterError
from zarrstain.evaluation.report import markdown_table
from zarrstain.testing import random_model
from zarrstain.training import TrainConfig, train
from zarrstain.uncertainty.coverage import calibration_curve

WELLS = [f"{r}/{c}/0" for r in "ABC" for c in "1234"]
TRAIN, CAL, TEST = WELLS[:4], WELLS[4:8], WELLS[8:]
ALPHAS = (0.2, 0.1, 0.05)


def coverage_table(plate: Path, folder: Path, steps: int) -> list[dict]:
    base = TrainConfig(
        inputs=["BF"], targets=["DNA"], model="fnet2d", depth=3, mult_chan=8, steps=steps,
        batch_size=8, patch=[64, 64], scenes=TRAIN, device="cpu", checkpoint_every=10**6,
        normalization="zscore",
    )  # fmt: skip
    rows = []
    for head, options in (("quantiles", {"alpha": 0.1}), ("bins", {"bins": 64})):
        model = train(plate, dataclasses.replace(base, head=head, **options), folder / head)
        for method in ("cqr", "rcps"):
            curve = []
            for alpha in ALPHAS:  # one at a time: RCPS may find too few images for a small α
                try:
                    curve += calibration_curve(
                        plate, model.model, calibration_scenes=CAL, scenes=TEST, alphas=[alpha],
                        method=method,
                    )  # fmt: skip
                except ParameterError as exc:
                    print(f"{head} {method} alpha {alpha}: {exc}")
            for r in curve:
                rows.append(
                    {
                        "head": head,
                        "nominal": round(r["nominal"], 2),
                        "method": method,
                        "raw": round(r["raw"], 3),
                        "calibrated": round(r["calibrated"], 3),
                        "width (target std)": round(r["width"], 3),
                    }
                )
    return rows


def overhead(repeat: int) -> list[dict]:
    data = np.random.default_rng(0).standard_normal((1, 1, 1, 1024, 1024)).astype(np.float32)
    net = {"ndim": 2, "depth": 4, "mult_chan": 16}
    heads = {
        "value": None,
        "quantiles": {"kind": "quantiles"},
        "bins (64)": {"kind": "bins", "bins": 64},
        "bins (256)": {"kind": "bins", "bins": 256},
    }
    seconds = {}
    for name, head in heads.items():
        model = random_model(**net, **({"head": head} if head else {}))
        run = lambda m=model: zarrstain.predict(data, m, normalize=None, halo="exact").values  # noqa: E731
        run()  # warm-up: threads, allocator
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(times)
    return [
        {"head": k, "seconds": round(v, 2), "vs value": round(v / seconds["value"], 2)}
        for k, v in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        plate = datasets.make_plate(
            Path(tmp) / "plate.zarr", rows=("A", "B", "C"), columns=("1", "2", "3", "4"),
            fields=1, shape=(16, 1, 96, 96), seed=11,
        )  # fmt: skip
        rows = coverage_table(plate, Path(tmp), args.steps)
    cost = overhead(args.repeat)
    report = {
        "machine": f"{platform.processor() or platform.machine()}, torch threads "
        f"{__import__('torch').get_num_threads()}",
        "steps": args.steps,
        "coverage": rows,
        "prediction_time_1024x1024": cost,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "uncertainty.json").write_text(json.dumps(report, indent=2))
    text = (
        f"Coverage on 4 held-out wells × 16 time points (trained on 4, calibrated on 4; "
        f"{args.steps} steps):\n\n{markdown_table(rows)}\n\n"
        f"One prediction of a 1024×1024 field, 2D fnet depth 4, 16 channels:\n\n"
        f"{markdown_table(cost)}\n"
    )
    (args.out / "uncertainty.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
