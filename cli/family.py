"""Flags generated from the installed model families' option schemas.

Each family declares its run options and training settings (:mod:`zarrstain.models.schema`)
in a light module, as an entry point of ``zarrstain.options``; a :class:`FamilyCommand` turns
them into flags the first time the command parses or shows its help (``zarrstain --help``
reads none, and no family module is imported for them), and hands them to its callback as one
``options`` dict. The CLI itself names no family's setting.
"""

from __future__ import annotations

import logging
from typing import Any

import click

__all__ = ["FamilyCommand", "family_params"]

logger = logging.getLogger(__name__)

#: generated flags' parameter names start with this, so they never meet a command's own
PREFIX = "family__"
_TYPES = {"int": click.INT, "float": click.FLOAT}


def family_params(which: str) -> list[click.Option]:
    """A flag per option of every installed architecture's ``run_schema`` or ``train_schema``.

    Parameters
    ----------
    which
        ``"run"`` or ``"train"``.
    """
    from zarrstain.models import ARCHITECTURES
    from zarrstain.models.schema import FAMILY_OPTIONS, merge_schemas

    # the schemas packages declare (light modules: no family is imported), then those of
    # families registered in this process
    schemas = [(name, getattr(FAMILY_OPTIONS[name], which)) for name in FAMILY_OPTIONS]
    schemas += [
        (name, getattr(arch, f"{which}_schema"))
        for name, arch in ARCHITECTURES.loaded().items()
        if name not in FAMILY_OPTIONS
    ]
    params = []
    for name, (spec, owners) in merge_schemas(schemas).items():
        shown = ", ".join(owners)
        kwargs: dict[str, Any] = {"default": None, "help": f"{shown}: {spec.help}".strip()}
        if spec.type == "bool":
            kwargs["is_flag"] = True
        elif spec.choices:
            kwargs["type"] = click.Choice(spec.choices)
        else:
            kwargs["type"] = _TYPES.get(spec.type, click.STRING)
            kwargs["metavar"] = {"model": "MODEL", "path": "PATH", "floats": "A,B"}.get(spec.type)
        params.append(click.Option([spec.cli_flag, PREFIX + name], **kwargs))
    return params


class FamilyCommand(click.Command):
    """A command with flags for the families' options (``family="run"`` or ``"train"``),
    passed to its callback as ``options``: a dict of the flags given."""

    def __init__(self, *args: Any, family: str = "run", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.family = family
        self._generated = False

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._generated:  # on first use: parsing or --help (imports every family)
            self._generated = True
            self.params.extend(family_params(self.family))
        return super().get_params(ctx)

    def invoke(self, ctx: click.Context) -> Any:
        options = {
            key[len(PREFIX) :]: ctx.params.pop(key)
            for key in [k for k in ctx.params if k.startswith(PREFIX)]
        }
        # flags not given are None (on/off flags: False): the model's defaults apply
        ctx.params["options"] = {
            k: v for k, v in options.items() if v is not None and v is not False
        }
        return super().invoke(ctx)
