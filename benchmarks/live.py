"""Does ``zarrstain watch`` keep up with a microscope? Latency per time point and sustained rate.

A writer process (``tests/live/stream_writer.py``, zarr-python appending time points, as
ome-zarr-py and iohub writers do) replays a finished acquisition at a set interval while
``zarrstain.watch`` follows it, for a 2D model (fnet, depth 4, 32 channels, ``--plane``² planes)
and a 3D one (fnet, depth 3, 8 channels, ``--stack`` stacks), one after the other, nothing
else running:

- ``watch s / time point``: what watch spent predicting and writing, per time point (scans,
  statistics, the model, the pyramid, the metadata);
- ``forward``: the model's forward pass alone on one time point (torch, no zarrstain: the
  network prediction runs, the family's inference module; median of 7 after a warm-up,
  measured again before each run: on a shared CPU it drifts by 10-30 % between minutes), and
  the same for the module as trained (fnet's lean inference copy trades speed for memory);
- for each interval (the forward divided by ``--fractions``: at 0.8 the forward alone fills
  80 % of the interval): the latency of each time point, from the writer's last chunk of it
  (the writer's clock) to its prediction being readable in the output store (watch's progress
  event, after the metadata write), its median and 95th percentile, the largest lag (time
  points acquired in full but not yet readable when a prediction became readable), and
  whether watch kept up: the last time points' latency no larger than
  the first ones' plus one interval (a lag that grows means it does not).

The highest sustained rate is the shortest interval kept up with. Writes ``live.json`` and
``live.md`` to ``--out`` (default ``benchmarks/results/live``).

    python benchmarks/live.py [--time-points 16] [--fractions 0.5,0.8,0.95,1.2] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WRITER = HERE.parent / "tests" / "live" / "stream_writer.py"


def forward_seconds(model, shape, device: str, stored: bool = False) -> float:
    """Median seconds of the model's forward pass on one time point (torch alone): the network
    prediction runs (the family's inference module), or with ``stored`` the module as trained."""
    import torch

    module = model.module.eval()
    module = (module if stored else model.spec.inference_module(module)).to(device)
    x = torch.rand(*shape, device=device)
    times = []
    with torch.no_grad():
        for i in range(8):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            module(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_once(reference: Path, model, work: Path, interval: float, n_t: int, device: str) -> dict:
    """One acquisition at ``interval`` s per time point, followed by watch."""
    import zarrstain

    live, out, log = work / "live.zarr", work / "out.zarr", work / "writer.log"
    for path in (live, out, log):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    readable: dict[int, float] = {}

    def seen(event) -> None:
        now = time.time()
        for t in range(len(readable), event.done):
            readable[t] = now

    cmd = [sys.executable, str(WRITER), "zarr", str(reference), str(live),
           "--interval", str(interval), "--log", str(log)]  # fmt: skip
    writer = subprocess.Popen(cmd)
    try:
        result = zarrstain.watch(live, model, out=out, until=n_t, idle_timeout=60, poll=0.05,
                                 device=device, progress=seen)  # fmt: skip
    finally:
        writer.wait(timeout=600)
    written = {
        e["t"]: e["written"] for e in map(json.loads, log.read_text().splitlines()) if "t" in e
    }
    latency = [readable[t] - written[t] for t in range(n_t)]
    # lag: time points acquired in full but not yet readable, at each prediction's arrival
    lags = [
        sum(1 for s in range(n_t) if written[s] <= readable[t] < readable[s]) for t in range(n_t)
    ]
    third = max(n_t // 3, 1)
    kept_up = statistics.median(latency[-third:]) <= statistics.median(latency[:third]) + interval
    period = statistics.median(np.diff([written[t] for t in range(n_t)]))
    return {
        "interval_s": round(interval, 3),
        "measured_interval_s": round(float(period), 3),
        "watch_s_per_time_point": round(result.busy_s / n_t, 3),
        "latency_median_s": round(statistics.median(latency), 3),
        "latency_p95_s": round(float(np.percentile(latency, 95)), 3),
        "latency_last_s": round(latency[-1], 3),
        "max_lag": max(lags, default=0),
        "kept_up": bool(kept_up),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time-points", type=int, default=16)
    parser.add_argument("--fractions", default="0.5,0.8,0.95,1.2",
                        help="forward ÷ interval of the acquisitions replayed")  # fmt: skip
    parser.add_argument("--plane", type=int, default=512, help="2D: y = x")
    parser.add_argument("--stack", default="16x128x128", help="3D: z x y x")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "live")
    args = parser.parse_args()

    from zarrstain import datasets
    from zarrstain.testing import random_model

    args.out.mkdir(parents=True, exist_ok=True)
    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    n_t = args.time_points
    z, y, x = (int(v) for v in args.stack.split("x"))
    cases = {
        "2D": (random_model(ndim=2, depth=4, mult_chan=32, seed=1),
               (n_t, 1, args.plane, args.plane), (1, 1, args.plane, args.plane)),
        "3D": (random_model(ndim=3, depth=3, mult_chan=8, seed=1),
               (n_t, z, y, x), (1, 1, z, y, x)),
    }  # fmt: skip
    fractions = [float(f) for f in args.fractions.split(",")]
    report: dict = {"time_points": n_t, "device": args.device, "models": {}}
    for name, (model, shape, one) in cases.items():
        reference = datasets.make_image(work / f"{name}.zarr", shape=shape, seed=0,
                                        chunks=(1, 1, shape[1], 256, 256))  # fmt: skip
        stored = forward_seconds(model, one, args.device, stored=True)
        runs = []
        for fraction in fractions:
            # measured again before each run: on a shared CPU the forward's time drifts by
            # 10-30 % between minutes, and the interval must follow the machine as it is now
            forward = forward_seconds(model, one, args.device)
            interval = forward / fraction
            result = run_once(reference, model, work, interval, n_t, args.device)
            result["forward_fraction"] = fraction
            result["forward_s"] = round(forward, 3)
            runs.append(result)
            print(name, json.dumps(result), flush=True)
        kept = [r["interval_s"] for r in runs if r["kept_up"]]
        report["models"][name] = {
            "shape": list(shape),
            "forward_stored_module_s": round(stored, 3),
            "runs": runs,
            "highest_rate_per_s": round(1 / min(kept), 3) if kept else None,
        }
    (args.out / "live.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# zarrstain watch: latency per time point ({n_t} time points, {args.device})",
        "",
        "| model | time point | forward (s) | forward ÷ interval | interval (s, measured) | "
        "watch s / time point | latency median (s) | p95 (s) | max lag | kept up |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in report["models"].items():
        for r in m["runs"]:
            lines.append(
                f"| {name} | {'×'.join(map(str, m['shape'][1:]))} | {r['forward_s']} | "
                f"{r['forward_fraction']} | {r['measured_interval_s']} | "
                f"{r['watch_s_per_time_point']} | {r['latency_median_s']} | "
                f"{r['latency_p95_s']} | {r['max_lag']} | {'yes' if r['kept_up'] else 'no'} |"
            )
    (args.out / "live.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
