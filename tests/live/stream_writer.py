"""A microscope stand-in process: writes a finished acquisition into a new store time point by
time point, for the tests of ``zarrstain watch`` and ``benchmarks/live.py``::

    python stream_writer.py zarr REFERENCE LIVE --interval 0.2 [--stall-at T] [--log FILE]
    python stream_writer.py acquire REFERENCE LIVE --interval 0.2
    python stream_writer.py ome-zarr REFERENCE LIVE --interval 0.2

``zarr``: :func:`zarrstain.live.replay.replay` (zarr-python appending, as ome-zarr-py and iohub
writers do; ``--stall-at T`` writes only the first channel of time point T, then hangs until
killed). ``ome-zarr``: ome-zarr-py's ``write_image`` writes the first time point, zarr appends
the others. ``acquire``: acquire-zarr streams the frames of a single image (it writes the OME
metadata when it closes). The log gets one JSON line per time point, with the time (seconds
since the epoch) its last chunk was written, and ``{"stalled": T}`` or ``{"closed": time}``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import zarr

from zarrstain.live.replay import replay


def write_ome_zarr(ref_path: Path, live_path: Path, interval: float, log) -> None:
    """ome-zarr-py's ``write_image`` writes the first time point (image, pyramid, metadata);
    zarr appends the others to every level, as ome-zarr-py users do for a time-lapse."""
    from ome_zarr.writer import write_image

    ref = zarr.open_group(ref_path, mode="r")
    attrs = ref.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    src = ref[ms["datasets"][0]["path"]]
    scale = ms["datasets"][0]["coordinateTransformations"][0]["scale"]
    transforms = [
        [{"type": "scale", "scale": [*scale[:3], scale[3] * 2**k, scale[4] * 2**k]}]
        for k in range(2)
    ]
    root = zarr.open_group(live_path, mode="w")
    start = time.monotonic()
    for t in range(src.shape[0]):
        time.sleep(max(start + (t + 1) * interval - time.monotonic(), 0.0))
        frame = src[t]
        if t == 0:
            write_image(frame[None], root, axes="tczyx", scale_factors=(2,),
                        coordinate_transformations=transforms,
                        storage_options={"chunks": src.chunks})  # fmt: skip
        else:
            ome = root.attrs.asdict().get("ome", root.attrs.asdict())
            for k, dataset in enumerate(ome["multiscales"][0]["datasets"]):
                level = root[dataset["path"]]
                level.resize((t + 1, *level.shape[1:]))
                level[t] = frame[..., :: 2**k, :: 2**k][..., : level.shape[-2], : level.shape[-1]]
        log.write(json.dumps({"t": t, "written": time.time()}) + "\n")
        log.flush()


def write_acquire(ref_path: Path, live_path: Path, interval: float, log) -> None:
    import acquire_zarr as aqz

    ref = zarr.open_group(ref_path, mode="r")
    attrs = ref.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    src = ref[ms["datasets"][0]["path"]]
    n_t, n_c, n_z, n_y, n_x = src.shape
    names = [a["name"] for a in ms["axes"]]
    scales = dict(zip(names, ms["datasets"][0]["coordinateTransformations"][0]["scale"],
                      strict=True))  # fmt: skip
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
    parser.add_argument("kind", choices=("zarr", "acquire", "ome-zarr"))
    parser.add_argument("reference", type=Path)
    parser.add_argument("live", type=Path)
    parser.add_argument("--interval", type=float, default=0.2)
    parser.add_argument("--stall-at", type=int, default=None)
    parser.add_argument("--log", type=Path, default=None)
    parser.add_argument("--preallocate", action="store_true")
    args = parser.parse_args(argv)
    log = open(args.log, "a") if args.log else sys.stdout  # noqa: SIM115

    def written(t: int, when: float) -> None:
        log.write(json.dumps({"t": t, "written": when}) + "\n")
        log.flush()

    try:
        if args.kind == "acquire":
            write_acquire(args.reference, args.live, args.interval, log)
        elif args.kind == "ome-zarr":
            write_ome_zarr(args.reference, args.live, args.interval, log)
        else:
            replay(args.reference, args.live, interval=args.interval, stall_at=args.stall_at,
                   preallocate=args.preallocate, on_written=written)  # fmt: skip
            if args.stall_at is not None:
                written_stall = json.dumps({"stalled": args.stall_at})
                log.write(written_stall + "\n")
                log.flush()
                time.sleep(3600)  # a writer that hangs: ended by the test
        log.write(json.dumps({"closed": time.time()}) + "\n")
    finally:
        if log is not sys.stdout:
            log.close()


if __name__ == "__main__":
    main()
