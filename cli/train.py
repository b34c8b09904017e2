"""``zarrstain train``: fit a model on paired channels of OME-Zarr stores."""

from __future__ import annotations

import click

from zarrstain.engine.options import METHODS
from zarrstain.training.recipe import EPOCH, OPTIMIZERS, PRECISIONS, SCHEDULES
from zarrstain.training.selection import MONITORS

from .family import FamilyCommand
from .output import _quiet, _say
from .params import DEVICE, out_option, overwrite_option, scenes_option
from .progress import Progress

__all__ = ["train"]


class _StepsOrEpoch(click.ParamType):
    """A whole number of steps, or ``epoch``."""

    name = "steps_or_epoch"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == EPOCH:
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of steps nor {EPOCH!r}", param, ctx)


STEPS_OR_EPOCH = _StepsOrEpoch()


@click.command(cls=FamilyCommand, family="train")
@click.argument("stores", nargs=-1)
@click.option("--input", "inputs", multiple=True, help="Input channel label (repeat for several).")
@click.option("--target", "targets", multiple=True, help="Target channel label (repeat).")
@out_option("Model package folder to write.", required=True)
@click.option(
    "--model",
    "arch",
    default=None,
    metavar="NAME",
    help="fnet3d, fnet2d, pix2pix, cyclegan or another installed architecture [fnet3d].",
)
@click.option("--depth", type=int, default=None, help="U-Net depth [default: 4].")
@click.option("--mult-chan", type=int, default=None, help="Channels of the top level [8].")
@click.option(
    "--projection",
    type=int,
    default=None,
    help="Learned per-pixel projection of the inputs to N channels (In silico labeling).",
)
@click.option("--steps", type=int, default=None, help="Optimizer steps [400].")
@click.option("--epochs", type=int, default=None, help="Instead of --steps: epochs.")
@click.option(
    "--patches-per-scene",
    type=int,
    default=None,
    help="An epoch: this many patches per training scene [1].",
)
@click.option("--batch-size", type=int, default=None, help="Patches per step [4].")
@click.option("--patch", default=None, help="Patch size, e.g. 32x64x64 (3D) or 256x256 (2D).")
@click.option("--lr", type=float, default=None, help="Learning rate [1e-3].")
@click.option("--optimizer", default=None, type=click.Choice(OPTIMIZERS), help="Optimizer [adam].")
@click.option("--weight-decay", type=float, default=None, help="Weight decay [0].")
@click.option("--momentum", type=float, default=None, help="SGD's momentum [0.9].")
@click.option(
    "--schedule", default=None, type=click.Choice(SCHEDULES), help="Learning rate [constant]."
)
@click.option("--warmup-steps", type=int, default=None, help="Linear warm-up steps [0].")
@click.option(
    "--decay-every",
    type=STEPS_OR_EPOCH,
    default=None,
    metavar="N|epoch",
    help="step/exponential: steps, or once per epoch [1000].",
)
@click.option("--lr-gamma", type=float, default=None, help="step/exponential: factor [0.1].")
@click.option("--min-lr", type=float, default=None, help="cosine: final learning rate [0].")
@click.option("--clip-grad-norm", type=float, default=None, help="Clip gradients' L2 norm.")
@click.option(
    "--precision",
    default=None,
    type=click.Choice(PRECISIONS),
    help="Mixed precision (autocast; float16 with a gradient scaler) [float32].",
)
@click.option(
    "--normalization",
    default=None,
    type=click.Choice(METHODS),
    help="Of inputs and targets [center]; samplers train best on zscore.",
)
@click.option(
    "--augment",
    default=None,
    metavar="SPEC",
    help="flips, none, or transforms in physical units as YAML, e.g. "
    "'{noise: {std: 0.5}, blur: {sigma_um: [0.1, 0.6]}, affine: {rotate: 180, zoom: 0.3}}' "
    "[flips].",
)
@click.option(
    "--loader-workers",
    type=int,
    default=None,
    help="Sample patches in N worker processes, ahead of the model [0: in the main one].",
)
@click.option("--prefetch", type=int, default=None, help="Batches each worker prepares [2].")
@click.option("--seed", type=int, default=None, help="Random seed [0].")
@scenes_option("Train on these scenes only (repeat).")
@click.option("--val-scene", "val_scenes", multiple=True, help="Hold out this scene (repeat).")
@click.option(
    "--target-scene",
    "target_scenes",
    multiple=True,
    help="cyclegan: learn the targets from this scene (repeat); the others give the inputs.",
)
@click.option(
    "--val-fraction",
    type=float,
    default=None,
    help="Hold out the right fraction of every scene instead.",
)
@click.option("--validate-every", type=int, default=None, help="Validate every N steps [50].")
@click.option(
    "--checkpoint-every", type=int, default=None, help="Save the package every N steps [100]."
)
@click.option(
    "--monitor",
    default=None,
    type=click.Choice(MONITORS),
    help="Keep the weights of the best validation by this metric [the latest].",
)
@click.option(
    "--patience", type=int, default=None, help="Stop after N validations without improvement."
)
@click.option("--min-delta", type=float, default=None, help="What counts as one [0].")
@click.option(
    "--device",
    default=None,
    type=DEVICE,
    metavar=DEVICE.name,
    help="Where the model trains [auto].",
)
@click.option(
    "--head",
    default=None,
    metavar="KIND",
    help="Output head: value, bins (In silico labeling's distribution) or quantiles [value].",
)
@click.option("--bins", type=int, default=None, help="Intensity bins of a bins head [256].")
@click.option(
    "--alpha", type=float, default=None, help="Quantiles head: bounds at alpha/2, 1-alpha/2 [0.1]."
)
@click.option(
    "--init", default=None, metavar="MODEL", help="Start from this trained model's weights."
)
@click.option(
    "--freeze",
    default=None,
    metavar="PART",
    help="With --init: all-but-projection, all-but-head or none [none].",
)
@click.option(
    "--paper",
    is_flag=True,
    help="The family's published recipe: pytorch_fnet's, guided-I2I's (diffusion), "
    "MMV_Im2Im's (pix2pix); slow on CPU.",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(exists=True),
    help="Experiment file, YAML or TOML: these settings, flat or in data/model/training "
    "sections (flags override it; its data.stores when no STORES are given).",
)
@click.option("--resume", is_flag=True, help="Continue the run saved in --out.")
@overwrite_option("Replace the model package in --out.")
@click.option(
    "--ema", type=float, default=None, help="Weight average decay [the architecture's: 0 or 0.999]."
)
def train(
    stores, inputs, targets, out, config_file, paper, resume, overwrite, options, **flags
) -> None:
    """Train a model on paired channels of STORES (OME-Zarr) and save it as a model package.

    The flags after --ema are the installed model families' own training settings (a family
    refuses the others').
    """
    from zarrstain.training import TrainConfig, build_config
    from zarrstain.training import train as run_training
    from zarrstain.training.experiment import read_experiment

    # the experiment file read once: its stores (when none are given) and its settings
    file_stores, settings = read_experiment(config_file) if config_file else ((), {})
    stores = stores or file_stores
    if not stores:
        raise click.UsageError("give the training STORES, or data.stores in a --config file")

    flags = {k: v for k, v in flags.items() if v not in (None, ())}
    flags["model"] = flags.pop("arch", None) or None
    config = build_config(
        settings=settings,
        paper=paper,
        inputs=list(inputs),
        targets=list(targets),
        options=options,
        **{k: v for k, v in flags.items() if v is not None},
    )
    assert isinstance(config, TrainConfig)
    # its total from the first step on (a run in epochs is counted once the data is open)
    bar = Progress("training", config.steps, "step", quiet=_quiet())
    result = run_training(
        list(stores), config, out, resume=resume, overwrite=overwrite, progress=bar
    )
    bar.finish()
    if result.rank != 0:  # under torchrun: rank 0 reports
        return
    vals = [h["val_pcc"] for h in result.history if "val_pcc" in h]
    last = result.history[-1] if result.history else {}
    _say(f"model: {result.package}")
    if last:
        _say(
            f"final loss {last['loss']:.4f}"
            + (f", validation Pearson r {vals[-1]:.3f}" if vals else "")
        )
    if result.best:
        best = result.best
        _say(f"kept the best validation: {best['monitor']} {best['value']:.4f} at step "
             f"{best['step']}")  # fmt: skip
    if result.stopped_early is not None:
        _say(f"stopped early at step {result.stopped_early} (--patience)")
