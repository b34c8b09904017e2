"""``zarrstain.calibrate``: conformal intervals for a model's predictions, from held-out scenes.

The calibration scenes are predicted with the engine (the same exact tiling as ``predict``),
block by block; each block is reduced to a few numbers at once, so memory stays bounded
whatever the size of the plate:

- ``method="cqr"``: the conformity scores ``max(lower - y, y - upper)`` of a sample of the
  pixels (at most ``max_pixels``, chosen by :func:`zarrstain.noise.uniform` of each pixel's
  global coordinates, so the sample does not depend on the chunking), whose conformal quantile
  is the margin;
- ``method="rcps"``: per image (scene and time point), a histogram of the smallest interval
  scale λ* that holds each pixel, from which the miscovered fraction at every λ follows.

The adjustment (see :mod:`zarrstain.uncertainty.conformal`) is stored in the model's head; the
result is a new model whose ``lower`` / ``upper`` channels are the calibrated interval.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from zarrstain import noise
from zarrstain.engine.normalize import normalize
from zarrstain.engine.predict import model_options, predict
from zarrstain.errors import ChannelError, ParameterError, option
from zarrstain.io.read import open_scenes
from zarrstain.io.store import StoreLike
from zarrstain.models import Model, load_model, save_model
from zarrstain.models.heads import Calibration, OutputHead, _check_alpha
from zarrstain.models.model import state_dict_hash
from zarrstain.uncertainty import conformal

__all__ = ["METHODS", "calibrate", "interval_model", "scene_intervals", "target_scale"]

logger = logging.getLogger(__name__)

METHODS = ("cqr", "rcps")


def calibrate(
    store: StoreLike,
    model: Model | str | os.PathLike,
    *,
    target: str | Sequence[str] | None = None,
    scenes: str | Sequence[str] | None = None,
    alpha: float = 0.1,
    method: str = "cqr",
    delta: float = 0.1,
    input_channels: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    max_pixels: int = 2_000_000,
    seed: int = 0,
    halo: str | int = "exact",
    device: str = "auto",
    overwrite: bool = False,
    region: dict[str, slice] | None = None,
    options: Mapping[str, Any] | None = None,
) -> Model:
    """Calibrate a model's intervals on held-out scenes; returns (and saves) the new model.

    Parameters
    ----------
    store
        The OME-Zarr store holding the calibration scenes and their acquired target channels.
    model
        A model with a ``quantiles`` or ``bins`` head (or its package folder).
    target
        The acquired channel of each model target, in order; default: the label each output
        label names (``"DNA (predicted)"`` → ``"DNA"``).
    scenes
        Calibration scenes (default all): held out from training, and not those you evaluate on.
    alpha
        Nominal miscoverage: the calibrated intervals aim to hold 1 − α of the target.
    method
        ``"cqr"`` (pixels pooled over the calibration scenes) or ``"rcps"`` (images as units,
        with a 1 − δ guarantee on the mean per-image miscovered fraction).
    delta
        RCPS: the probability that the guarantee fails.
    max_pixels
        CQR: pixels sampled over all calibration scenes.
    out
        Save the calibrated model as a package there.
    seed, halo, device, input_channels
        The pixel sample's seed; and as in :func:`zarrstain.predict`.
    region
        Count only these voxels of each scene, e.g. ``{"x": slice(512, None)}``: the scene is
        still predicted whole (each voxel with its full context), then cropped.
    options
        The run options to calibrate at (sampled models, e.g. a control branch with quantile
        heads: ``{"sampler": "ddim", "steps": 20}``; default: the model's). The interval's
        width depends on them, so they become the calibrated model's defaults and are
        recorded in its calibration.

    Raises
    ------
    ParameterError
        A model without intervals, α outside (0, 1), an unknown method, or a calibrated model
        asked for another α.
    ChannelError
        A calibration scene without the target channel.
    """
    if not isinstance(model, Model):
        model = load_model(model)
    _check_alpha(alpha)
    if method not in METHODS:
        raise ParameterError(
            f"method {method!r} is not one of {', '.join(METHODS)} "
            f"({option('method=', '--method')})"
        )
    if method == "rcps" and not 0 < delta < 1:
        raise ParameterError(f"delta={delta!r} is not in (0, 1) ({option('delta=', '--delta')})")
    base = interval_model(model, alpha)
    # predicted, and then saved, with these settings as the model's defaults
    kwargs, sampling = base.spec.fix_options(base.kwargs, model_options(base, options))
    if sampling:
        geo = base.spec.geometry(kwargs)
        base = _with_head(
            dataclasses.replace(base, kwargs=kwargs, receptive_radius=geo.receptive_radius),
            base.head,
        )
    targets = _targets(base, target)
    images = open_scenes(store, scenes=list(scenes) if isinstance(scenes, list | tuple) else scenes)
    for sid, image in images.items():
        labels = [str(c) for c in image.coords["c"].values]
        for t in targets:
            if t not in labels:
                raise ChannelError(
                    f"calibration scene {sid!r} has no target channel {t!r} (channels: "
                    f"{labels}); calibrate on scenes where it was acquired "
                    f"({option('scenes=', '--scene')})"
                )
    logger.info(
        "calibrating %s (%s, alpha=%g) on %d scene(s)", model.name, method, alpha, len(images)
    )
    n_targets = len(targets)
    parts: list[tuple[int, list[Any]]] = []  # (target, its delayed block results in one scene)
    total = sum(_voxels(im, region) for im in images.values())
    fraction = min(1.0, max_pixels / max(total * n_targets, 1))
    for s_index, image in enumerate(images.values()):
        channels = scene_intervals(
            image, base, targets, halo=halo, region=region, input_channels=input_channels,
            device=device,
        )  # fmt: skip
        for i, centre, lower, upper, y in channels:
            salt = (seed, s_index, i)
            parts.append((i, _blocks(method, centre, lower, upper, y, salt, fraction)))
    (computed,) = dask.compute([blocks for _, blocks in parts])
    adjustments, units = [], 0
    for i in range(n_targets):
        mine = [c for (ti, _), c in zip(parts, computed, strict=True) if ti == i]
        a, n = _adjustment(method, mine, alpha, delta)
        scale = target_scale(base, i)
        adjustments.append(a / scale if method == "cqr" else a)
        units += n
    calibration = Calibration(
        method,
        float(alpha),
        tuple(float(a) for a in adjustments),
        delta=float(delta) if method == "rcps" else None,
        scenes=tuple(images),
        units=units,
        sampling=sampling,
    )
    logger.info("%s adjustment per target: %s", method, calibration.adjustment)
    calibrated = _with_head(base, dataclasses.replace(base.head, calibration=calibration))
    if out is not None:
        save_model(calibrated, out, overwrite=overwrite)
        calibrated = load_model(out)
    return calibrated


def scene_intervals(
    image: xr.DataArray,
    model: Model,
    targets: Sequence[str],
    *,
    halo: str | int = "exact",
    region: dict[str, slice] | None = None,
    input_channels: Sequence[str] | None = None,
    device: str = "auto",
) -> Iterator[tuple[int, da.Array, da.Array, da.Array, da.Array]]:
    """Per target of one scene: (index, centre, lower, upper, acquired target), lazily.

    (t, z, y, x) dask arrays in the units the predictions are written in, all from one
    prediction of the scene (predicted whole, then cropped to ``region``).
    """
    pred = predict(image, model, halo=halo, input_channels=input_channels, device=device)
    if region:
        pred, image = pred.isel(**region), image.isel(**region)
    per_target = len(model.head.outputs)
    lo_k, hi_k = _index(model.head, "lower"), _index(model.head, "upper")
    for i, label in enumerate(targets):
        names = model.output_labels[i * per_target : (i + 1) * per_target]
        centre, lower, upper = (pred.sel(c=names[k]).data for k in (0, lo_k, hi_k))
        yield i, centre, lower, upper, _target(image, label, model).rechunk(centre.chunks)


def target_scale(model: Model, i: int) -> float:
    """The intensity scale of target ``i``'s written channels (1: they stay normalized)."""
    return model.output_intensity[i * len(model.head.outputs)][1] if model.output_intensity else 1.0


def _voxels(image: xr.DataArray, region: dict[str, slice] | None) -> int:
    sizes = (image.isel(**region) if region else image).sizes
    return int(sizes["t"] * sizes["z"] * sizes["y"] * sizes["x"])


def interval_model(model: Model, alpha: float) -> Model:
    """``model`` with its raw (uncalibrated) interval at α: a bins head gets one, calibration is
    dropped.

    Raises
    ------
    ParameterError
        The head has no interval, or the model is calibrated for another α.
    """
    head = model.head
    if head.kind not in ("bins", "quantiles"):
        raise ParameterError(
            f"model {model.name} has a {head.kind!r} head, which predicts no interval; "
            f"calibration needs one: train with {option('head=', '--head')} quantiles or bins"
        )
    if head.calibration is not None and head.calibration.alpha != alpha:
        raise ParameterError(
            f"model {model.name} is calibrated for alpha={head.calibration.alpha}; calibrating "
            f"it for alpha={alpha} would mix two levels: calibrate the uncalibrated model, or "
            f"pass {option(f'alpha={head.calibration.alpha}', f'--alpha {head.calibration.alpha}')}"
        )
    new = dataclasses.replace(head, calibration=None)
    if head.kind == "bins":
        new = dataclasses.replace(new, interval=True, alpha=alpha)
    return _with_head(model, new)


def _with_head(model: Model, head: OutputHead) -> Model:
    """The same network with another head (labels and output intensity follow its outputs)."""
    kwargs = {**model.kwargs, "head": head.to_kwargs()}
    new = dataclasses.replace(
        model, kwargs=kwargs, content_hash=state_dict_hash(model.module, model.architecture, kwargs)
    )
    return new.relabeled(model.targets, model.target_intensity)


def _targets(model: Model, target: str | Sequence[str] | None) -> list[str]:
    bases = model.targets
    if target is None:
        found = [b[: -len(" (predicted)")] for b in bases if b.endswith(" (predicted)")]
        if len(found) != len(bases):
            raise ParameterError(
                f"model {model.name} predicts {list(bases)}; name the acquired channel of each "
                f"({option('target=', '--target')})"
            )
        return found
    targets = [target] if isinstance(target, str) else list(target)
    if len(targets) != len(bases):
        raise ParameterError(
            f"model {model.name} predicts {len(bases)} target(s) {list(bases)}; give one "
            f"acquired channel for each, not {targets}"
        )
    return targets


def _index(head: OutputHead, kind: str) -> int:
    return next(i for i, h in enumerate(head.outputs) if h.kind == kind)


def _target(image: xr.DataArray, label: str, model: Model) -> da.Array:
    """The acquired target in the units the model's predictions are written in."""
    y = image.sel(c=[label]).astype("float32")
    if not model.output_intensity and model.normalization != "none":
        y = normalize(y, model.normalization)  # predictions stay normalized: so must the target
    return y.data[:, 0]


def _blocks(method, centre, lower, upper, y, salt, fraction) -> list[Any]:
    """One delayed reduction per block of the (t, z, y, x) arrays."""
    starts = [np.cumsum((0, *c[:-1])) for c in centre.chunks]
    shape = centre.shape
    out = []
    # unoptimized: optimizing each array alone would fuse (and rename) the model's blocks
    # into each of the four graphs, computing every block once per array
    arrays = [a.to_delayed(optimize_graph=False) for a in (centre, lower, upper, y)]
    for index in np.ndindex(*centre.numblocks):
        origin = tuple(int(s[i]) for s, i in zip(starts, index, strict=True))
        blocks = [a[index] for a in arrays]
        if method == "cqr":
            out.append(dask.delayed(_cqr_scores)(*blocks, origin, shape, salt, fraction))
        else:
            out.append(dask.delayed(_lambda_counts)(*blocks, origin))
    return out


def _cqr_scores(centre, lower, upper, y, origin, shape, salt, fraction) -> np.ndarray:
    scores = np.maximum(lower - y, y - upper)
    if fraction >= 1:
        return scores.ravel()
    return scores[noise.uniform(noise.key(*salt), origin, scores.shape, shape) < fraction]


def _lambda_counts(centre, lower, upper, y, origin) -> dict[int, np.ndarray]:
    """Per time point of the block, the histogram of λ* over the grid's bins."""
    need = conformal.lambda_star(y, centre, lower, upper)
    bins = np.searchsorted(conformal.LAMBDAS, need, side="left")
    size = len(conformal.LAMBDAS) + 1
    return {origin[0] + t: np.bincount(bins[t].ravel(), minlength=size) for t in range(len(y))}


def _adjustment(
    method: str, parts: list[list[Any]], alpha: float, delta: float
) -> tuple[float, int]:
    """(the adjustment, calibration units) from one target's block results."""
    if method == "cqr":
        scores = np.concatenate([b for scene in parts for b in scene])
        try:
            return conformal.cqr_margin(scores, alpha), int(scores.size)
        except ValueError as exc:
            raise ParameterError(f"CQR: {exc}; calibrate on more scenes") from None
    images: dict[tuple[int, int], np.ndarray] = {}
    for s, scene in enumerate(parts):
        for block in scene:
            for t, counts in block.items():
                images[s, t] = images.get((s, t), 0) + counts
    counts = np.stack(list(images.values()))
    curves = conformal.miscoverage_curves(counts, counts.sum(axis=1))
    try:
        return conformal.rcps_lambda(curves, alpha, delta), len(images)
    except ValueError as exc:
        raise ParameterError(f"RCPS: {exc}") from None
