"""zarrstain: virtual staining over whole OME-Zarr stores, lazily and in parallel with dask.

The public names load on first use: ``import zarrstain`` (and ``zarrstain --help``) imports no
torch, so a command that only reads metadata starts as fast as dask, zarr and xarray do.
"""

from __future__ import annotations

from zarrstain import errors
from zarrstain._lazy import attach
from zarrstain._version import __version__
from zarrstain.errors import ZarrstainError

#: public name → the module defining it (``datasets`` is a module itself)
_LAZY = {
    "Model": ".models",
    "calibrate": ".uncertainty.calibrate",
    "datasets": ".datasets",
    "evaluate": ".evaluation.evaluate",
    "load_model": ".models",
    "normalization_stats": ".engine.normalize",
    "normalize": ".engine.normalize",
    "open_image": ".io",
    "open_scenes": ".io",
    "predict": ".engine.predict",
    "save_model": ".models",
    "time_statistics": ".live",
    "train": ".training",
    "watch": ".live",
    "write_channels": ".io",
}

__all__ = ["ZarrstainError", "__version__", "errors", *_LAZY]


__getattr__, __dir__ = attach(__name__, _LAZY, submodules=True)
