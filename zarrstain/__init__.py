"""zarrstain: virtual staining over whole OME-Zarr stores, lazily and in parallel with dask.

The public names load on first use: ``import zarrstain`` (and ``zarrstain --help``) imports no
torch, so a command that only reads metadata starts as fast as dask, zarr and xarray do.
"""

from __future__ import annotations

import importlib
from typing import Any

from zarrstain import errors
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
    "train": ".training",
    "write_channels": ".io",
}

__all__ = ["ZarrstainError", "__version__", "errors", *_LAZY]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:  # a submodule, as ``zarrstain.training.TrainConfig`` reads it
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
        raise AttributeError(f"module 'zarrstain' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name], __name__)
    value = module if name == "datasets" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
