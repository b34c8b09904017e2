"""zarrstain: virtual staining over whole OME-Zarr stores, lazily and in parallel with dask.

The public names load on first use: ``import zarrstain`` (and ``zarrstain --help``) imports no
torch, so a command that only reads metadata starts as fast as dask, zarr and xarray do.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from . import errors
from ._version import __version__
from .errors import ZarrstainError

#: public name → the module defining it (``datasets`` is a module itself)
_LAZY = {
    "Model": ".models",
    "calibrate": ".calibrate",
    "datasets": ".datasets",
    "evaluate": ".evaluate",
    "load_model": ".models",
    "normalization_stats": ".normalize",
    "normalize": ".normalize",
    "open_image": ".io",
    "open_scenes": ".io",
    "predict": ".predict",
    "save_model": ".models",
    "train": ".training",
    "write_channels": ".io",
}
#: functions named like the module that defines them: importing the module must not hide them
_SHADOWED = {"calibrate", "evaluate", "normalize", "predict"}

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
    if name not in _SHADOWED:
        globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


class _Package(types.ModuleType):
    """Keeps ``zarrstain.predict`` the function when the ``zarrstain.predict`` module loads.

    The import system binds a loaded submodule as an attribute of its package; for the
    functions named like their module that binding is skipped, so the attribute keeps resolving
    through ``__getattr__`` to the function (as it did when the package imported them eagerly).
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
