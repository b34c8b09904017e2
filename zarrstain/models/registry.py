"""Architectures by name, so model packages can name theirs in a human-readable card."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .unet import FnetUNet

__all__ = ["ARCHITECTURES", "build"]

#: name → constructor taking the card's keyword arguments
ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"fnet": FnetUNet}


def build(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct a registered architecture with its keyword arguments."""
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; registered: {', '.join(ARCHITECTURES)}"
        ) from None
    return factory(**kwargs)
