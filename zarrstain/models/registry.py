"""Architectures by name, so model cards can name theirs and users can add their own.

A package adds a family by declaring an entry point in the group ``zarrstain.architectures``
(:mod:`zarrstain.models.plugins`): every process then finds it by name, dask workers included.
zarrstain's own families are declared the same way. :func:`register` adds one in code, for a
notebook or a script; such an architecture exists only in the process that registered it, so
a cluster's workers need an entry point (or a ``--preload`` of the registering module).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zarrstain.errors import ModelError
from zarrstain.models.architecture import Architecture
from zarrstain.models.plugins import ARCHITECTURE_GROUP, PluginRegistry

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ARCHITECTURES", "aliases", "build", "get_architecture", "register", "resolve"]

#: name → architecture: those registered, then the entry points (loaded when asked for)
ARCHITECTURES: PluginRegistry[Architecture] = PluginRegistry(
    ARCHITECTURE_GROUP, Architecture, "architecture"
)


def aliases() -> dict[str, tuple[str, dict[str, Any]]]:
    """Training names → (architecture, fixed kwargs), from every architecture's ``aliases``:
    ``fnet3d`` is fnet with ``ndim=3``."""
    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, arch in ARCHITECTURES.items():
        for alias, fixed in arch.aliases.items():
            out.setdefault(alias, (name, dict(fixed)))
    return out


def resolve(name: str) -> tuple[str, dict[str, Any]]:
    """``(architecture, fixed kwargs)`` a training name stands for (itself, or an alias's).

    Unknown names come back as they are: the caller words the error.
    """
    if name in ARCHITECTURES:
        return name, {}
    return aliases().get(name, (name, {}))


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
    known = aliases()
    if name in known:
        raise ValueError(f"{name!r} is a training alias of {known[name][0]!r}; choose another")
    current = ARCHITECTURES.get(name) if name in ARCHITECTURES else None
    if current is not None and not replace and current is not architecture:
        raise ValueError(
            f"an architecture named {name!r} is registered already ({current!r}); "
            "choose another name or pass replace=True"
        )
    ARCHITECTURES[name] = architecture
    return architecture


def get_architecture(name: str) -> Architecture:
    """The architecture called ``name``: registered, or an installed plug-in's.

    Raises
    ------
    ModelError
        No such architecture (the message lists those installed), or its plug-in failed to load.
    """
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ModelError(
            f"unknown architecture {name!r}; installed: {', '.join(sorted(ARCHITECTURES))} "
            f"({ARCHITECTURES.hint()}, or register one with zarrstain.models.register)"
        ) from None


def build(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct a registered architecture with its keyword arguments."""
    return get_architecture(architecture).make_module(kwargs)
