"""The model-format protocol: a kind of file :func:`zarrstain.load_model` reads.

A format says whether it can open a path (cheaply, from names and headers: xarray's
``guess_can_open``) and loads it as a :class:`~zarrstain.models.Model`. ``load_model`` asks the
installed formats in order of :attr:`ModelFormat.priority` and loads with the first that
answers yes. Formats are plug-ins (entry-point group ``zarrstain.formats``,
:mod:`zarrstain.models.plugins`); zarrstain's own (its model packages, pytorch_fnet
checkpoints, TorchScript, VisCy checkpoints, bioimage.io packages) are declared the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from .plugins import FORMAT_GROUP, PluginRegistry

if TYPE_CHECKING:
    from .model import Model

__all__ = ["FORMATS", "ModelFormat", "find_format", "formats"]

logger = logging.getLogger(__name__)


class ModelFormat:
    """Base class of a model file format; subclass it and declare it as an entry point.

    Subclasses set :attr:`name` and :attr:`description` and implement :meth:`guess_can_open`
    and :meth:`load`.
    """

    #: the entry point's name
    name: str = ""
    #: what it reads, as a phrase for messages: ``"a TorchScript file"``
    description: str = ""
    #: asked before formats of a higher number (self-describing formats first, 0–100)
    priority: int = 50
    #: reads a card given beside the file (``load_model(card=...)``: labels, normalization)
    takes_card: bool = False

    def guess_can_open(self, path: Path) -> bool:
        """Whether ``path`` looks like this format (names and headers only, no full read)."""
        raise NotImplementedError

    def load(self, path: Path, card: dict[str, Any] | str | None = None) -> Model:
        """The model at ``path`` (with ``card``, for formats that take one).

        Raises
        ------
        ModelError
            The file looks like this format but cannot be loaded.
        """
        raise NotImplementedError


#: name → format: entry points of ``zarrstain.formats``, loaded when asked for
FORMATS: PluginRegistry[ModelFormat] = PluginRegistry(FORMAT_GROUP, ModelFormat, "model format")


def formats() -> list[ModelFormat]:
    """Every installed format, in the order :func:`find_format` asks them."""
    return sorted(FORMATS.values(), key=lambda f: (f.priority, f.name))


def find_format(path: Path) -> ModelFormat | None:
    """The first format (by priority) that can open ``path``, or None."""
    for fmt in formats():
        try:
            if fmt.guess_can_open(path):
                return fmt
        except Exception as exc:  # one plug-in's bad guess must not stop the others
            logger.warning("model format %s failed to inspect %s: %s", fmt.name, path, exc)
    return None


def load_with(path: Path, card: dict[str, Any] | str | None) -> Model:
    """Load ``path`` with the format that opens it.

    Raises
    ------
    ModelError
        No format opens it (the message lists what is expected), or ``card`` given for a
        format that describes itself.
    """
    fmt = find_format(path)
    if fmt is None:
        raise ModelError(
            f"{path!s} is not a model zarrstain can load: expected "
            + "; ".join(f.description for f in formats())
            + f" ({FORMATS.hint()})"
        )
    if card is not None and not fmt.takes_card:
        carded = " and ".join(f.description for f in formats() if f.takes_card)
        raise ModelError(
            f"{path!s} is {fmt.description}, which describes itself; card= is for {carded} only"
        )
    return fmt.load(path, card)
