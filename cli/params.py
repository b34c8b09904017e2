"""The CLI's own flag types and parsers: what a flag's text becomes before the library checks
it (the library's rules stay the library's: ``--device`` is checked by
:func:`zarrstain.models.device.check_device`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from zarrstain.errors import ZarrstainError
from zarrstain.models.device import check_device

__all__ = [
    "DEVICE",
    "json_option",
    "model_option",
    "out_option",
    "overwrite_option",
    "parse_dtypes",
    "parse_size",
    "scenes_option",
]


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


# The flags several commands share, declared once (as iohub's cli/parsing.py does): each
# command words its own help, the name, destination and kind are the same everywhere.


def scenes_option(help: str = "Scene id, e.g. A/1/0 (repeat; default all).") -> Callable:
    """``--scene`` (repeatable) → ``scenes``."""
    return click.option("--scene", "scenes", multiple=True, help=help)


def out_option(help: str, *, required: bool = False) -> Callable:
    """``--out`` → ``out``."""
    return click.option("--out", required=required, default=None, help=help)


def overwrite_option(help: str) -> Callable:
    """``--overwrite`` → ``overwrite``."""
    return click.option("--overwrite", is_flag=True, help=help)


def model_option(help: str, *, required: bool = True) -> Callable:
    """``--model`` / ``-m``, a model file or package → ``model_path``."""
    return click.option("--model", "-m", "model_path", required=required, default=None, help=help)


def json_option(help: str) -> Callable:
    """``--json`` → ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)
