"""Stain a time-lapse while it is acquired: a simulated microscope and ``zarrstain.watch``.

A synthetic time-lapse (:func:`zarrstain.datasets.make_image`, BF / DNA / Membrane, 16×96×96
stacks, 20× widefield voxels) plays the finished acquisition; a thread replays it into
``live.zarr`` one time point per ``--interval`` seconds (:func:`zarrstain.live.replay.replay`,
as a zarr writer appends time points), while ``zarrstain.watch`` follows ``live.zarr`` in the
main thread and writes ``DNA (predicted)`` into ``live-dna.zarr`` time point by time point.

Prints, per time point, the latency (from the writer's last chunk to the prediction being
readable) and the Pearson r of the predicted against the acquired DNA. The model is the demo's
(``make demo`` trains it: ``--model zarrstain-demo/model``), which predicts DNA from BF.

    python examples/live_acquisition.py [--time-points 6] [--interval 1.0] [--out live]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np

import zarrstain
from zarrstain import datasets
from zarrstain.live.replay import replay


def main(model: Path, out: Path, n_t: int, interval: float) -> list[dict]:
    if not model.exists():
        raise SystemExit(f"no model at {model}: run `make demo` first (it trains one)")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    finished = datasets.make_image(out / "acquisition.zarr", shape=(n_t, 16, 96, 96), seed=7)
    written: dict[int, float] = {}
    microscope = threading.Thread(
        target=replay,
        args=(finished, out / "live.zarr"),
        kwargs={"interval": interval, "on_written": written.__setitem__},
        daemon=True,
    )
    readable: dict[int, float] = {}

    def seen(event: zarrstain.progress.ProgressEvent) -> None:
        for t in range(len(readable), event.done):
            readable[t] = time.time()

    microscope.start()
    result = zarrstain.watch(out / "live.zarr", model, out=out / "live-dna.zarr", until=n_t,
                             idle_timeout=30 + 5 * interval, progress=seen)  # fmt: skip
    microscope.join()
    predicted = zarrstain.open_image(out / "live-dna.zarr").sel(c="DNA (predicted)").values
    acquired = zarrstain.open_image(finished).sel(c="DNA").values
    rows = []
    for t in range(result.time_points[""]):
        r = float(np.corrcoef(predicted[t].ravel(), acquired[t].ravel())[0, 1])
        rows.append({"t": t, "latency_s": round(readable[t] - written[t], 3), "pcc": round(r, 3)})
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("zarrstain-demo/model"))
    parser.add_argument("--out", type=Path, default=Path("live"))
    parser.add_argument("--time-points", type=int, default=6)
    parser.add_argument("--interval", type=float, default=1.0, help="seconds per time point")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = main(args.model, args.out, args.time_points, args.interval)
    print("| t | latency (s) | PCC predicted vs acquired DNA |\n|---|---|---|")
    for row in rows:
        print(f"| {row['t']} | {row['latency_s']} | {row['pcc']} |")
