"""The demo behind ``zarrstain demo``: a synthetic plate generated on the spot.

For now the demo generates the store and copies a channel through the writer, so a new user
sees the whole read → write → describe path work on their machine. Training and prediction
join it when those features land.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from . import datasets
from .io import open_scenes, write_channels

__all__ = ["run_demo"]

logger = logging.getLogger(__name__)


def run_demo(directory: str | Path = "zarrstain-demo", *, overwrite: bool = True) -> Path:
    """Generate a synthetic HCS plate in ``directory`` and write a derived channel back.

    Parameters
    ----------
    directory
        Output folder; the plate is ``directory/plate.zarr``.
    overwrite
        Replace an earlier demo plate.

    Returns
    -------
    pathlib.Path
        Path of the plate store.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    plate = directory / "plate.zarr"
    if plate.exists():
        if not overwrite:
            raise FileExistsError(f"{plate} exists; remove it or pass overwrite=True")
        shutil.rmtree(plate)
    logger.info("generating a synthetic plate in %s", plate)
    datasets.make_plate(plate, shape=(2, 16, 96, 96))
    # A stand-in for a model until prediction lands: the DNA channel's local mean, written back
    # through the same crash-safe path predictions take.
    derived = {}
    for sid, image in open_scenes(plate).items():
        dna = image.sel(c=["DNA"]).astype("float32")
        smooth = dna.rolling(y=3, x=3, center=True, min_periods=1).mean()
        derived[sid] = smooth.assign_coords(c=["DNA (smoothed)"])
    write_channels(plate, derived, dtype="uint16")
    return plate
