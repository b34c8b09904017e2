"""Read an OME-Zarr plate as labeled scenes, derive a channel, write it back with provenance.

Run: python examples/read_and_write_channels.py [OUTPUT_DIR]

It generates a small synthetic plate (zarrstain.datasets), so it needs no data of your own.
Replace ``plate`` with the path or URL of your store to use it on real data.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import zarrstain
from zarrstain import datasets
from zarrstain.io.info import describe, format_description


def main(out_dir: str = "example-output") -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plate = datasets.make_plate(out / "plate.zarr", rows=("A",), columns=("1", "2"), fields=1)

    # Every field of the plate as a lazy (t, c, z, y, x) DataArray with channel labels.
    scenes = zarrstain.open_scenes(plate)
    for sid, image in scenes.items():
        print(sid, dict(image.sizes), list(image.c.values))

    # Any lazy computation that keeps (t, c, z, y, x) can be written back as new channels;
    # here a maximum projection of DNA broadcast over z, stored in the plate's dtype.
    projections = {}
    for sid, image in scenes.items():
        mip = image.sel(c=["DNA"]).max("z").broadcast_like(image.sel(c=["DNA"]))
        mip = mip.transpose(*image.dims).assign_coords(c=["DNA (max projection)"])
        mip.attrs["zarrstain"] = {"operation": "max projection over z"}  # provenance
        projections[sid] = mip
    zarrstain.write_channels(plate, projections)  # in place, crash-safe

    # Or into a new store that mirrors the plate layout, keeping float32 and copying BF.
    floats = {sid: p.astype("float32") / 65535 for sid, p in projections.items()}
    zarrstain.write_channels(plate, floats, out=out / "projections.zarr", copy_channels=["BF"])

    print(format_description(describe(plate)))
    print(format_description(describe(out / "projections.zarr")))
    return plate


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    main(*sys.argv[1:])
