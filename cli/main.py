"""The ``zarrstain`` command line: thin click commands over the public API.

Errors zarrstain raises on purpose are printed as one line (``error: ...``) with exit code 1 and
no traceback, their advice naming command-line flags (:func:`zarrstain.errors.option`); so are
operating-system errors (a full disk, a permission). Anything else is a bug, reported as one
line too, with the traceback under ``-v``. ``-q`` prints errors only (and ``--json`` output).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

import zarrstain
from zarrstain.engine.options import NORMALIZATIONS, PRECISION_NAMES, TTA_MODES
from zarrstain.errors import ZarrstainError, cli_messages

from .evaluate import evaluate
from .export import export
from .family import FamilyCommand
from .output import _quiet, _say
from .params import (
    DEVICE,
    cluster_options,
    json_option,
    model_option,
    out_option,
    overwrite_option,
    scenes_option,
)
from .progress import Progress, StageProgress
from .train import train
from .uncertainty import calibrate
from .watch import watch

logger = logging.getLogger("zarrstain.cli")


class _Group(click.Group):
    """Turns errors into a one-line message and a non-zero exit; advice names CLI flags."""

    def invoke(self, ctx: click.Context):
        try:
            with cli_messages():
                return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        except Exception as exc:
            if logging.getLogger("zarrstain").isEnabledFor(logging.INFO):
                logger.exception("traceback")
            if isinstance(exc, ZarrstainError):
                message = str(exc)
            elif isinstance(exc, OSError):  # the machine's, not zarrstain's: a disk, a permission
                message = str(exc) or type(exc).__name__
            else:
                message = (
                    f"unexpected {type(exc).__name__}: {exc} (a bug in zarrstain; please report "
                    "it with the traceback that -v prints)"
                )
            click.echo(f"error: {message}", err=True)
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
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """Run virtual-staining models over whole OME-Zarr stores."""
    _configure_logging(verbose, quiet)
    ctx.obj = {"quiet": quiet}


@cli.command()
@click.argument("store")
@json_option("Print the description as JSON.")
def info(store: str, as_json: bool) -> None:
    """Show the scenes of STORE: shape, dtype, chunks, channels, pyramid, scale, NGFF version.

    STORE is a local path or a URL (http://, s3://, ...).
    """
    from zarrstain.io.info import describe, format_description

    description = describe(store)
    if as_json:
        click.echo(json.dumps(description, indent=2))
    else:
        _say(format_description(description))


@cli.command(cls=FamilyCommand)
@click.argument("store")
@model_option(
    "Model: a zarrstain package, pytorch_fnet model.p, TorchScript file, VisCy .ckpt, "
    "bioimage.io package or a plug-in format's file."
)
@click.option(
    "--input-channel",
    "input_channels",
    multiple=True,
    help="Input channel label, in the model's order (repeat for several).",
)
@scenes_option()
@click.option("--time", "time", default=None, help="Time points T0:T1 or T (default all).")
@out_option("Write into this new store instead of in place.")
@overwrite_option("Replace an earlier prediction with the same label.")
@click.option(
    "--halo", default="auto", show_default=True, help="auto, exact or a number of voxels."
)
@click.option(
    "--normalization",
    default="model",
    show_default=True,
    type=click.Choice(NORMALIZATIONS),
)
@click.option("--output-label", default=None, help="Label of the predicted channel.")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    type=DEVICE,
    metavar=DEVICE.name,
    help="Where the model runs.",
)
@click.option(
    "--tta",
    default="none",
    show_default=True,
    type=click.Choice(TTA_MODES),
    help="Test-time augmentation: the mean over the 4 xy flips, or the 8 flips and rotations "
    "(4x / 8x the time; tiling stays exact).",
)
@click.option(
    "--precision",
    default="float32",
    show_default=True,
    type=click.Choice(PRECISION_NAMES),
    help="Mixed precision on GPUs.",
)
@click.option(
    "--dtype",
    "dtypes",
    multiple=True,
    help="Output dtype (in place: the store's, e.g. uint16), or LABEL=DTYPE for one channel "
    "(repeat).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of stochastic models.")
@click.option(
    "--scratch",
    default=None,
    help="Folder for the passes of multi-pass models [default: beside the output store].",
)
@click.option(
    "--rescale",
    is_flag=True,
    help="Map normalized-unit predictions (pytorch_fnet) onto the integer --dtype's range.",
)
@click.option("--copy-channels", is_flag=True, help="With --out: copy the source channels too.")
@click.option("--block-memory", default=None, help="Memory budget per block, e.g. 4GiB.")
@cluster_options
@click.option("--dry-run", is_flag=True, help="Print the plan; compute and write nothing.")
@click.option(
    "--allow-missing-chunks",
    is_flag=True,
    help="Predict from inputs with missing chunks (read as the fill value) instead of refusing.",
)
@click.option(
    "--allow-constant-frames",
    is_flag=True,
    help="Predict time points whose input is constant (blank) instead of refusing them.",
)
@json_option("Print the plan / result as JSON.")
def predict(
    store: str,
    model_path: str,
    input_channels: tuple[str, ...],
    scenes: tuple[str, ...],
    time: str | None,
    out: str | None,
    overwrite: bool,
    halo: str,
    normalization: str,
    output_label: str | None,
    device: str,
    precision: str,
    tta: str,
    dtypes: tuple[str, ...],
    seed: int,
    scratch: str | None,
    rescale: bool,
    copy_channels: bool,
    block_memory: str | None,
    scheduler: str | None,
    scheduler_file: str | None,
    workers: int | None,
    threads_per_worker: int | None,
    dry_run: bool,
    allow_missing_chunks: bool,
    allow_constant_frames: bool,
    as_json: bool,
    options: dict[str, Any],
) -> None:
    """Predict channels for the scenes of STORE with a model and write them back (or to --out).

    Predicted channels are labelled "<name> (predicted)" by default, so they never collide
    with acquired channels, which predictions never replace. The flags after --json are the
    installed model families' run options (a family refuses the others').
    """
    from zarrstain.engine.cluster import connect
    from zarrstain.engine.options import PredictOptions, WriteOptions
    from zarrstain.engine.pipeline import format_plan, plan_prediction
    from zarrstain.io.dtypes import dtypes_from_text

    settings = dict(
        scenes=list(scenes) or None,
        time=time,
        output_label=output_label,
        rescale=rescale,
        allow_missing_chunks=allow_missing_chunks,
        allow_constant_frames=allow_constant_frames,
        predict_options=PredictOptions(
            halo=halo,
            normalize=normalization,
            input_channels=list(input_channels) or None,
            device=device,
            precision=precision,
            tta=tta,
            block_memory=block_memory,
            seed=seed,
            scratch=scratch,
            options=options,
        ),
        write_options=WriteOptions(
            out=out,
            overwrite=overwrite,
            dtype=dtypes_from_text(dtypes),
            copy_channels=copy_channels,
        ),
    )
    if dry_run:
        description = plan_prediction(store, model_path, **settings).describe()
        if as_json:
            click.echo(json.dumps(description, indent=2))
        else:
            _say(format_plan(description))
        return
    with connect(scheduler, scheduler_file, workers, threads_per_worker) as client:
        plan = plan_prediction(store, model_path, **settings)
        if client is not None and not _quiet():
            click.echo(f"running on {client.dashboard_link}", err=True)
        # shown from the first finished block on, after the statistics pass
        bar = Progress("predicting blocks", plan.n_blocks, "block", quiet=_quiet())
        result = plan.run(progress=bar, client=client)
        bar.finish()
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for scene, status in result.items():
            _say(f"{scene or '(image)'}: {status}")


@cli.command()
@click.argument("directory", default="zarrstain-demo", type=click.Path(path_type=Path))
def demo(directory: Path) -> None:
    """The whole loop on a synthetic plate: train BF → DNA, predict every scene, evaluate.

    Writes DIRECTORY/plate.zarr (with "DNA (predicted)" beside the real channels),
    DIRECTORY/model, and the held-out wells' evaluation.csv, evaluation.md and panels/.
    """
    from zarrstain.demo import DEMO_CONFIG, HELD_OUT, run_demo
    from zarrstain.evaluation.report import format_table

    stages = {"train": ("training", "step"), "predict": ("predicting blocks", "block")}
    progress = StageProgress(_quiet(), stages)
    if not _quiet():
        click.echo(
            f"demo in {directory}: a 2×3-well plate, {DEMO_CONFIG.steps} training steps on "
            f"CPU; held out: {', '.join(HELD_OUT)}",
            err=True,
        )
    result = run_demo(directory, progress=progress)
    progress.finish()
    mean = {"scene": "mean", "t": "", **result.evaluation.summary}
    # the pixels' agreement and the nuclei's (all columns: evaluation.csv)
    keys = ("scene", "t", "pcc", "ssim", "nrmse", "sharpness", "f1", "mean_ap", "count_error")
    _say(format_table([{k: r.get(k, "") for k in keys} for r in [*result.evaluation.rows, mean]]))
    _say(f"\nplate (with 'DNA (predicted)'): {result.plate}\nmodel: {result.model}")
    for path in result.evaluation.files:
        _say(f"wrote {path}")


cli.add_command(calibrate)
cli.add_command(evaluate)
cli.add_command(train)
cli.add_command(export)
cli.add_command(watch)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="zarrstain")


if __name__ == "__main__":  # pragma: no cover
    main()
