"""A microscope stand-in: writes a finished acquisition into a new store time point by time point.

Run as a separate process by the tests of ``zarrstain watch`` (and by benchmarks/live.py)::

    python stream_writer.py zarr REFERENCE LIVE --interval 0.2
    python stream_writer.py acquire REFERENCE LIVE --interval 0.2
    python stream_writer.py zarr REFERENCE LIVE --stall-at 3

``zarr``: as zarr-python / ome-zarr-py writers do: the OME metadata first (images, or a plate
and its wells), then each time point appended to every level of every image (the arrays grow,
then the chunks are written). ``acquire``: acquire-zarr streams frames of a single image (its
OME metadata are written when it closes). ``--stall-at T`` writes time points before T, then
only the first channel of T, and waits to be killed (a writer that hangs mid time point).
Each time point's last chunk is written at the time printed to ``--log`` (seconds since the
epoch), for latency measurements.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import zarr


def _images(root: zarr.Group) -> list[str]:
    """Image group paths of a store (its root, or a plate's fields)."""
    attrs = root.attrs.asdict()
    ome = attrs.get("ome", attrs)
    if "plate" not in ome:
        return [""]
    out = []
    for well in ome["plate"]["wells"]:
        wattrs = root[well["path"]].attrs.asdict()
        for img in wattrs.get("ome", wattrs)["well"]["images"]:
            out.append(f"{well['path']}/{img['path']}")
    return out


def _levels(group: zarr.Group) -> list[str]:
    attrs = group.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    return [d["path"] for d in ms["datasets"]]


def _copy_groups(ref: zarr.Group, live: zarr.Group, images: list[str]) -> dict[str, list]:
    """Every group with its metadata, and every level array with 0 time points."""
    arrays = {}
    for path in images:
        src = ref[path] if path else ref
        parts = path.split("/") if path else []
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            live.require_group(parent).attrs.put(ref[parent].attrs.asdict())
        dst = live.require_group(path) if path else live
        dst.attrs.put(src.attrs.asdict())
        arrays[path] = []
        for lvl in _levels(src):
            a = src[lvl]
            v3 = ref.metadata.zarr_format == 3
            kwargs = {"dimension_names": a.metadata.dimension_names} if v3 else {}
            b = dst.create_array(lvl, shape=(0, *a.shape[1:]), chunks=a.chunks, dtype=a.dtype,
                                 fill_value=a.fill_value, **kwargs)  # fmt: skip
            arrays[path].append((a, b))
    live.attrs.put(ref.attrs.asdict())  # the plate (or image) metadata last, as writers do
    return arrays


def write_zarr(ref_path: Path, live_path: Path, interval: float, stall_at: int | None, log) -> None:
    ref = zarr.open_group(ref_path, mode="r")
    live = zarr.open_group(live_path, mode="w", zarr_format=ref.metadata.zarr_format)
    images = _images(ref)
    arrays = _copy_groups(ref, live, images)
    n_t = arrays[images[0]][0][0].shape[0]
    for t in range(n_t):
        time.sleep(interval)
        for path in images:
            for src, dst in arrays[path]:
                dst.resize((t + 1, *dst.shape[1:]))
                if stall_at == t:
                    dst[t, :1] = src[t, :1]  # one channel of it, then the writer hangs
                else:
                    dst[t] = src[t]
        if stall_at == t:
            log.write(json.dumps({"stalled": t}) + "\n")
            log.flush()
            time.sleep(3600)
        log.write(json.dumps({"t": t, "written": time.time()}) + "\n")
        log.flush()


def write_acquire(ref_path: Path, live_path: Path, interval: float, log) -> None:
    import acquire_zarr as aqz

    ref = zarr.open_group(ref_path, mode="r")
    src = ref[_levels(ref)[0]]
    n_t, n_c, n_z, n_y, n_x = src.shape
    attrs = ref.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    scales = dict(
        zip(
            (a["name"] for a in ms["axes"]),
            ms["datasets"][0]["coordinateTransformations"][0]["scale"],
            strict=True,
        )
    )
    units = {a["name"]: a.get("unit") for a in ms["axes"]}

    def dim(name, kind, size, chunk, shard=1):
        extra = {"unit": units[name], "scale": scales[name]} if units.get(name) else {}
        return aqz.Dimension(name=name, kind=kind, array_size_px=size, chunk_size_px=chunk,
                             shard_size_chunks=shard, **extra)  # fmt: skip

    dims = [
        dim("t", aqz.DimensionType.TIME, 0, 1),
        dim("c", aqz.DimensionType.CHANNEL, n_c, 1),
        dim("z", aqz.DimensionType.SPACE, n_z, n_z),
        dim("y", aqz.DimensionType.SPACE, n_y, 16, 2),
        dim("x", aqz.DimensionType.SPACE, n_x, 16, 2),
    ]
    settings = aqz.StreamSettings(
        store_path=str(live_path),
        arrays=[aqz.ArraySettings(dimensions=dims, data_type=np.dtype(src.dtype).type,
                                  downsampling_method=aqz.DownsamplingMethod.MEAN)],
        version=aqz.ZarrVersion.V3,
        overwrite=True,
    )  # fmt: skip
    stream = aqz.ZarrStream(settings)
    for t in range(n_t):
        time.sleep(interval)
        stream.append(np.ascontiguousarray(src[t]))
        log.write(json.dumps({"t": t, "written": time.time()}) + "\n")
        log.flush()
    stream.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("zarr", "acquire"))
    parser.add_argument("reference", type=Path)
    parser.add_argument("live", type=Path)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--stall-at", type=int, default=None)
    parser.add_argument("--log", type=Path, default=None)
    args = parser.parse_args(argv)
    log = open(args.log, "a") if args.log else sys.stdout  # noqa: SIM115
    try:
        if args.kind == "zarr":
            write_zarr(args.reference, args.live, args.interval, args.stall_at, log)
        else:
            write_acquire(args.reference, args.live, args.interval, log)
        log.write(json.dumps({"closed": time.time()}) + "\n")
    finally:
        if log is not sys.stdout:
            log.close()


if __name__ == "__main__":
    main()
