"""Architectures by name, so model cards can name theirs and users can add their own.

``register`` adds an :class:`~zarrstain.models.architecture.Architecture`; the engine finds it by
the name a model card stores. On a dask.distributed cluster, workers that load a card must
register the same architecture: put the ``register`` call in an importable module (imported by
the worker, e.g. with a ``--preload`` of that module) rather than in a notebook cell.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .architecture import Architecture
from .bioimageio import BioimageioArchitecture
from .classifier import ClassifierArchitecture
from .control import ControlArchitecture
from .diffusion import DiffusionArchitecture
from .fnet import FnetArchitecture
from .torchscript import TorchScriptArchitecture
from .viscy import VisCyArchitecture

__all__ = ["ALIASES", "ARCHITECTURES", "build", "get_architecture", "register"]

#: name → architecture
ARCHITECTURES: dict[str, Architecture] = {}
#: training names → (architecture, fixed kwargs): ``fnet3d`` and ``fnet2d`` are fnet with ndim
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "fnet3d": ("fnet", {"ndim": 3}),
    "fnet2d": ("fnet", {"ndim": 2}),
    "diffusion2d": ("diffusion", {"ndim": 2}),
    "diffusion3d": ("diffusion", {"ndim": 3}),
    "classifier2d": ("classifier", {"ndim": 2}),
    "classifier3d": ("classifier", {"ndim": 3}),
}


def register(architecture: Architecture, *, replace: bool = False) -> Architecture:
    """Make an architecture available to ``create_model``, model cards and ``train``.

    Parameters
    ----------
    architecture
        An instance of an :class:`~zarrstain.models.architecture.Architecture` subclass with a
        ``name``.
    replace
        Allow replacing an architecture registered under the same name.

    Returns
    -------
    Architecture
        ``architecture``, so ``register`` can be used as ``ARCH = register(MyArch())``.
    """
    if not isinstance(architecture, Architecture):
        raise TypeError(
            f"register takes an Architecture instance, not {architecture!r}; subclass "
            "zarrstain.models.Architecture"
        )
    name = architecture.name
    if not name or not isinstance(name, str):
        raise ValueError(f"{architecture!r} has no name; set the class attribute `name`")
    if name in ALIASES:
        raise ValueError(f"{name!r} is a training alias of {ALIASES[name][0]!r}; choose another")
    if name in ARCHITECTURES and not replace and ARCHITECTURES[name] is not architecture:
        raise ValueError(
            f"an architecture named {name!r} is registered already ({ARCHITECTURES[name]!r}); "
            "choose another name or pass replace=True"
        )
    ARCHITECTURES[name] = architecture
    return architecture


def get_architecture(name: str) -> Architecture:
    """The registered architecture called ``name``."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown architecture {name!r}; registered: {', '.join(ARCHITECTURES)} "
            "(add one with zarrstain.models.register)"
        ) from None


def build(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct a registered architecture with its keyword arguments."""
    return get_architecture(architecture).make_module(kwargs)


register(FnetArchitecture())
register(DiffusionArchitecture())
register(ClassifierArchitecture())
register(ControlArchitecture())
register(TorchScriptArchitecture())
register(VisCyArchitecture())
register(BioimageioArchitecture())
