"""The model-format protocol: a kind of file :func:`zarrstain.load_model` reads.

A format says whether it can open a path (cheaply, from names and headers: xarray's
``guess_can_open``) and loads it as a :class:`~zarrstain.models.Model`. ``load_model`` asks the
installed formats in order of :attr:`ModelFormat.priority` and loads with the first that
answers yes. Formats are plug-ins (entry-point group ``zarrstain.formats``,
:mod:`zarrstain.models.plugins`); zarrstain's own (its model packages, pytorch_fnet
checkpoints, TorchScript, VisCy checkpoints, bioimage.io packages) are declared the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zarrstain.errors import ModelError, option
from zarrstain.models.plugins import FORMAT_GROUP, PluginRegistry

if TYPE_CHECKING:
    from zarrstain.models.model import Model

__all__ = [
    "FORMATS",
    "FileFormat",
    "ModelFormat",
    "find_format",
    "formats",
    "load_model",
    "relabel",
    "renamable",
]

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


@dataclass(frozen=True, kw_only=True)
class FileFormat(ModelFormat):
    """A format made of two functions: whether a path looks like it, and its loader
    (``reader(path)``, or ``reader(path, card)`` when it ``takes_card``).

    >>> JSON = FileFormat(name="my-json", description="a weights file (*.my.json)",
    ...                   guess=is_mine, reader=read_mine)  # doctest: +SKIP
    """

    name: str
    description: str
    guess: Callable[[Path], bool]
    reader: Callable[..., Model]
    priority: int = 50
    takes_card: bool = False

    def guess_can_open(self, path: Path) -> bool:
        return self.guess(path)

    def load(self, path: Path, card: dict[str, Any] | str | None = None) -> Model:
        return self.reader(path, card) if self.takes_card else self.reader(path)


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


def load_model(
    path: str | os.PathLike,
    *,
    output_label: str | None = None,
    card: dict[str, Any] | str | os.PathLike | None = None,
) -> Model:
    """Load a model from disk.

    Parameters
    ----------
    path
        A zarrstain model package folder (``card.json`` + ``weights.pt``), a pytorch_fnet
        checkpoint (``model.p``, or the folder holding it, in either of pytorch_fnet's formats),
        a TorchScript file, a VisCy Lightning checkpoint (``.ckpt``:
        :mod:`zarrstain.models.viscy.family`) or a bioimage.io model package (a folder or zip with
        ``rdf.yaml``: :mod:`zarrstain.models.formats.bioimageio`); or any file an installed format
        plug-in opens (:mod:`zarrstain.models.format`).
    output_label
        Label of the predicted channel (models of one target; a head's other channels follow
        it: ``"Nuclei"``, ``"Nuclei lower"``, ...); pytorch_fnet checkpoints carry none and
        default to ``"<folder> (predicted)"``.
    card
        TorchScript files without a card inside or beside them (``model.json``), and VisCy
        checkpoints (channel labels, settings without weights): the card, a dict or a file
        (see :mod:`zarrstain.models.formats.torchscript`, :mod:`zarrstain.models.viscy.family`).

    Raises
    ------
    ModelError
        Nothing loadable at ``path``, or a file that is not a model zarrstain understands.
    """
    p = Path(path)
    if not p.exists():
        raise ModelError(
            f"no model at {path!s}; pass a zarrstain model folder or a pytorch_fnet model.p"
        )
    model = load_with(p, None if card is None else card if isinstance(card, dict) else str(card))
    if card is not None:  # dask workers reload the model from its source with the same card
        model = dataclasses.replace(
            model, source_card=card if isinstance(card, dict) else str(card)
        )
    return model if output_label is None else relabel(model, output_label)


def renamable(model: Model) -> bool:
    """Whether ``model`` predicts one target (its outputs are that target's heads)."""
    return len(model.targets) == 1


def relabel(model: Model, output_label: str) -> Model:
    """``model`` writing its one target as ``output_label`` (its other heads add their suffix).

    Raises
    ------
    ModelError
        The model predicts several targets.
    """
    if not renamable(model):
        raise ModelError(
            f"model {model.name} predicts {len(model.output_labels)} channels "
            f"{list(model.output_labels)}; "
            + option("output_label", "--output-label")
            + " renames only models of one target"
        )
    return model.relabeled([output_label])
