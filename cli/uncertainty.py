"""``zarrstain calibrate``: conformal intervals for a model, from held-out scenes."""

from __future__ import annotations

import click

from .family import FamilyCommand
from .output import _say
from .params import model_option, out_option, overwrite_option, scenes_option

__all__ = ["calibrate", "calibration_curve"]


@click.command(cls=FamilyCommand)
@click.argument("store")
@model_option("Model with a quantiles or bins head.")
@click.option(
    "--target",
    "targets",
    multiple=True,
    help="Acquired channel of each model target (repeat) [the output labels' names].",
)
@scenes_option("Calibration scene (repeat; default all).")
@click.option("--alpha", type=float, default=0.1, show_default=True, help="Miscoverage.")
@click.option(
    "--method",
    default="cqr",
    show_default=True,
    help="cqr (pixels pooled) or rcps (images as units, with a 1-delta guarantee).",
)
@click.option("--delta", type=float, default=0.1, show_default=True, help="RCPS: failure rate.")
@click.option(
    "--max-pixels", type=int, default=2_000_000, show_default=True, help="CQR: pixels sampled."
)
@out_option("Folder for the calibrated model package.", required=True)
@overwrite_option("Replace a model package in --out.")
def calibrate(
    store, model_path, targets, scenes, alpha, method, delta, max_pixels, out, overwrite,
    options,
) -> None:  # fmt: skip
    """Calibrate the intervals of a model on held-out scenes of STORE; save the new model.

    Predict with the calibrated model to write its calibrated 'lower' / 'upper' channels.
    Sampled models are calibrated at the run options given after --overwrite (their
    defaults otherwise), which become the calibrated model's defaults.
    """
    from zarrstain.uncertainty.calibrate import calibrate as run_calibration

    model = run_calibration(
        store,
        model_path,
        target=list(targets) or None,
        scenes=list(scenes) or None,
        alpha=alpha,
        method=method,
        delta=delta,
        max_pixels=max_pixels,
        options=options,
        out=out,
        overwrite=overwrite,
    )
    cal = model.head.calibration
    what = "margin" if cal.method == "cqr" else "scale"
    units = "pixels" if cal.method == "cqr" else "images"
    values = ", ".join(f"{a:.4g}" for a in cal.adjustment)
    _say(
        f"calibrated model: {out} ({cal.method}, alpha {cal.alpha:g}"
        + (f", delta {cal.delta:g}" if cal.delta is not None else "")
        + f"; {what} {values} from {cal.units} {units} of {len(cal.scenes)} scene(s)"
        + (f"; at {', '.join(f'{k} {v}' for k, v in cal.sampling.items())}" if cal.sampling else "")
        + ")"
    )


def calibration_curve(
    store: str,
    target: str,
    scenes: list[str],
    out: str | None,
    *,
    model_path: str | None,
    calibration_scenes: tuple[str, ...],
    alphas: str,
    method: str,
) -> list[dict]:
    """``evaluate --calibration-curve``: checks its flags, then runs the library's curve."""
    from zarrstain.uncertainty.coverage import calibration_curve as run_curve

    missing = [
        flag
        for flag, value in (
            ("--model", model_path),
            ("--calibration-scene", calibration_scenes),
            ("--scene", scenes),
            ("--out", out),
        )
        if not value
    ]
    if missing:
        raise click.UsageError(f"--calibration-curve needs {', '.join(missing)}")
    try:
        levels = [float(a) for a in alphas.split(",")]
    except ValueError:
        raise click.BadParameter(f"{alphas!r} is not a comma-separated list of numbers") from None
    rows = run_curve(
        store,
        model_path,
        calibration_scenes=list(calibration_scenes),
        scenes=scenes,
        target=target,
        alphas=levels,
        method=method,
        out=out,
    )
    _say(f"wrote {out}/calibration.csv and {out}/calibration.png")
    return rows
