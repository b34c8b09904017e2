"""Models: the architecture and format protocols, their plug-in registries, model packages."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ModelError, option
from .architecture import KINDS, Architecture, BlockContext, Geometry, Head
from .bioimageio_export import export_bioimageio
from .card import save_model
from .fnet_compat import load_fnet_checkpoint
from .format import FORMATS, ModelFormat, load_with
from .model import Model, state_dict_hash
from .registry import ARCHITECTURES, build, get_architecture, register
from .torchscript import export_torchscript
from .unet import FnetUNet, fnet_receptive_radius

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "KINDS",
    "Architecture",
    "BlockContext",
    "FnetUNet",
    "Geometry",
    "Head",
    "Model",
    "ModelFormat",
    "build",
    "create_model",
    "export_bioimageio",
    "export_torchscript",
    "fnet_receptive_radius",
    "get_architecture",
    "load_fnet_checkpoint",
    "load_model",
    "register",
    "relabel",
    "renamable",
    "save_model",
]


def create_model(
    architecture: str,
    *,
    input_labels: Sequence[str],
    output_labels: Sequence[str],
    normalization: str = "center",
    name: str | None = None,
    output_intensity: Sequence[tuple[float, float]] = (),
    **kwargs: Any,
) -> Model:
    """A new (untrained) model of a registered architecture.

    Parameters
    ----------
    architecture
        Registry name, e.g. ``"fnet"``.
    input_labels, output_labels
        Channel labels the model reads and predicts.
    normalization
        Input normalization ``predict`` applies (``"center"``, ``"zscore"``, ``"percentile"``,
        ``"none"``).
    name
        For provenance; default the architecture name.
    output_intensity
        ``(offset, scale)`` per output mapping predictions to the target's units.
    **kwargs
        The architecture's arguments (fnet: ``ndim``, ``depth``, ``mult_chan``); the
        architecture fills in channel counts from the labels
        (:meth:`~zarrstain.models.Architecture.channels`).
    """
    spec = get_architecture(architecture)
    kwargs = spec.channels(kwargs, len(input_labels), len(output_labels))
    module = spec.make_module(kwargs).eval()
    geo = spec.geometry(kwargs)
    model = Model(
        name=name or architecture,
        module=module,
        spatial_dims=geo.spatial_dims,
        input_labels=tuple(input_labels),
        output_labels=tuple(output_labels),
        divisor=geo.divisor,
        receptive_radius=geo.receptive_radius,
        normalization=normalization,
        architecture=architecture,
        kwargs=dict(kwargs),
        content_hash=state_dict_hash(module, architecture, kwargs),
        output_intensity=tuple((float(o), float(s)) for o, s in output_intensity),
    )
    model.outputs  # noqa: B018 - labels must match the heads; fail at creation, not at predict
    return model


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
        :mod:`zarrstain.models.viscy`) or a bioimage.io model package (a folder or zip with
        ``rdf.yaml``: :mod:`zarrstain.models.bioimageio`); or any file an installed format
        plug-in opens (:mod:`zarrstain.models.format`).
    output_label
        Label of the predicted channel (models of one target; a head's other channels follow
        it: ``"Nuclei"``, ``"Nuclei lower"``, ...); pytorch_fnet checkpoints carry none and
        default to ``"<folder> (predicted)"``.
    card
        TorchScript files without a card inside or beside them (``model.json``), and VisCy
        checkpoints (channel labels, settings without weights): the card, a dict or a file
        (see :mod:`zarrstain.models.torchscript`, :mod:`zarrstain.models.viscy`).

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
    return len(model.output_labels) == len(model.spec.heads(model.kwargs))


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
    heads = model.spec.heads(model.kwargs)
    labels = tuple(output_label + h.suffix for h in heads)
    return dataclasses.replace(model, output_labels=labels)
