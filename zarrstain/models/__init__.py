"""Models: the architecture and format protocols, their plug-in registries, model packages.

The protocols and registries (:mod:`.architecture`, :mod:`.schema`, :mod:`.plugins`,
:mod:`.format`, :mod:`.registry`) import no torch; the other names load on first use, so a
process that only reads option schemas or metadata (``zarrstain predict --help``) starts fast.
"""

from __future__ import annotations

from zarrstain._lazy import attach
from zarrstain.models.architecture import KINDS, Architecture, BlockContext, Geometry, Head
from zarrstain.models.format import FORMATS, FileFormat, ModelFormat, load_model, relabel, renamable
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
    "FileFormat",
    "ModelFormat",
    "build",
    "get_architecture",
    "load_model",
    "register",
    "relabel",
    "renamable",
    *_LAZY,
]


__getattr__, __dir__ = attach(__name__, _LAZY)
