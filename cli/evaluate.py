"""``zarrstain evaluate``: a predicted channel against its target, pixels, objects and assays."""

from __future__ import annotations

import json

import click

from .output import _quiet, _say
from .params import cluster_options, json_option, model_option, out_option, scenes_option
from .progress import StageProgress
from .uncertainty import calibration_curve

__all__ = ["evaluate"]


@click.command()
@click.argument("store")
@click.option("--prediction", default=None, help="Label of the predicted channel.")
@click.option("--target", required=True, help="Label of the acquired channel.")
@scenes_option()
@click.option("--input-channel", default=None, help="Shown beside them in the panels.")
@out_option("Folder for evaluation.csv / .md and panels/.")
@json_option("Print rows and summary as JSON.")
@click.option(
    "--calibration-curve",
    "curve",
    is_flag=True,
    help="Also: nominal vs empirical coverage over several alpha (needs --model, "
    "--calibration-scene, --scene, --out).",
)
@model_option("Calibration curve: the model.", required=False)
@click.option(
    "--calibration-scene", "calibration_scenes", multiple=True, help="Curve: calibrate here."
)
@click.option("--alphas", default="0.05,0.1,0.2,0.3,0.5", show_default=True, help="Curve: alphas.")
@click.option("--method", default="cqr", show_default=True, help="Curve: cqr or rcps.")
@click.option(
    "--objects",
    default=None,
    help="Also segment both stains and compare objects: nuclei, cells or a segmenter plug-in "
    "(F1 / mean AP over IoU 0.5-0.95, feature correlations, KID).",
)
@click.option(
    "--labels/--no-labels",
    default=None,
    help="Write the objects as OME-Zarr labels [when the store is a local, writable folder].",
)
@click.option("--class-map", default=None, help="Assay: each well's class (a well,class table).")
@click.option("--class-key", default=None, help="Assay: group attribute holding the class.")
@click.option(
    "--readout",
    default="discriminant",
    show_default=True,
    help="Assay: a feature (mean_intensity, area, ...) or discriminant (all features).",
)
@click.option("--controls", default=None, help="Assay: NEG,POS classes [the two in the map].")
@click.option(
    "--second-target", default=None, help="A second acquisition of the target: PCC ceiling."
)
@cluster_options
def evaluate(
    store, prediction, target, scenes, input_channel, out, as_json, curve, objects, labels,
    class_map, class_key, readout, controls, second_target, scheduler, scheduler_file,
    workers, threads_per_worker, **opts
) -> None:  # fmt: skip
    """Compare a predicted channel with its target: Pearson r, SSIM, MSE, MAE, NRMSE.

    With the prediction's interval or std channels beside it: coverage, interval width and
    the std's rank correlation with the error. With --objects: detection scores, feature
    correlations and KID of the objects; with a --class-map too, the assay's Z' and effect
    size on the real and the virtual stain.
    """
    from zarrstain.evaluation.evaluate import Assay
    from zarrstain.evaluation.evaluate import evaluate as run_evaluation
    from zarrstain.evaluation.report import format_table

    if prediction is None and not curve:
        raise click.UsageError("Missing option '--prediction'.")
    if curve:
        curve_rows = calibration_curve(store, target, list(scenes), out, **opts)
        if prediction is None:
            if as_json:
                click.echo(json.dumps({"calibration_curve": curve_rows}, indent=2))
            else:
                _say(format_table(curve_rows))
            return
    assay = None
    if class_map is not None or class_key is not None:
        assay = Assay(class_map, class_key, readout=readout, controls=controls)
    # --json: the output is for a program; the bar would only interleave with it
    progress = StageProgress(_quiet() or as_json, {"evaluate": ("evaluating", "field")})
    from zarrstain.engine.cluster import connect

    with connect(scheduler, scheduler_file, workers, threads_per_worker, gpus="none"):
        result = run_evaluation(
            store, prediction, target, scenes=list(scenes) or None, input_channel=input_channel,
            out=out, objects=objects, labels=labels, assay=assay, second_target=second_target,
            progress=progress,
        )  # fmt: skip
    progress.finish()
    if as_json:
        rows = {"rows": result.rows, "summary": result.summary, "assay": result.assay}
        click.echo(json.dumps({**rows, **({"calibration_curve": curve_rows} if curve else {})}))
        return
    if curve:
        _say(format_table(curve_rows))
    mean = {"scene": "mean", "t": "", **result.summary, "voxels": ""}
    _say(format_table([*result.rows, mean]))
    if result.assay:
        _say(format_table([result.assay]))
    for path in result.files:
        _say(f"wrote {path}")
