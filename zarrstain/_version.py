"""The installed version, in a module of its own so any layer can import it without the package."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("zarrstain")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
