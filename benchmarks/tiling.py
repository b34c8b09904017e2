"""Tiling benchmark: seams and time of tiled prediction against one whole-volume forward.

Compares, on one volume that fits in memory and in one run:

- ``whole``: one forward pass over the whole volume (the reference; ``predict_whole``);
- zarrstain ``halo="exact"`` and ``halo="auto"`` with 256×256 blocks (full Z), so the volume
  is really cut; and both with the default planner (blocks as large as the memory budget);
- MONAI ``sliding_window_inference``: gaussian blending, overlap 0.25, roi 32×128×128 (the
  MMV_Im2Im label-free preset);
- pytorch_fnet-style blending: 32×128×128 tiles overlapping by 16, each weighted by a
  separable triangular window (as ``Model.predict_piecewise``, without test-time augmentation);
- store → store: ``zarrstain.engine.pipeline`` on an OME-Zarr store holding the same volume, against
  the same prediction computed in memory.

Errors are max and mean |tiled − whole| in units of the whole prediction's standard deviation.
Writes ``<out>/tiling.json`` and ``<out>/tiling.md`` and prints the table.

``--defaults`` measures only what a user gets without choosing anything: the whole-volume
forward, ``halo="exact"`` and ``halo="auto"`` with the planner's default blocks, each in a fresh
process (so no run profits from another's warm caches or allocator), on pytorch_fnet's default
net size (depth 4, ``mult_chan`` 32, random weights and BatchNorm statistics); goals: exact
≤ 1.5×, auto ≤ 1.2× the whole forward on 16×1024×1024. Writes ``<out>/tiling_defaults.*``.

Usage::

    pip install -c constraints.txt -e ".[benchmark]"
    python benchmarks/tiling.py [--size 32 512 512] [--out benchmarks/results]
    python benchmarks/tiling.py --defaults [--size 16 1024 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

import zarrstain
from zarrstain import datasets
from zarrstain.engine.pipeline import plan_prediction
from zarrstain.engine.tiling import predict_whole
from zarrstain.evaluation.report import markdown_table
from zarrstain.testing import random_model

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ZARRSTAIN_SHARED", ROOT.parent / "shared"))


def load_net() -> tuple[zarrstain.Model, str]:
    fixture = SHARED / "fixtures" / "pytorch_fnet" / "fnet3d"
    if fixture.is_dir():
        return zarrstain.load_model(fixture), "pytorch_fnet fixture fnet3d (depth 4, mult_chan 8)"
    model = random_model(ndim=3, depth=4, mult_chan=8, seed=0)
    return model, "random fnet (depth 4, mult_chan 8; ../shared absent)"


def volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    x = ndimage.gaussian_filter(x, 1.5)
    return ((x - x.mean()) / x.std())[None, None]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def monai_window(x: np.ndarray, model: zarrstain.Model) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        out = sliding_window_inference(
            torch.from_numpy(x[0])[None],
            roi_size=(32, 128, 128),
            sw_batch_size=1,
            predictor=model.module,
            overlap=0.25,
            mode="gaussian",
        )
    return out.numpy()


def triangular(x: np.ndarray, model: zarrstain.Model, tile=(32, 128, 128), overlap=16):
    """pytorch_fnet's piecewise predict: triangular-weighted tiles, weighted sum ÷ weights."""
    vol = x[0]
    shape = vol.shape[1:]
    out = np.zeros((1, *shape), np.float64)
    weight = np.zeros(shape, np.float64)

    def starts(n: int, t: int) -> list[int]:
        if n <= t:
            return [0]
        s = list(range(0, n - t, t - overlap))
        return [*s, n - t]

    ramps = [np.minimum(np.arange(1, t + 1), np.arange(t, 0, -1)).astype(np.float64) for t in tile]
    win = ramps[0][:, None, None] * ramps[1][None, :, None] * ramps[2][None, None, :]
    with torch.inference_mode():
        for z in starts(shape[0], tile[0]):
            for y in starts(shape[1], tile[1]):
                for xx in starts(shape[2], tile[2]):
                    sl = (slice(z, z + tile[0]), slice(y, y + tile[1]), slice(xx, xx + tile[2]))
                    piece = torch.from_numpy(np.ascontiguousarray(vol[(slice(None), *sl)]))
                    pred = model.module(piece[None])[0].numpy()
                    out[(slice(None), *sl)] += pred * win
                    weight[sl] += win
    return (out / weight).astype(np.float32)[None]


