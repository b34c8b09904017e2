"""The ``zarrstain`` command line: thin click commands over the public API.

Errors zarrstain raises on purpose are printed as one line (``error: ...``) with exit code 1 and
no traceback; ``-v`` shows debug logging and tracebacks.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

import zarrstain
from zarrstain.errors import ZarrstainError

logger = logging.getLogger("zarrstain.cli")


class _Group(click.Group):
    """Turns zarrstain errors into a one-line message and a non-zero exit."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ZarrstainError as exc:
            if logging.getLogger("zarrstain").isEnabledFor(logging.DEBUG):
                logger.exception("traceback")
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


def _configure_logging(verbose: int, quiet: bool) -> None:
    levels = {0: logging.WARNING, 1: logging.INFO}
    level = logging.ERROR if quiet else levels.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("zarrstain")
    root.handlers[:] = [handler]
    root.setLevel(level)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(zarrstain.__version__, prog_name="zarrstain")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
def cli(verbose: int, quiet: bool) -> None:
    """Run virtual-staining models over whole OME-Zarr stores."""
    _configure_logging(verbose, quiet)


@cli.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Print the description as JSON.")
def info(store: str, as_json: bool) -> None:
    """Show the scenes of STORE: shape, dtype, chunks, channels, pyramid, scale, NGFF version.

    STORE is a local path or a URL (http://, s3://, ...).
    """
    from zarrstain.io.info import describe, format_description

    description = describe(store)
    click.echo(json.dumps(description, indent=2) if as_json else format_description(description))


@cli.command()
@click.argument("directory", default="zarrstain-demo", type=click.Path(path_type=Path))
def demo(directory: Path) -> None:
    """Generate a synthetic plate in DIRECTORY, write a channel back and show the result."""
    from zarrstain.demo import run_demo
    from zarrstain.io.info import describe, format_description

    plate = run_demo(directory)
    click.echo(format_description(describe(plate)))
    click.echo(f"\ndemo store: {plate}")


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="zarrstain")


if __name__ == "__main__":  # pragma: no cover
    main()
