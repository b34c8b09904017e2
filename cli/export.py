"""``zarrstain export``: a model in another format, to run outside zarrstain or share."""

from __future__ import annotations

import click

from .output import _say
from .params import out_option, overwrite_option

__all__ = ["export"]

FORMATS = ("torchscript", "bioimageio", "viscy")


@click.command()
@click.argument("model_path")
@click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="torchscript", show_default=True,
    help="torchscript: one traced file, its zarrstain card inside; bioimageio: a bioimage.io "
    "model package (zip) with both weight formats, test tensors and a cover; viscy: a VisCy "
    "network (fine-tuned) in VisCy's .ckpt layout, its card beside it.",
)  # fmt: skip
@out_option("The file to write (model.pt, package.zip).", required=True)
@overwrite_option("Replace --out if it exists.")
@click.option("--author", "authors", multiple=True, help="bioimageio: an author's name (repeat).")
@click.option("--license", "license_id", default="CC-BY-4.0", show_default=True,
              help="bioimageio: SPDX license id.")  # fmt: skip
@click.option("--halo", type=int, default=None,
              help="bioimageio: the outputs' halo, when smaller than the receptive radius "
              "(smaller inputs; tiles cut with it are approximate).")  # fmt: skip
@click.option("--sample", default=None,
              help="bioimageio: a store whose image gives the test input and the cover "
              "[synthetic cells].")  # fmt: skip
@click.option("--scene", default=None,
              help="bioimageio: the --sample store's scene ('A/1/0') [its first].")  # fmt: skip
@click.option("--cite", "cites", multiple=True, metavar="TEXT|DOI",
              help="bioimageio: a paper to cite, its text and DOI or URL (repeat) "
              "[the family's method paper].")  # fmt: skip
def export(
    model_path: str,
    fmt: str,
    out: str,
    overwrite: bool,
    authors: tuple[str, ...],
    license_id: str,
    halo: int | None,
    sample: str | None,
    scene: str | None,
    cites: tuple[str, ...],
) -> None:
    """Export the model MODEL_PATH (a zarrstain package or any model load_model reads)."""
    from zarrstain.export import export_bioimageio, export_torchscript
    from zarrstain.export.bioimageio import sample_from_store
    from zarrstain.models import load_model

    model = load_model(model_path)
    if fmt == "viscy":
        from zarrstain.models.viscy.export import export_viscy_checkpoint

        if sample or scene or halo is not None or cites:
            raise click.BadParameter(
                "--sample, --scene, --halo and --cite are options of --format bioimageio"
            )
        path = export_viscy_checkpoint(model, out, overwrite=overwrite)
    elif fmt == "torchscript":
        if sample or scene or halo is not None or cites:
            raise click.BadParameter(
                "--sample, --scene, --halo and --cite are options of --format bioimageio"
            )
        path = export_torchscript(model, out, overwrite=overwrite)
    else:
        data = sample_from_store(sample, model, scene=scene) if sample else None
        cite = [tuple(c.rsplit("|", 1)) for c in cites]
        if any(len(c) != 2 for c in cite):
            raise click.BadParameter("--cite takes TEXT|DOI (or TEXT|URL)")
        path = export_bioimageio(model, out, sample=data, authors=authors, license=license_id,
                                 halo=halo, cite=cite, overwrite=overwrite)  # fmt: skip
    _say(f"exported {model.name} ({model.architecture}) as {fmt}: {path}")
