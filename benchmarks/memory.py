"""Memory and throughput benchmark: store → store prediction of a plate and of one 8× larger.

Measures, each run in a fresh process:

- peak RSS of ``plan_prediction(...).run()`` (dask's threaded scheduler) for a plate and for a
  plate with 8× the scenes: bounded memory means the ratio stays near 1 (target ≤ 1.2);
- wall time of the larger plate with 1 and with 2 single-threaded worker processes
  (``LocalCluster``, timed once the workers are up): the throughput ratio (target ≥ 1.7 on
  2 cores).

Writes ``<out>/memory.json`` and ``<out>/memory.md`` and prints the table.

Usage::

    python benchmarks/memory.py [--size 16 128 128] [--chunks 16 128 128] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN = r"""
import json, resource, sys, time
import zarrstain
from zarrstain.engine.cluster import connect
from zarrstain.engine.pipeline import plan_prediction
store, model, out, workers = sys.argv[1:5]
workers = int(workers)
with connect(workers=workers or None, threads_per_worker=1 if workers else None) as client:
    if client is not None:
        client.wait_for_workers(workers)
    start = time.perf_counter()  # the run itself, not starting the workers
    plan = plan_prediction(store, model, out=out, halo="auto")
    blocks = plan.n_blocks
    plan.run(client=client)
    seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"seconds": seconds, "peak_rss": rss, "blocks": blocks}))
"""


def run(store: Path, model: Path, out: Path, workers: int = 0) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", RUN, str(store), str(model), str(out), str(workers)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=(16, 128, 128))
    parser.add_argument(
        "--chunks",
        type=int,
        nargs=3,
        default=None,
        help="store chunk (z y x) per channel and time point [default: full z, 32×32 in y, x]",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    import zarrstain
    from zarrstain import datasets
    from zarrstain.evaluation.report import markdown_table
    from zarrstain.testing import random_model

    tmp = Path(tempfile.mkdtemp())
    shape = (2, *args.size)
    chunks = (1, 1, *args.chunks) if args.chunks else None
    small = datasets.make_plate(
        tmp / "small.zarr",
        rows=("A",),
        columns=("1", "2"),
        fields=1,
        shape=shape,
        levels=1,
        chunks=chunks,
    )
    large = datasets.make_plate(
        tmp / "large.zarr",
        rows=("A", "B", "C", "D"),
        columns=("1", "2"),
        fields=2,
        shape=shape,
        levels=1,
        chunks=chunks,
    )
    model = zarrstain.save_model(random_model(ndim=3, depth=3, mult_chan=8, seed=0), tmp / "model")
    n_small = len(zarrstain.open_scenes(small))
    n_large = len(zarrstain.open_scenes(large))
    rows = {
        "small": run(small, model, tmp / "o1.zarr"),
        "large": run(large, model, tmp / "o2.zarr"),
        "large, 1 worker process": run(large, model, tmp / "o3.zarr", workers=1),
        "large, 2 worker processes": run(large, model, tmp / "o4.zarr", workers=2),
    }
    rss_ratio = rows["large"]["peak_rss"] / rows["small"]["peak_rss"]
    speedup = (
        rows["large, 1 worker process"]["seconds"] / rows["large, 2 worker processes"]["seconds"]
    )
    report = {
        "scene_tzyx": list(shape),
        "store_chunks_tczyx": list(chunks) if chunks else "default (1, 1, z, 32, 32)",
        "scenes": {"small": n_small, "large": n_large},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "runs": rows,
        "peak_rss_ratio_large_over_small": rss_ratio,
        "throughput_2_over_1_workers": speedup,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    name = "memory" + ("-" + "x".join(map(str, args.chunks)) if args.chunks else "")
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    table = [
        {
            "run": name,
            "scenes": n_small if name == "small" else n_large,
            "blocks": r["blocks"],
            "seconds": round(r["seconds"], 1),
            "peak RSS of the driving process (MiB)": round(r["peak_rss"] / 2**20),
        }
        for name, r in rows.items()
    ]
    lines = [
        f"Plates of {n_small} and {n_large} scenes of {'×'.join(map(str, shape))} (t×z×y×x), "
        f"store chunks {report['store_chunks_tczyx']}, "
        f"3D fnet depth 3 width 8, halo auto; {report['machine']}.",
        "",
        markdown_table(table),
    ]
    lines += [
        "",
        f"Peak RSS, large / small: {rss_ratio:.2f}×. "
        f"Throughput, 2 / 1 worker processes: {speedup:.2f}×.",
    ]
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
