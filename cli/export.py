"""``zarrstain export``: a model in another format, to run outside zarrstain or share."""

from __future__ import annotations

import click

from .output import _say

__all__ = ["export"]

FORMATS = ("torchscript",)


@click.command()
@click.argument("model_path")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="torchscript", show_default=True,
    help="torchscript: one traced file, its zarrstain card inside.",
)  # fmt: skip
@click.option("--out", required=True, help="The file to write (e.g. model.pt).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
def export(model_path: str, fmt: str, out: str, overwrite: bool) -> None:
    """Export the model MODEL_PATH (a zarrstain package or any model load_model reads)."""
    from zarrstain.models import export_torchscript, load_model

    model = load_model(model_path)
    path = export_torchscript(model, out, overwrite=overwrite)
    _say(f"exported {model.name} ({model.architecture}) as {fmt}: {path}")
