"""Diffusion sampling benchmark: exactness and cost of tiling, memory of long chains, seams.

With a 2D diffusion model of random weights (every layer, including the zero-initialised ones,
jittered so they all matter; width 16, multipliers 1-2-2: receptive radius 55) on one field:

1. **Tiled vs whole-field sampling** (local denoiser, ``halo="exact"``, DDIM η = 0.5 so every
   step draws position-keyed noise): the max |tiled − whole| over the output range, and the
   time ratio, for blocks of 128² and 256² on a 512² field.
2. **Time per step**: whole-field sampling time over the steps, per field and per megapixel.
3. **Memory with a scratch store**: peak RSS of a fresh process sampling a 1024² field in
   256² blocks for 20 steps, once with the passes chained in one dask graph, once storing the
   state in a scratch zarr store every 2 steps.
4. **Seams of a non-local model**: the same network with GroupNorm (the published ADM layout)
   tiled approximately (integer halos 16 / 32 / 64) against its whole-field sample: max and
   mean error, at block seams (within 4 px of a block edge) and elsewhere.

Writes ``<out>/diffusion.json`` and ``<out>/diffusion.md`` and prints the tables. Run it alone
(two cores: any other job changes the times).

Usage::

    python benchmarks/diffusion.py [--steps 10] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import resource
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import torch

from zarrstain.engine.tiling import plan_tiles, predict_whole, run_tiled
from zarrstain.evaluation.report import markdown_table
from zarrstain.models import create_model


def model(norm: str = "pixel", **options):
    torch.manual_seed(0)
    m = create_model(
        "diffusion", input_labels=["BF"], output_labels=["DNA (predicted)"],
        normalization="zscore", ndim=2, width=16, mults=[1, 2, 2], norm=norm,
    )  # fmt: skip
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in m.module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.03)
    return m.with_options(**options)


def field(size: int) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(1, 1, 1, size, size)).astype(np.float32)


def tiled(data, m, chunk, halo="exact", scratch=None):
    plan = plan_tiles((1, 1, *data.shape[-2:]), m, halo=halo, chunks={"y": chunk, "x": chunk})
    with dask.config.set(scheduler="threads"):
        return run_tiled(da.from_array(data), m, plan, seed=1, scratch=scratch).compute(), plan


def exactness(steps: int) -> tuple[list[dict], float]:
    m = model(sampler="ddim", eta=0.5, steps=steps)
    data = field(512)
    t0 = time.perf_counter()
    whole = predict_whole(data, m, seed=1)
    t_whole = time.perf_counter() - t0
    span = float(whole.max() - whole.min())
    rows = []
    for chunk in (128, 256):
        t0 = time.perf_counter()
        out, plan = tiled(data, m, chunk)
        rows.append({
            "blocks": f"{chunk}² ({plan.n_blocks} per step)",
            "max error / range": f"{np.abs(out - whole).max() / span:.1e}",
            "time tiled / whole": round((time.perf_counter() - t0) / t_whole, 2),
        })  # fmt: skip
    return rows, t_whole


def _peak(args) -> int:
    size, chunk, steps, scratch = args
    m = model(sampler="ddim", steps=steps, scratch_every=2)
    tiled(field(size), m, chunk, scratch=scratch)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # MiB


def memory(steps: int = 20) -> list[dict]:
    rows = []
    ctx = multiprocessing.get_context("spawn")  # a fresh process each: its own peak
    with tempfile.TemporaryDirectory() as tmp:
        for label, scratch in (("one dask graph", None), ("scratch every 2 steps", f"{tmp}/s")):
            with ctx.Pool(1) as pool:
                t0 = time.perf_counter()
                peak = pool.apply(_peak, ((1024, 256, steps, scratch),))
            rows.append({"passes": label, "peak RSS (MiB)": peak,
                         "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
    return rows


def seams(steps: int) -> list[dict]:
    m = model("group", sampler="ddim", steps=steps)
    data = field(256)
    whole = predict_whole(data, m, seed=1)
    span = float(whole.max() - whole.min())
    edge = np.zeros((256, 256), bool)
    for c in (128,):
        edge[:, c - 4 : c + 4] = edge[c - 4 : c + 4, :] = True
    rows = []
    for halo in (16, 32, 64):
        out, _ = tiled(data, m, 128, halo=halo)
        err = np.abs(out - whole)[0, 0, 0] / span
        rows.append({"halo": halo, "max error / range": f"{err.max():.3f}",
                     "mean error at seams": f"{err[edge].mean():.4f}",
                     "mean error elsewhere": f"{err[~edge].mean():.4f}"})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    exact, t_whole = exactness(args.steps)
    step = t_whole / args.steps
    per_step = {
        "512² field, seconds per step": round(step, 3),
        "seconds per step per megapixel": round(step / 0.262144, 3),
    }
    mem, seam = memory(), seams(args.steps)
    result = {"machine": platform.platform(), "cpu_threads": torch.get_num_threads(),
              "steps": args.steps, "exactness": exact, "per_step": per_step,
              "memory": mem, "seams": seam}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "diffusion.json").write_text(json.dumps(result, indent=2))
    text = "\n\n".join([
        "### Tiled vs whole-field sampling (local denoiser, exact halo)", markdown_table(exact),
        "### Time per sampling step (CPU)", markdown_table([per_step]),
        "### Memory: 20 steps of a 1024² field in 256² blocks", markdown_table(mem),
        "### Seams of a non-local (GroupNorm) denoiser tiled with integer halos",
        markdown_table(seam),
    ])  # fmt: skip
    (args.out / "diffusion.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
