"""The CLI's own flag types and parsers: what a flag's text becomes before the library checks
it (the library's rules stay the library's: ``--device`` is checked by
:func:`zarrstain.models.device.check_device`)."""

from __future__ import annotations

from typing import Any

import click

from zarrstain.errors import ZarrstainError
from zarrstain.models.device import check_device

__all__ = ["DEVICE", "parse_dtypes", "parse_halo", "parse_size"]


class _Device(click.ParamType):
    """auto, cpu, cuda or cuda:N: the library's rule
    (:func:`zarrstain.models.device.check_device`)."""

    name = "auto|cpu|cuda[:N]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return check_device(value)
        except ZarrstainError as exc:
            self.fail(str(exc), param, ctx)


DEVICE = _Device()


def parse_halo(value: str) -> str | int:
    """``--halo``: ``auto``, ``exact`` or voxels."""
    if value in ("auto", "exact"):
        return value
    try:
        return int(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not auto, exact or an integer") from None


def parse_dtypes(values: tuple[str, ...]) -> str | dict[str, str] | None:
    """``--dtype uint16`` → "uint16"; ``--dtype "DNA (predicted std)=float32"`` → a mapping."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    if not all("=" in v for v in values):
        raise click.BadParameter(
            "give one dtype, or LABEL=DTYPE for each channel", param_hint="--dtype"
        )
    return dict(v.rsplit("=", 1) for v in values)


def parse_size(value: str | None) -> list[int] | None:
    """``--patch 32x64x64`` (or ``32,64,64``) → ``[32, 64, 64]``."""
    if value is None:
        return None
    try:
        return [int(v) for v in value.lower().replace("x", ",").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a size like 32x64x64") from None
