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
    "cluster_options",
    "json_option",
    "model_option",
    "out_option",
    "overwrite_option",
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


def cluster_options(command: Callable) -> Callable:
    """``--scheduler``, ``--scheduler-file``, ``--workers``, ``--threads-per-worker``: where the
    command's dask tasks run (:func:`zarrstain.engine.cluster.connect`)."""
    for decorator in reversed((
        click.option("--scheduler", default=None, help="Address of a running dask scheduler."),
        click.option("--scheduler-file", default=None,
                     help="Scheduler file of a running dask cluster."),
        click.option("--workers", type=int, default=None,
                     help="Start a LocalCluster of N processes."),
        click.option("--threads-per-worker", type=int, default=None,
                     help="Threads per local worker."),
    )):  # fmt: skip
        command = decorator(command)
    return command


def json_option(help: str) -> Callable:
    """``--json`` → ``as_json``."""
    return click.option("--json", "as_json", is_flag=True, help=help)
