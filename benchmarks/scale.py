"""Plates at screening scale: zarrstain's cost per field against the model and a naive loop.

For each plate size (fields of one small plane each) and store chunking, in one run:

- ``plan``: ``plan_prediction`` (metadata, checks), seconds per field;
- ``plan+run``: then ``PredictionPlan.run`` (statistics, prediction, writing both levels);
- ``tasks/field``: dask tasks executed per field (counted where dask executes them);
- ``forward``: the same model's forward on every field, in memory, batch 1 (the floor);
- ``loop``: a naive loop: read BF, z-score, forward, write full resolution and a 2× level;
- the ratios ``plan+run ÷ forward`` and ``÷ loop``, the time outside the forward per field
  (``overhead ms/field``) and beyond the loop's (``beyond loop ms/field``);
- ``first block``: seconds from the start of planning to the first model block finished;
- ``driver peak RSS``: of the process that planned and ran.

Every measurement runs in a fresh process after the same imports (torch, zarr, zarrstain's
pipeline and models), so each side pays its own warm-up (lazy imports, the first forwards)
and none runs warm on another's; zarrstain and the loop alternate ``--repeat`` times (default
3) and the table gives medians, with the ratio to the loop per pair (median and range):
this machine's timings drift by tens of percent within minutes. Another process makes the
plate.

``--models identity`` swaps in a model that returns its input (a TorchScript
``nn.Identity`` with its card): what remains is orchestration alone. Writes ``scale.json``
and ``scale.md`` in ``--out`` (default ``benchmarks/results/scale``).

    python benchmarks/scale.py --fields 96 384 --chunks whole 32
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np


def make_plate(path: Path, fields: int, side: int, chunk: int | None) -> None:
    """A plate of ``fields`` wells × 1 field, each 1 × 1 × side × side, BF and DNA (uint16).

    Written with zarr directly (the synthetic cells of ``zarrstain.datasets`` take seconds a
    field; here every field is the same pattern, shifted), ome-zarr-py's metadata.
    """
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import (
        write_multiscales_metadata,
        write_plate_metadata,
        write_well_metadata,
    )

    rows = [chr(ord("A") + r) for r in range(16)]
    cols = [str(c + 1) for c in range(-(-fields // 16))]
    wells = [f"{r}/{c}" for c in cols for r in rows][:fields]
    fmt = FormatV05()
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    yy, xx = np.mgrid[:side, :side]
    chunks = (1, 1, 1, chunk or side, chunk or side)
    for i, well in enumerate(wells):
        image = root.require_group(f"{well}/0")
        bf = (1000 + 500 * np.sin((xx + i) / 7.0) * np.cos((yy - i) / 5.0)).astype("uint16")
        data = np.stack([bf, (bf // 2)])[None, :, None]  # t, c, z, y, x
        for level, arr in enumerate((data, data[..., ::2, ::2])):
            image.create_array(str(level), data=arr, chunks=chunks)
        axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}] + [
            {"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"
        ]
        datasets = [
            {"path": str(level), "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 1.0, 1.0, float(2**level), float(2**level)]}]}
            for level in range(2)
        ]  # fmt: skip
        write_multiscales_metadata(image, datasets, fmt=fmt, axes=axes, name="field")
        omero = {"channels": [{"label": "BF", "color": "FFFFFF", "window": {
            "min": 0, "max": 65535, "start": 0, "end": 4000}}, {"label": "DNA", "color": "0000FF",
            "window": {"min": 0, "max": 65535, "start": 0, "end": 4000}}],
            "rdefs": {"defaultT": 0, "defaultZ": 0, "model": "color"}}  # fmt: skip
        ome = dict(image.attrs["ome"])
        image.attrs["ome"] = {**ome, "omero": omero}
        write_well_metadata(root[well], [{"path": "0"}], fmt=fmt)
    write_plate_metadata(root, rows, cols, wells, fmt=fmt, name="scale", field_count=1)


def _model(kind: str, folder: Path) -> Path:
    """A small 2D fnet package, or a TorchScript identity with its card (a no-op model)."""
    import torch

    import zarrstain
    from zarrstain.models import create_model

    folder.mkdir(parents=True, exist_ok=True)
    if kind == "identity":
        path = folder / "identity.pt"
        torch.jit.save(torch.jit.script(torch.nn.Identity()), str(path))
        card = {"input_labels": ["BF"], "output_labels": ["DNA (predicted)"],
                "normalization": "zscore", "spatial_dims": 2, "divisor": 1,
                "receptive_radius": [0, 0], "local": True}  # fmt: skip
        (folder / "identity.json").write_text(json.dumps(card))
        return path
    torch.manual_seed(0)
    model = create_model("fnet", input_labels=["BF"], output_labels=["DNA (predicted)"],
                         normalization="zscore", ndim=2, depth=2, mult_chan=8)  # fmt: skip
    return zarrstain.save_model(model, folder / "fnet", overwrite=True)


def _forward(model_dir: Path, store: Path, n: int, device: str = "cpu") -> float:
    """The model's forward on every field's BF plane, in memory, batch 1."""
    import torch
    import zarr

    import zarrstain

    module = zarrstain.load_model(model_dir).module.to(device).eval()
    root = zarr.open_group(str(store), mode="r")
    planes = [np.asarray(root[f"{w}/0/0"][0, 0, 0], np.float32) for w in _wells(root)][:n]
    with torch.no_grad():
        start = time.perf_counter()
        for p in planes:
            x = torch.from_numpy((p - p.mean()) / p.std())[None, None].to(device)
            module(x).cpu()  # (on a GPU: waits for the forward, as a loop's .numpy() does)
        return time.perf_counter() - start


def _wells(root: Any) -> list[str]:
    return [w["path"] for w in root.attrs["ome"]["plate"]["wells"]]


def naive_loop(model_dir: Path, store: Path, out: Path, device: str = "cpu") -> float:
    """Read BF, z-score, forward, write two levels: the 30-line loop users would write."""
    import torch
    import zarr

    import zarrstain

    start = time.perf_counter()
    module = zarrstain.load_model(model_dir).module.to(device).eval()
    src = zarr.open_group(str(store), mode="r")
    dst = zarr.open_group(str(out), mode="w", zarr_format=3)
    with torch.no_grad():
        for well in _wells(src):
            bf = np.asarray(src[f"{well}/0/0"][0, 0, 0], np.float32)
            x = torch.from_numpy((bf - bf.mean()) / bf.std())[None, None].to(device)
            y = module(x)[0, 0].cpu().numpy()
            dst.create_array(f"{well}/0/0", data=y[None, None, None], chunks=(1, 1, 1, *y.shape))
            low = y[: y.shape[0] // 2 * 2, : y.shape[1] // 2 * 2]
            low = low.reshape(low.shape[0] // 2, 2, low.shape[1] // 2, 2).mean((1, 3))
            dst.create_array(f"{well}/0/1", data=low[None, None, None],
                             chunks=(1, 1, 1, *low.shape))  # fmt: skip
    return time.perf_counter() - start


def time_zarrstain(
    store: Path, model_dir: Path, fields: int, workers: int, base: Path, device: str = "cpu"
) -> dict:
    """Plan and run into a new store, in this (fresh) process: seconds, tasks, first block, RSS."""
    import dask
    import dask.local

    from zarrstain.engine.pipeline import plan_prediction

    tasks = [0]
    execute = dask.local.execute_task

    def count(*args: Any) -> Any:
        # (where dask runs every task: a dask Callback would see only the computations
        # started while no other is running, as dask hands the active callbacks to one)
        tasks[0] += 1
        return execute(*args)

    out = base / "pred.zarr"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    plan = plan_prediction(store, model_dir, out=out, input_channels=["BF"], halo="exact",
                           device=device)  # fmt: skip
    planned = time.perf_counter() - start
    first: list[float] = []

    def progress(event: Any) -> None:
        if not first:
            first.append(time.perf_counter() - start)

    with contextlib.ExitStack() as stack:
        client = None
        if workers:
            from zarrstain.engine.cluster import connect

            client = stack.enter_context(connect(workers=workers))
        else:
            stack.enter_context(mock.patch.object(dask.local, "execute_task", count))
            stack.enter_context(dask.config.set(scheduler="threads"))
        plan.run(progress=progress, client=client)
    total = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    return {
        "plan": planned, "total": total, "tasks": None if workers else tasks[0],
        "first": first[0] if first else None,
        # the peak of this process: planning and the run alone (the plate is made by another)
        "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


def _timed(
    what: str, store: Path, model_dir: Path, fields: int, workers: int, base: Path, device: str
) -> dict:
    """One measurement in a fresh process, after the same imports (torch, zarr, zarrstain):
    each side pays its own start-up inside the process (lazy imports, first forward), none
    runs warm on another's."""
    cmd = [sys.executable, __file__, "--time", what, str(store), str(model_dir), str(fields),
           str(workers), str(base), device]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{what} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _time_one(
    what: str, store: str, model_dir: str, fields: str, workers: str, base: str, device: str
) -> None:
    # the imports both sides pay before their clock starts (each then loads the model)
    import torch  # noqa: F401
    import zarr  # noqa: F401

    plate, model = Path(store), Path(model_dir)
    if what == "zarrstain":
        result = time_zarrstain(plate, model, int(fields), int(workers), Path(base), device)
    elif what == "forward":
        result = {"total": _forward(model, plate, int(fields), device)}
    else:
        out = Path(base) / "loop.zarr"
        shutil.rmtree(out, ignore_errors=True)
        result = {"total": naive_loop(model, plate, out, device)}
        shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(result))


