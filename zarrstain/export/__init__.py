"""Exporters above the engine: they run :func:`zarrstain.predict` to make test data, so nothing
under :mod:`zarrstain.models` imports them.
"""

from zarrstain.export.bioimageio import export_bioimageio
from zarrstain.models.formats.torchscript import export_torchscript

__all__ = ["export_bioimageio", "export_torchscript"]
