"""Models: the architecture and format protocols, their plug-in registries, model packages.

The protocols and registries (:mod:`.architecture`, :mod:`.schema`, :mod:`.plugins`,
:mod:`.format`, :mod:`.registry`) import no torch; the other names load on first use, so a
process that only reads option schemas or metadata (``zarrstain predict --help``) starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from zarrstain.models.architecture import KINDS, Architecture, BlockContext, Geometry, Head
from zarrstain.models.format import FORMATS, ModelFormat, load_model, relabel, renamable
from zarrstain.models.registry import ARCHITECTURES, build, get_architecture, register

#: public name → the module defining it, imported when the name is first used (torch)
_LAZY = {
    "FnetUNet": ".nets.unet",
    "Model": ".model",
    "create_model": ".model",
    "export_torchscript": ".formats.torchscript",
    "fnet_receptive_radius": ".nets.unet",
    "load_fnet_checkpoint": ".fnet.checkpoint",
    "save_model": ".card",
    "state_dict_hash": ".model",
}

__all__ = [
    "ARCHITECTURES",
    "FORMATS",
    "KINDS",
    "Architecture",
    "BlockContext",
    "Geometry",
    "Head",
    "ModelFormat",
    "build",
    "get_architecture",
    "load_model",
    "register",
    "relabel",
    "renamable",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:  # submodules load through the import system
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