def one(fields: int, chunk: str, model_kind: str, side: int, workers: int, base: Path,
        repeat: int = 3, device: str = "cpu") -> dict:  # fmt: skip
    """One configuration: the plate made once, then zarrstain and the loop ``repeat`` times,
    alternating, each in a fresh process; medians, and the ratio to the loop per pair."""
    store = base / f"plate-{fields}-{chunk}.zarr"
    if store.exists():
        shutil.rmtree(store)
    make = [sys.executable, __file__, "--make", str(store), str(fields), str(side), chunk]
    subprocess.run(make, check=True)
    model_dir = _model(model_kind, base / "models")
    runs, loops = [], []
    for _ in range(repeat):
        runs.append(_timed("zarrstain", store, model_dir, fields, workers, base, device))
        loops.append(_timed("loop", store, model_dir, fields, workers, base, device)["total"])
    forward = _timed("forward", store, model_dir, fields, workers, base, device)["total"]
    shutil.rmtree(store, ignore_errors=True)
    ratios = [r["total"] / loop for r, loop in zip(runs, loops, strict=True)]
    total, loop = _median([r["total"] for r in runs]), _median(loops)
    first = [r["first"] for r in runs if r["first"] is not None]
    return {
        "fields": fields, "chunks": chunk, "model": model_kind,
        "scheduler": f"{workers} workers" if workers else "threads", "device": device,
        "repeats": repeat,
        "plan s/field": round(_median([r["plan"] for r in runs]) / fields, 4),
        "tasks/field": round(runs[0]["tasks"] / fields, 1) if not workers else None,
        "first block s": round(_median(first), 2) if first else None,
        "plan+run s": round(total, 2), "forward s": round(forward, 3), "loop s": round(loop, 2),
        "overhead ms/field": round(1000 * (total - forward) / fields, 1),
        "beyond loop ms/field": round(1000 * (total - loop) / fields, 1),
        "÷ forward": round(total / forward, 1), "÷ loop": round(_median(ratios), 2),
        "÷ loop range": f"{min(ratios):.2f}–{max(ratios):.2f}",
        "driver peak RSS MiB": round(max(r["rss"] for r in runs)),
    }  # fmt: skip


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fields", type=int, nargs="+", default=[96, 384])
    parser.add_argument("--chunks", nargs="+", default=["whole", "32"])
    parser.add_argument("--models", nargs="+", default=["fnet", "identity"])
    parser.add_argument("--workers", type=int, nargs="+", default=[0], help="0: threads")
    parser.add_argument("--side", type=int, default=256, help="Field size in y and x.")
    parser.add_argument("--repeat", type=int, default=3, help="zarrstain/loop pairs per row.")
    parser.add_argument("--device", default="cpu", help="Where every side runs the model.")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scale")
    parser.add_argument("--time", nargs=7, help=argparse.SUPPRESS)  # what store model n w base dev
    parser.add_argument("--make", nargs=4, help=argparse.SUPPRESS)  # store fields side chunk
    args = parser.parse_args()
    if args.make:
        store, fields, side, chunk = args.make
        make_plate(Path(store), int(fields), int(side), None if chunk == "whole" else int(chunk))
        return
    if args.time:
        _time_one(*args.time)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    from zarrstain.evaluation.report import markdown_table

    rows = []
    for fields in args.fields:
        for chunk in args.chunks:
            for model in args.models:
                for workers in args.workers:
                    rows.append(one(fields, chunk, model, args.side, workers, args.out,
                                    args.repeat, args.device))  # fmt: skip
                    print(markdown_table(rows[-1:]), flush=True)
    (args.out / "scale.json").write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / "scale.md").write_text(markdown_table(rows) + "\n")
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
