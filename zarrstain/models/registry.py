"""Architectures by name, so model packages can name theirs in a human-readable card.

Each entry knows how to build the module from the card's keyword arguments and what the tiling
engine needs to know about it: spatial dims, divisor and receptive radius per axis.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .unet import FnetUNet, fnet_receptive_radius

__all__ = ["ARCHITECTURES", "Architecture", "build", "geometry"]


@dataclass(frozen=True)
class Architecture:
    """A registered architecture.

    Attributes
    ----------
    factory
        Builds the module from keyword arguments.
    geometry
        ``kwargs → (spatial_dims, divisor, receptive_radius per spatial axis)``.
    """

    factory: Callable[..., nn.Module]
    geometry: Callable[[dict[str, Any]], tuple[int, int, tuple[int, ...]]]


def _fnet_geometry(kwargs: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    ndim, depth = int(kwargs.get("ndim", 3)), int(kwargs.get("depth", 4))
    return ndim, 2**depth, (fnet_receptive_radius(depth),) * ndim


#: name → architecture
ARCHITECTURES: dict[str, Architecture] = {"fnet": Architecture(FnetUNet, _fnet_geometry)}


def _get(architecture: str) -> Architecture:
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; registered: {', '.join(ARCHITECTURES)}"
        ) from None


def build(architecture: str, **kwargs: Any) -> nn.Module:
    """Construct a registered architecture with its keyword arguments."""
    return _get(architecture).factory(**kwargs)


def geometry(architecture: str, kwargs: dict[str, Any]) -> tuple[int, int, tuple[int, ...]]:
    """Spatial dims, divisor and receptive radius of an architecture with these arguments."""
    return _get(architecture).geometry(kwargs)
