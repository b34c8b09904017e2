"""Names a package exports but imports only when first used (torch stays out of light paths).

What ``scientific-python``'s ``lazy_loader.attach`` does, in the few lines zarrstain needs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["attach"]


def attach(
    package: str, names: Mapping[str, str], *, submodules: bool = False
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` exporting ``names`` lazily.

    Parameters
    ----------
    package
        The package's ``__name__``.
    names
        Public name → the module defining it, relative to ``package`` (``".model"``). A name
        that is its module (``"datasets": ".datasets"``) is the module itself.
    submodules
        Other attributes are tried as submodules (``zarrstain.training`` from ``zarrstain``).
    """

    def getattr_(name: str) -> Any:
        if name not in names:
            if submodules:
                try:
                    return importlib.import_module(f".{name}", package)
                except ModuleNotFoundError as exc:
                    if exc.name != f"{package}.{name}":
                        raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(names[name], package)
        value = module if names[name] == f".{name}" else getattr(module, name)
        setattr(sys.modules[package], name, value)
        return value

    def dir_() -> list[str]:
        return sorted({*vars(sys.modules[package]), *names})

    return getattr_, dir_
