"""GPU benchmark: prediction throughput, memory and exactness on one CUDA device.

In one run, on one (t, z, y, x) volume of smoothed noise and the default-size pytorch_fnet
3D net (depth 4, 32 channels; random weights and BatchNorm statistics), in float32 (IEEE),
tf32 (TensorFloat-32 convolutions), bfloat16 and float16:

- ``raw forward``: the net on each time point of the whole volume, data already on the GPU,
  torch alone: the ceiling for any tiling;
- ``zarrstain.predict`` in memory, exact halo, the planner's default blocks for this GPU
  (and with blocks of ``--block`` in y and x, so the volume is really cut): time × raw
  forward, max |tiled − whole| (same precision) and max |tiled − whole float32| in standard
  deviations of the whole float32 prediction;
- store → store (``zarrstain.engine.pipeline``: read, normalize, predict, write a new OME-Zarr store
  with pyramids) against the same prediction in memory;
- peak GPU memory (``torch.cuda.max_memory_allocated``) against the planner's budget.

Writes ``<out>/gpu.json`` and ``<out>/gpu.md``. Needs a CUDA GPU (``--device cpu`` runs the
same steps on the CPU, as a quick check of the script on a small ``--size``).

Usage::

    python benchmarks/gpu.py [--size 4 32 1024 1024] [--block 512] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
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
from zarrstain.engine.planner import default_block_memory
from zarrstain.engine.tiling import predict_whole
from zarrstain.evaluation.report import markdown_table
from zarrstain.testing import random_model

ROOT = Path(__file__).resolve().parents[1]
PRECISIONS = {
    "float32": None,
    "tf32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def volume(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """(t, 1, z, y, x) float32 smoothed noise, mean 0 and std 1 (already normalized)."""
    x = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    x = ndimage.gaussian_filter(x, (0, 1.5, 1.5, 1.5))
    return ((x - x.mean()) / x.std())[:, None]


def timed(fn, device: str):
    """(result, seconds), the GPU's queue drained before and after."""
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - start


def raw_forward(x: np.ndarray, model: zarrstain.Model, precision: str, device: str) -> float:
    """Seconds for the net alone over every time point, input already on the device (best of 2)."""
    net = model.module.to(device).eval()
    pad = [(-n) % model.divisor for n in x.shape[2:]]
    dev = torch.nn.functional.pad(
        torch.from_numpy(x).to(device), [p for n in reversed(pad) for p in (0, n)], mode="reflect"
    )
    dtype = PRECISIONS[precision]

    def run():
        torch.backends.cudnn.allow_tf32 = precision == "tf32"  # as zarrstain's forward sets it
        autocast = torch.autocast(device, dtype or torch.float32, enabled=dtype is not None)
        with torch.inference_mode(), autocast:
            for t in range(dev.shape[0]):
                net(dev[t : t + 1])

    timed(run, device)  # warm-up: cuDNN picks its kernels
    return min(timed(run, device)[1] for _ in range(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=4, default=(4, 32, 1024, 1024), help="t z y x")
    parser.add_argument("--block", type=int, default=512, help="block core in y and x")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument(
        "--width", type=int, default=32, help="channels of the top level (pytorch_fnet: 32)"
    )
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "no CUDA GPU: this benchmark measures the GPU path (--device cpu to try it)"
        )
    cuda = device == "cuda"
    model = random_model(ndim=3, depth=4, mult_chan=args.width, seed=0)
    x = volume(tuple(args.size))
    voxels = x.size
    budget = default_block_memory()
    rows, ref32 = [], None
    for precision in PRECISIONS:
        t_raw = raw_forward(x, model, precision, device)
        rows.append(
            {"precision": precision, "method": "raw forward (torch alone)", "seconds": t_raw,
             "Mvoxel/s": voxels / t_raw / 1e6, "× raw": 1.0, "blocks": args.size[0],
             "max err (std)": 0.0, "vs float32 (std)": None, "peak GiB": None}
        )  # fmt: skip
        ref = predict_whole(x, model, device=device, precision=precision)
        if ref32 is None:  # float32 first: the reference of the other precisions
            ref32 = ref
        std = float(ref32.std())
        for chunks, label in ((None, "default blocks"), ({"y": args.block, "x": args.block}, "")):
            label = label or f"{args.block}×{args.block} blocks"
            pred = zarrstain.predict(
                x, model, halo="exact", normalize=None, chunks=chunks, device=device,
                precision=precision,
            )  # fmt: skip
            pred.values  # noqa: B018  warm-up (the model reaches the GPU, cuDNN picks kernels)
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            out, sec = timed(lambda pred=pred: pred.values, device)
            tiling = pred.attrs["zarrstain"]["tiling"]
            rows.append(
                {"precision": precision, "method": f"zarrstain.predict exact, {label}",
                 "seconds": sec, "Mvoxel/s": voxels / sec / 1e6, "× raw": sec / t_raw,
                 "blocks": tiling["blocks"],
                 "max err (std)": float(np.abs(out - ref).max()) / std,
                 "vs float32 (std)": float(np.abs(out - ref32).max()) / std,
                 "peak GiB": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
            )  # fmt: skip
            print(rows[-1], flush=True)
    tmp = Path(tempfile.mkdtemp())
    try:  # store → store against the same prediction in memory (float32, default blocks)
        store = tmp / "volume.zarr"
        zyx = args.size[1:]
        datasets.save_image(
            store, x, "tczyx", channel_labels=["BF"],
            chunks=(1, 1, zyx[0], args.block, args.block), levels=2,
        )  # fmt: skip
        mem = zarrstain.predict(x, model, halo="exact", normalize=None, device=device)
        _, t_mem = timed(lambda: mem.values, device)
        plan = plan_prediction(
            store, model, input_channels=["BF"], normalization="none", halo="exact",
            out=tmp / "out.zarr", device=device,
        )  # fmt: skip
        _, t_store = timed(plan.run, device)
        store_row = {"in_memory_seconds": t_mem, "store_seconds": t_store, "ratio": t_store / t_mem}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if cuda:
        gpu = torch.cuda.get_device_properties(0)
        machine = f"{gpu.name}, {gpu.total_memory / 2**30:.0f} GiB, torch {torch.__version__}"
    else:
        machine = f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}"
    report = {
        "volume_tzyx": list(args.size),
        "model": "fnet 3D depth 4, 32 channels (pytorch_fnet's default size), random weights",
        "machine": machine,
        "block_memory_budget_GiB": budget / 2**30,
        "rows": rows,
        "store_to_store": store_row,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(report, indent=2))
    lines = [
        f"Volume t×z×y×x {'×'.join(map(str, args.size))}, {report['model']}; {report['machine']}"
        f"; block budget {budget / 2**30:.1f} GiB.",
        "",
        markdown_table(rows),
        "",
        f"Store → store (float32, default blocks): {t_store:.1f} s vs {t_mem:.1f} s in memory "
        f"= {t_store / t_mem:.2f}×.",
    ]
    (args.out / "gpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