def _default_run(mode: str, size: tuple[int, int, int], out: Path) -> None:
    """One measurement of ``--defaults``, in this (fresh) process: prints a JSON line."""
    model = random_model(ndim=3, depth=4, mult_chan=32, seed=0)
    x = volume(size)
    if mode == "whole":
        pred, sec = timed(lambda: predict_whole(x, model))
        tiling = {"blocks": 1, "compute_ratio": 1.0, "block_tzyx": [1, *size]}
    else:
        lazy = zarrstain.predict(x, model, halo=mode, normalize=None)
        pred, sec = timed(lambda: lazy.values)
        tiling = lazy.attrs["zarrstain"]["tiling"]
    np.save(out / f"{mode}.npy", pred)
    print(json.dumps({"mode": mode, "seconds": sec, "tiling": tiling}))


def main_defaults(args: argparse.Namespace) -> None:
    """exact / auto with default blocks against the whole forward, each in a fresh process."""
    import subprocess
    import sys

    size = tuple(args.size)
    tmp = Path(tempfile.mkdtemp())
    try:
        runs = {}
        for mode in ("whole", "exact", "auto"):
            cmd = [sys.executable, __file__, "--run", mode, "--size", *map(str, size),
                   "--out", str(tmp)]  # fmt: skip
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            runs[mode] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{mode:6s} {runs[mode]['seconds']:7.1f} s", flush=True)
        ref = np.load(tmp / "whole.npy")
        std = float(ref.std())
        rows = []
        for mode, run in runs.items():
            err = np.abs(np.load(tmp / f"{mode}.npy") - ref)
            tiling = run["tiling"]
            rows.append(
                {
                    "method": "whole-volume forward" if mode == "whole" else f"halo={mode}",
                    "seconds": round(run["seconds"], 1),
                    "ratio": round(run["seconds"] / runs["whole"]["seconds"], 3),
                    "planned compute ratio": tiling["compute_ratio"],
                    "blocks": tiling["blocks"],
                    "block tzyx": "×".join(map(str, tiling["block_tzyx"])),
                    "max_err_std": float(err.max()) / std,
                }
            )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    report = {"volume_zyx": list(size), "model": "fnet depth 4, mult_chan 32 (random)",
              "machine": machine, "rows": rows}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiling_defaults.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(rows)
    (args.out / "tiling_defaults.md").write_text(table + "\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=3, default=None)
    parser.add_argument("--block", type=int, default=256, help="block core in y and x")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--defaults", action="store_true", help="default settings only")
    parser.add_argument("--run", choices=["whole", "exact", "auto"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:
        return _default_run(args.run, tuple(args.size), args.out)
    if args.defaults:
        args.size = args.size or (16, 1024, 1024)
        return main_defaults(args)
    args.size = args.size or (32, 512, 512)
    model, model_name = load_net()
    x = volume(tuple(args.size))
    ref, t_whole = timed(lambda: predict_whole(x, model))
    std = float(ref.std())
    rows = [
        {
            "method": "whole-volume forward",
            "seconds": t_whole,
            "ratio": 1.0,
            "max_err_std": 0.0,
            "mean_err_std": 0.0,
            "blocks": 1,
        }
    ]

    def record(method: str, out: np.ndarray, seconds: float, blocks: int | str = "") -> None:
        err = np.abs(out - ref)
        rows.append(
            {
                "method": method,
                "seconds": seconds,
                "ratio": seconds / t_whole,
                "max_err_std": float(err.max()) / std,
                "mean_err_std": float(err.mean()) / std,
                "blocks": blocks,
            }
        )
        r = rows[-1]
        print(
            f"{method:45s} {seconds:7.1f} s  {r['ratio']:5.2f}×  "
            f"max {r['max_err_std']:.2e}  mean {r['mean_err_std']:.2e}"
        )

    b = args.block
    for halo in ("exact", "auto"):
        for chunks, label in (({"y": b, "x": b}, f"{b}×{b} blocks"), (None, "default blocks")):
            pred = zarrstain.predict(x, model, halo=halo, normalize=None, chunks=chunks)
            out, sec = timed(lambda pred=pred: pred.values)
            tiling = pred.attrs["zarrstain"]["tiling"]
            record(
                f"zarrstain halo={halo} (halo {tiling['halo_zyx'][1]}), {label}",
                out,
                sec,
                tiling["blocks"],
            )
    sweep = []
    for h in range(0, 113, 16):
        pred = zarrstain.predict(x, model, halo=h, normalize=None, chunks={"y": b, "x": b})
        out, sec = timed(lambda pred=pred: pred.values)
        err = np.abs(out - ref)
        sweep.append(
            {
                "halo": h,
                "seconds": sec,
                "ratio": sec / t_whole,
                "compute_ratio": pred.attrs["zarrstain"]["tiling"]["compute_ratio"],
                "max_err_std": float(err.max()) / std,
                "mean_err_std": float(err.mean()) / std,
            }
        )
        print(f"halo {h:3d}: {sec:6.1f} s  max {sweep[-1]['max_err_std']:.2e}")
    try:
        out, sec = timed(lambda: monai_window(x, model))
        record("MONAI sliding window (gaussian, 0.25, 32×128×128)", out, sec)
    except ImportError:
        print("MONAI not installed (pip install -e '.[benchmark]'); skipped")
    out, sec = timed(lambda: triangular(x, model))
    record("pytorch_fnet triangular blending (32×128×128, overlap 16)", out, sec)

    tmp = Path(tempfile.mkdtemp())
    try:
        store = tmp / "volume.zarr"
        datasets.save_image(
            store, x[0], "czyx", channel_labels=["BF"], chunks=(1, args.size[0], b, b), levels=1
        )
        chunks = {"y": b, "x": b}
        mem = zarrstain.predict(x, model, halo="exact", normalize=None, chunks=chunks)
        _, t_mem = timed(lambda: mem.values)
        plan = plan_prediction(
            store,
            model,
            input_channels=["BF"],
            normalization="none",
            halo="exact",
            chunks=chunks,
            out=tmp / "out.zarr",
        )
        _, t_store = timed(plan.run)
        written = zarrstain.open_image(tmp / "out.zarr").values
        err = float(np.abs(written - ref).max()) / std
        store_row = {
            "in_memory_seconds": t_mem,
            "store_seconds": t_store,
            "ratio": t_store / t_mem,
            "max_err_std": err,
        }
        print(f"store→store {t_store:.1f} s vs in memory {t_mem:.1f} s: {t_store / t_mem:.2f}×")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "volume_zyx": list(args.size),
        "model": model_name,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        "rows": rows,
        "halo_sweep": sweep,
        "store_to_store": store_row,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tiling.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Volume {'×'.join(map(str, args.size))}, {model_name}; {report['machine']}.",
        "",
        markdown_table(rows),
        "",
        f"Halo sweep ({b}×{b} blocks; ratio = time × whole, compute_ratio = voxels × whole):",
        "",
        markdown_table(sweep),
    ]
    lines += [
        "",
        f"Store → store (exact, {b}×{b} blocks): {t_store:.1f} s vs {t_mem:.1f} s in "
        f"memory = {t_store / t_mem:.2f}×, max error {err:.2g} std.",
    ]
    (args.out / "tiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
