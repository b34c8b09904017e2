"""``zarrstain watch``: stain a time-lapse while it is acquired (:func:`zarrstain.watch`)."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from zarrstain.engine.options import NORMALIZATIONS, PRECISION_NAMES

from .family import FamilyCommand
from .output import _quiet, _say
from .params import DEVICE, json_option, model_option, out_option, scenes_option
from .progress import LiveProgress

__all__ = ["watch"]


@click.command(cls=FamilyCommand)
@click.argument("store")
@model_option("Model (any format zarrstain predict reads).")
@out_option("The output store; it grows with STORE [in place: see below].")
@scenes_option()
@click.option(
    "--input-channel",
    "input_channels",
    multiple=True,
    help="Input channel label, in the model's order (repeat for several).",
)
@click.option(
    "--statistics",
    default="frame",
    show_default=True,
    metavar="frame|first:N|running|fixed:O,S",
    help="Normalization statistics over time: each time point its own (as predict), the "
    "first N time points', a running mean, or fixed values.",
)
@click.option("--until", type=int, default=None, help="End after this many time points.")
@click.option(
    "--idle-timeout",
    type=float,
    default=None,
    help="End after this many seconds without a new time point [wait for ever].",
)
@click.option("--poll", type=float, default=0.25, show_default=True, help="Seconds between looks.")
@click.option(
    "--max-batch",
    type=int,
    default=8,
    show_default=True,
    help="Most time points of a scene predicted together (catching up).",
)
@click.option(
    "--max-lag",
    type=int,
    default=8,
    show_default=True,
    help="Warn when more time points than this wait to be predicted.",
)
@click.option(
    "--latency-target",
    type=float,
    default=None,
    help="Warn when a time point's prediction is readable later than this (seconds).",
)
@click.option("--output-label", default=None, help="Label of the predicted channel.")
@click.option(
    "--dtype", default=None,
    help="Output dtype [float32 in --out; in place, the store's].",
)  # fmt: skip
@click.option(
    "--halo", default="auto", show_default=True, help="auto, exact or a number of voxels."
)
@click.option(
    "--normalization", default="model", show_default=True, type=click.Choice(NORMALIZATIONS)
)
@click.option(
    "--device", default="auto", show_default=True, type=DEVICE, metavar=DEVICE.name,
    help="Where the model runs.",
)  # fmt: skip
@click.option(
    "--precision", default="float32", show_default=True, type=click.Choice(PRECISION_NAMES)
)
@json_option("Print the result as JSON.")
def watch(
    store: str,
    model_path: str,
    out: str | None,
    scenes: tuple[str, ...],
    input_channels: tuple[str, ...],
    statistics: str,
    until: int | None,
    idle_timeout: float | None,
    poll: float,
    max_batch: int,
    max_lag: int,
    latency_target: float | None,
    output_label: str | None,
    dtype: str | None,
    halo: str,
    normalization: str,
    device: str,
    precision: str,
    as_json: bool,
    options: dict[str, Any],
) -> None:
    """Follow STORE while a microscope writes it and predict each time point once complete.

    The predictions go to --out, whose time axis grows with STORE: viewers opening it see
    only complete predicted time points. Ends at --until time points, after --idle-timeout
    seconds without a new one, when an acquire-zarr writer closes its stream, or on Ctrl-C;
    running the same command again continues where it stopped. Without --out the channel is
    added to STORE itself, which needs a writer that allocated all --until time points up
    front (as iohub's create_zeros): one that appends them rewrites the arrays' metadata.
    """
    import zarrstain

    bar = LiveProgress(_quiet())
    try:
        result = zarrstain.watch(
            store, model_path, out=out, scenes=list(scenes) or None, statistics=statistics,
            until=until, idle_timeout=idle_timeout, poll=poll, max_batch=max_batch,
            max_lag=max_lag, latency_target=latency_target, output_label=output_label,
            dtype=dtype, halo=halo,
            normalization=normalization, input_channels=list(input_channels) or None,
            device=device, precision=precision, options=options, progress=bar,
        )  # fmt: skip
    except KeyboardInterrupt:
        bar.finish()
        click.echo(
            f"stopped (Ctrl-C); what {out or store} shows is complete: run the same command "
            "to continue",
            err=True,
        )
        sys.exit(130)
    bar.finish()
    summary = result.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    for scene, n in summary["time_points"].items():
        new = summary["written"].get(scene, 0)
        _say(f"{scene or '(image)'}: {n} time point(s) ({new} by this run)")
    p50, p95 = summary["latency_median_s"], summary["latency_p95_s"]
    if p50 is not None:
        _say(f"latency: median {p50:.2f} s, p95 {p95:.2f} s; ended: {summary['ended']}")
    else:
        _say(f"ended: {summary['ended']}")
