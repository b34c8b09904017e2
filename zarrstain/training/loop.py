"""``zarrstain.train``: fit a registered architecture on paired channels of OME-Zarr stores.

The architecture (fnet by default) supplies the module, its heads and its loss
(:class:`zarrstain.models.Architecture`); the loop, sampler and checkpoints are shared. For
fnet this is pytorch_fnet's recipe (Adam, lr 1e-3, MSE on normalized patches, random xy flips)
with defaults sized for a CPU: ``TrainConfig()`` gives a useful model in minutes,
``TrainConfig.paper()`` the published settings. Checkpoints are zarrstain model packages
(``predict`` loads them) with a ``training_state.pt`` beside the weights (optimizer, step,
sampler state, history), so ``resume=True`` continues a run exactly
where its last checkpoint left it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from zarrstain.errors import ParameterError, TrainingError, option
from zarrstain.io.read import open_scenes
from zarrstain.io.store import store_location
from zarrstain.models import Model, create_model, load_model
from zarrstain.models.architecture import channel_labels, output_label
from zarrstain.models.cache import resolve_device
from zarrstain.models.card import is_package
from zarrstain.progress import ProgressCallback, ProgressEvent
from zarrstain.training.adversarial import Adversary
from zarrstain.training.augment import Augmentation
from zarrstain.training.checkpoint import restore, save_checkpoint
from zarrstain.training.conditioning import scene_classes
from zarrstain.training.config import CYCLEGAN, TrainConfig, build_config, training_models
from zarrstain.training.curves import Curves
from zarrstain.training.cyclegan import CycleGan
from zarrstain.training.distributed import (
    average_gradients,
    broadcast_buffers,
    setup,
    synchronize,
)
from zarrstain.training.distributed import describe as describe_ranks
from zarrstain.training.ema import EMA
from zarrstain.training.loader import batches
from zarrstain.training.recipe import (
    autocast,
    clip,
    grad_scaler,
    in_steps,
    make_optimizer,
    recipe_label,
    schedule_factor,
    set_lr,
    steps_per_epoch,
)
from zarrstain.training.sampler import PatchSampler, bins_range, split_regions
from zarrstain.training.selection import Selection
from zarrstain.training.transfer import start_from, train_mode
from zarrstain.training.validation import validate

__all__ = ["TrainConfig", "TrainResult", "build_config", "train", "training_models"]


logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """The trained model, its package folder, the loss / validation history and the best
    validation (``monitor``)."""

    model: Model
    package: Path
    history: list[dict[str, float]] = field(default_factory=list)
    #: with ``monitor``: the metric, step and value of the weights the package holds
    best: dict[str, Any] = field(default_factory=dict)
    #: with ``patience``: the step the run stopped at, before ``steps``
    stopped_early: int | None = None
    #: this process's rank among torchrun's (0: the one that wrote the package)
    rank: int = 0


def _patch(config: TrainConfig, scenes: dict) -> tuple[int, ...]:
    if config.patch:
        return tuple(config.patch)
    default = (32, 64, 64) if config.ndim == 3 else (256, 256)
    div = config.geometry.divisor
    smallest = {a: min(im.sizes[a] for im in scenes.values()) for a in ("z", "y", "x")}
    axes = ("z", "y", "x")[-config.ndim :]
    # as pytorch_fnet's default when it fits, else the largest multiple of the divisor that does
    return tuple(
        min(p, max(div, smallest[a] // div * div)) for p, a in zip(default, axes, strict=True)
    )


def _open(stores: Sequence[str | os.PathLike], wanted: list[str] | None) -> dict:
    scenes = {}
    for i, store in enumerate(stores):
        for sid, image in open_scenes(store).items():
            key = sid if len(stores) == 1 else f"{i}:{sid}"
            if wanted is None or key in wanted:
                scenes[key] = image
    if not scenes:
        available = [sid if len(stores) == 1 else f"{i}:{sid}" for i, s in enumerate(stores)
                     for sid in open_scenes(s)]  # fmt: skip
        raise ParameterError(
            f"none of the scenes {list(wanted or [])} is in {', '.join(map(str, stores))}; "
            f"available: {', '.join(available[:8])}" + (" ..." if len(available) > 8 else "")
        )
    return scenes


def train(
    stores: Sequence[str | os.PathLike] | str | os.PathLike,
    config: TrainConfig,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> TrainResult:
    """Train a model on paired channels of OME-Zarr stores and save it as a model package.

    Parameters
    ----------
    stores
        One or more OME-Zarr stores (scene ids get an ``"<index>:"`` prefix with several).
    config
        Inputs, targets, architecture and optimisation settings.
    out
        The model package folder (written at every checkpoint, atomically).
    resume
        Continue the run saved in ``out`` (same config) from its last checkpoint.
    overwrite
        Replace the model package at ``out``. Without it (or ``resume``) an existing ``out``
        is refused before anything is trained: a trained model is never replaced by accident.
    progress
        Called after every step with a ``"train"`` :class:`~zarrstain.progress.ProgressEvent`:
        ``done`` is the step (1-based) of ``config.steps``, ``info`` holds ``"loss"`` (plus
        ``"val_pcc"`` after validations).

    Returns
    -------
    TrainResult
    """
    single = isinstance(stores, str | os.PathLike | zarr.Group)
    stores = [stores] if single else list(stores)
    out = Path(out)
    config.check()
    _check_out(out, resume=resume, overwrite=overwrite)
    scenes = _open(stores, config.scenes)
    train_regions, val_regions = split_regions(
        scenes, val_scenes=config.val_scenes, val_fraction=config.val_fraction
    )
    unpaired = config.model == CYCLEGAN
    if unpaired:  # the targets' scenes apart: inputs from the others
        train_regions, target_regions = _unpaired(train_regions, config.target_scenes)
    # a run described in epochs, counted in steps now that the training scenes are known
    n_train = len({r.scene for r in train_regions})
    asked, config = config, in_steps(config, n_train)
    patch = _patch(config, scenes)
    sampler_for = functools.partial(
        PatchSampler, scenes, inputs=config.inputs, targets=config.targets, patch=patch,
        normalization=config.normalization,
    )  # fmt: skip
    augmentation = Augmentation.parse(config.augment)
    if unpaired:  # two domains, sampled apart: the inputs here, the targets there
        sampler = sampler_for(train_regions, seed=config.seed, augmentation=augmentation,
                              targets=config.inputs)  # fmt: skip
        targets_from = sampler_for(target_regions, seed=config.seed + 2, inputs=config.targets,
                                   augmentation=Augmentation(flips=augmentation.flips))  # fmt: skip
    else:
        sampler = targets_from = sampler_for(train_regions, seed=config.seed,
                                             augmentation=augmentation)  # fmt: skip
    val = None
    if val_regions:  # a fixed set of held-out patches, not augmented
        val_sampler = sampler_for(val_regions, seed=config.seed + 1, flips=False)
        val = (*val_sampler.sample_with_mask(config.val_patches), val_sampler.last_scenes)
    ranks = setup(config.device)  # one process, or one of torchrun's
    if ranks.world > 1 and config.gan is not None:
        raise ParameterError(f"{config.model} trains on one process; run it without torchrun")
    device = resolve_device(ranks.device(config.device))
    torch.manual_seed(config.seed)  # the initial weights
    spec, kwargs = config.architecture()
    given = dict(kwargs)  # before the run completes them: CycleGAN's second generator's
    labels = scene_classes(config, scenes)
    if labels is not None:  # class-conditional: the class names go into the card
        kwargs["class_names"] = sorted(set(labels.values()))
    if config.head == "bins" and not config.bins_range:
        kwargs["head"] = config.output_head(bins_range(sampler)).to_kwargs()
    if labels is None and spec.conditional == "required":
        raise ParameterError(
            f"model {config.model!r} learns classes; give each scene's class with "
            + option("classes=", "--class-map FILE")
            + " or "
            + option("class_key=", "--class-key ATTR")
        )
    if labels is not None and not spec.conditional:
        raise ParameterError(
            f"model {config.model!r} takes no class labels; drop "
            + option("classes= / class_key=", "--class-map / --class-key")
            + ", or train a class-conditional family"
        )
    heads = spec.heads(kwargs)
    outputs = channel_labels([output_label(t) for t in config.targets], heads)
    intensity = [i for i in targets_from.target_intensity() for _ in heads]
    if spec.conditional == "required":  # a classifier: reads the targets, writes classes
        outputs, intensity = [f"{c} probability" for c in kwargs["class_names"]], []
    if spec.conditional == "required" or config.unconditional:
        # a classifier's validation would be an accuracy; a backbone's samples match no patch
        val = None
    model = create_model(
        spec.name,
        input_labels=_input_labels(config, spec),
        output_labels=outputs,
        normalization=config.normalization,
        name=out.name,
        output_intensity=intensity,
        **kwargs,
    )
    # the architecture completed them (channel counts, heads' flags): train with those
    kwargs = dict(model.kwargs)
    module = synchronize(model.module.to(device), ranks)  # rank 0's weights everywhere
    ranks.seed_losses(config.seed)  # each rank its own noise (a single process: unchanged)
    record = _provenance(stores, config, patch, scenes, train_regions, val_regions)
    record["targets_seen"] = targets_from.targets_seen()
    record["augmentation"] = augmentation.describe()
    record.update(describe_ranks(ranks))
    if asked is not config:  # counted in epochs: how many steps one was
        record["epoch_steps"] = steps_per_epoch(asked, n_train)
        record["epochs"] = asked.epochs
    trainable = None
    if config.init:
        trainable, record["init"] = start_from(module, spec, kwargs, config.init, config.freeze)
    if trainable is None:  # the architecture's own choice (a control branch: the branch)
        trainable = spec.trainable(module)
    params = [p for n, p in module.named_parameters() if trainable is None or n in trainable]
    optimizer = make_optimizer(params, config)
    adversary = None
    if unpaired:  # CycleGAN: a second generator (on G's optimizer) and two critics
        adversary = CycleGan(config.gan, spec, given,
                             (config.inputs, config.targets), patch, device,
                             (config.cycle_weight, config.identity_weight, config.pool_size),
                             config.seed)  # fmt: skip
        optimizer.add_param_group({"params": adversary.generator_parameters()})
        record["gan"] = {**dataclasses.asdict(config.gan), "cycle_weight": config.cycle_weight,
                         "identity_weight": config.identity_weight,
                         "pool_size": config.pool_size}  # fmt: skip
    elif config.gan is not None:  # pix2pix: a critic beside the generator, trained in turn
        n_critic = len(config.inputs) + len(config.targets)  # it sees (input, target) pairs
        adversary = Adversary(config.gan, len(patch), n_critic, patch, device)
        record["gan"] = dataclasses.asdict(config.gan)
    decay = spec.default_ema if config.ema is None else config.ema
    ema = EMA(module, decay) if decay else None
    if ema is not None:
        record["ema"] = decay
    scaler = grad_scaler(device, config.precision)  # float16 only: a no-op otherwise
    selection = Selection(config.monitor, config.patience, config.min_delta)
    if selection.monitor is not None and val is None:
        raise ParameterError(
            f"{option('monitor', '--monitor')} {config.monitor} needs held-out patches to "
            f"validate on; hold some out with {option('val_scenes=', '--val-scene')} or "
            + option("val_fraction=", "--val-fraction")
        )
    start, history = 0, []
    if resume:
        start, history = restore(out, model, optimizer, ema, adversary, selection, scaler)
    curves = Curves(config.steps)
    record["loss"] = spec.loss_label(kwargs) if adversary is None else adversary.label()
    index = {sid: kwargs["class_names"].index(c) for sid, c in labels.items()} if labels else {}
    t0 = time.perf_counter()
    stopped = selection.stop(history)  # a resumed run that had stopped early stays stopped
    ran = False
    # each step's batch is a function of the seed and the step: the same from any number of
    # loader workers, and after a resume
    steps = range(start + 1, config.steps + 1) if not stopped else range(0)
    feed = batches(sampler, steps, config.batch_size, workers=config.loader_workers,
                   prefetch=config.prefetch, part=(ranks.rank, ranks.world))  # fmt: skip
    if unpaired:  # the targets' patches: drawn apart, step by step as the inputs'
        target_feed = batches(targets_from, steps, config.batch_size)
    for step, (x, y, mask, scenes) in zip(steps, feed):  # noqa: B905 - feed may stop early
        ran = True
        train_mode(module, trainable)
        factor = schedule_factor(config, step)  # a function of the step: resumes exactly
        set_lr(optimizer, config.lr * factor)
        if adversary is not None:  # the critic follows the same schedule (MMV_Im2Im's does)
            set_lr(adversary.optimizer, config.discriminator_lr * factor)
        if unpaired:  # not x's targets: patches of the target scenes
            y, mask = next(target_feed)[0], np.ones((len(x), len(config.targets)), bool)
        batch = tuple(torch.from_numpy(a).to(device) for a in (x, y, mask))
        if index:
            classes = [index[sampler.scene_ids[s]] for s in scenes]
            batch += (torch.tensor(classes, device=device),)
        if adversary is not None:
            with autocast(device, config.precision):
                entry = {"step": step, **adversary.step(spec, module, optimizer, batch,
                                                        config.clip_grad_norm, step)}  # fmt: skip
        else:
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, config.precision):  # the forward and loss; backward outside
                loss = spec.training_step(kwargs, module, batch)
            scaler.scale(loss).backward()
            average_gradients(params, ranks.world)  # DDP's all-reduce (one process: nothing)
            scaler.unscale_(optimizer)  # clip the true gradients
            norm = clip(params, config.clip_grad_norm)
            scaler.step(optimizer)  # skipped when float16 gradients overflowed
            scaler.update()
            entry = {"step": step, "loss": ranks.mean(float(loss.detach()))}
            broadcast_buffers(module, ranks)  # BatchNorm statistics: rank 0's, as DDP's
            if norm is not None:
                entry["grad_norm"] = norm
        if not math.isfinite(entry["loss"]):  # diverged: every later step would be NaN too
            raise TrainingError(
                f"the loss is not finite at step {step} ({entry['loss']}; precision "
                f"{config.precision}); lower {option('lr=', '--lr')}, bound the gradients with "
                f"{option('clip_grad_norm=', '--clip-grad-norm')}"
                + (", or train in float32" if config.precision != "float32" else "")
                + f"; the last checkpoint in {out} is intact"
            )
        entry["lr"] = config.lr * factor
        if ema is not None:
            ema.update(module)
        if val is not None and (step % config.validate_every == 0 or step == config.steps):
            weights = ema.module if ema is not None else module
            entry.update(validate(weights, val, device, model, labels, seed=config.seed,
                                  batch_size=config.batch_size))  # fmt: skip
            best = selection.update(entry, weights)
            logger.info(
                "step %d: loss %.4f, validation Pearson r %.3f, loss %.4f%s",
                step,
                entry["loss"],
                entry["val_pcc"],
                entry["val_loss"],
                " (best)" if best else "",
            )
        history.append(entry)
        if progress is not None and ranks.main:
            progress(ProgressEvent("train", step, config.steps, entry))
        stopped = selection.stop(history)
        if stopped:
            record["stopped_early"] = step
            logger.info(
                "stopping at step %d: %s has not improved for %d validations (best %.4g at "
                "step %d)", step, selection.monitor, selection.patience,
                selection.best_value, selection.best_step,
            )  # fmt: skip
        if step % config.checkpoint_every == 0 or step == config.steps or stopped:
            record["seconds"] = record.get("seconds", 0.0) + time.perf_counter() - t0
            t0 = time.perf_counter()
            if ranks.main:  # the others hold the same weights
                model = save_checkpoint(model, module, optimizer, out, step, history, record,
                                        ema, adversary, selection, curves, scaler)  # fmt: skip
        if stopped:
            break
    feed.close()  # loader workers end here, also after an early stop
    ranks.barrier()  # every checkpoint written before any process returns
    ranks.end()
    if not ran:  # trained to the end, or stopped early, before
        logger.info("%s already trained (%d steps); nothing to do", out, start)
        model = load_model(out)
    stopped_at = history[-1]["step"] if stopped and history else None
    return TrainResult(model, out, history, selection.describe(), stopped_at, ranks.rank)


def _unpaired(regions: list, target_scenes: list[str]) -> tuple[list, list]:
    """CycleGAN's two domains: the regions of the target scenes, and the others'."""
    known = {r.scene for r in regions}
    missing = [s for s in target_scenes if s not in known]
    if missing:
        raise ParameterError(
            f"target scene {missing[0]!r} is not among the training scenes "
            f"{sorted(known)[:8]} ({option('target_scenes=', '--target-scene')})"
        )
    inputs = [r for r in regions if r.scene not in target_scenes]
    if not inputs:
        raise ParameterError(
            "every training scene is a target scene; leave some for the inputs "
            f"({option('target_scenes=', '--target-scene')})"
        )
    return inputs, [r for r in regions if r.scene in target_scenes]


def _check_out(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an ``out`` that training would replace or cannot write, before any work."""
    if out.exists() and not out.is_dir():
        raise ParameterError(
            f"{out} is a file; choose a new folder for the model package "
            f"({option('out=', '--out')})"
        )
    if not out.exists() or resume:
        return
    if not is_package(out):
        raise ParameterError(
            f"{out} exists and is not a model package; choose a new folder for the model "
            f"({option('out=', '--out')})"
        )
    if not overwrite:
        raise ParameterError(
            f"{out} already holds a trained model; choose another {option('out=', '--out')}, "
            f"continue its run with {option('resume=True', '--resume')}, or replace it with "
            + option("overwrite=True", "--overwrite")
        )


def _input_labels(config: TrainConfig, spec: Any) -> list[str]:
    """What the model reads: the inputs; a classifier the targets; a backbone nothing."""
    if spec.conditional == "required":
        return list(config.targets)
    return [] if config.unconditional else list(config.inputs)


def _provenance(stores, config, patch, scenes, train_regions, val_regions) -> dict[str, Any]:
    return {
        "stores": [store_location(s) for s in stores],
        "config": {**dataclasses.asdict(config), "patch": list(patch)},
        "train_regions": [_region_name(r) for r in train_regions],
        "val_regions": [_region_name(r) for r in val_regions],
        "optimizer": recipe_label(config),
        "loss": "MSE",
    }


def _region_name(region) -> str:
    if region.x == slice(None):
        return region.scene
    return f"{region.scene}[x={region.x.start}:{region.x.stop}]"
