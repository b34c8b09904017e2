"""zarrstain: virtual staining over whole OME-Zarr stores, lazily and in parallel with dask."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zarrstain")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from . import datasets, errors
from .errors import ZarrstainError
from .evaluate import evaluate  # likewise
from .io import open_image, open_scenes, write_channels
from .models import Model, load_model, save_model
from .normalize import normalization_stats, normalize  # the function shadows the module name
from .predict import predict  # likewise
from .training import train

__all__ = [
    "Model",
    "ZarrstainError",
    "__version__",
    "datasets",
    "errors",
    "evaluate",
    "load_model",
    "normalization_stats",
    "normalize",
    "open_image",
    "open_scenes",
    "predict",
    "save_model",
    "train",
    "write_channels",
]
