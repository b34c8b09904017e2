"""``zarrstain.predict``: select channels → normalize globally → tiled model → labeled channels."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from zarrstain.engine.normalize import METHODS, normalization_stats
from zarrstain.engine.normalize import normalize as apply_normalization
from zarrstain.engine.options import PredictOptions, merge_options
from zarrstain.engine.provenance import prediction_provenance
from zarrstain.engine.tiling import TilePlan, plan_tiles, run_tiled
from zarrstain.errors import ChannelError, ParameterError, ShapeMismatchError, option
from zarrstain.io.metadata import DIMS
from zarrstain.models.architecture import KINDS
from zarrstain.models.cache import resolve_device
from zarrstain.models.format import load_model
from zarrstain.models.model import Model
from zarrstain.models.schema import check_options

__all__ = [
    "as_scene",
    "denormalize_outputs",
    "model_options",
    "normalization_method",
    "per_scene",
    "predict",
    "prepare",
    "run_model",
    "select_inputs",
]

logger = logging.getLogger(__name__)


def as_scene(data: Any) -> xr.DataArray:
    """``data`` as a (t, c, z, y, x) DataArray: DataArrays are transposed, arrays wrapped."""
    if isinstance(data, xr.DataArray):
        if set(data.dims) != set(DIMS):
            raise ShapeMismatchError(
                f"data has dims {data.dims}; expected {DIMS} (zarrstain.open_image returns "
                "these; add missing axes with DataArray.expand_dims)"
            )
        return data.transpose(*DIMS)
    arr = data if isinstance(data, da.Array) else np.asarray(data)
    if arr.ndim != 5:
        raise ShapeMismatchError(
            f"data has shape {arr.shape}; expected 5 dims (t, c, z, y, x), e.g. "
            "array[None, None, None] for a (y, x) image"
        )
    return xr.DataArray(arr, dims=DIMS, coords={"c": [str(i) for i in range(arr.shape[1])]})


def select_inputs(
    available: Sequence[str],
    model: Model,
    input_channels: Sequence[str] | Mapping[str, str] | str | None,
) -> list[str]:
    """The data's channel labels the model reads, in the model's order.

    Parameters
    ----------
    available
        The data's channel labels.
    model
        Declares its input labels (zarrstain packages) or only their number (pytorch_fnet).
    input_channels
        Data labels in the model's order, or a mapping model label → data label.

    Raises
    ------
    ChannelError
        A missing, ambiguous or wrongly counted channel; the message lists what is available.
    """
    available = [str(a) for a in available]
    need = model.in_channels
    if need == 0:
        raise ChannelError(
            f"model {model.name} reads no input channels (an unconditional model), so it "
            "cannot predict from a scene; use a model conditioned on input channels"
        )
    if isinstance(input_channels, str):
        input_channels = [input_channels]
    if isinstance(input_channels, Mapping):
        unknown = [k for k in input_channels if k not in model.input_labels]
        if unknown:
            raise ChannelError(
                f"input_channels names {unknown[0]!r}, which model {model.name} does not read; "
                f"it reads {list(model.input_labels)}"
            )
        chosen = [input_channels.get(lab, lab) for lab in model.input_labels]
    elif input_channels is not None:
        chosen = [str(c) for c in input_channels]
    elif model.input_labels:
        chosen = list(model.input_labels)
    elif len(available) == need:
        chosen = list(available)
    else:
        raise ChannelError(
            f"model {model.name} reads {need} input channel(s) but does not name them, and the "
            f"data has {len(available)}: {available}; choose with "
            + option("input_channels=[...]", "--input-channel NAME")
        )
    if len(chosen) != need:
        raise ChannelError(
            f"model {model.name} reads {need} input channel(s), not {len(chosen)} ({chosen})"
        )
    for label in chosen:
        count = available.count(label)
        if count == 0:
            raise ChannelError(
                f"channel {label!r} not found; available: {available}; map it with "
                + option("input_channels=...", "--input-channel NAME")
            )
        if count > 1:
            raise ChannelError(
                f"channel label {label!r} is ambiguous: {count} channels carry it; rename them"
            )
    return chosen


def normalization_args(model: Model, method: str | None) -> dict[str, Any]:
    """The model's own parameters of ``method`` (none when the caller chose another method)."""
    return dict(model.normalization_args) if method == model.normalization else {}


def normalization_method(normalize: str | None, model: Model) -> str | None:
    """The method ``normalize=`` asks for: ``"model"`` → the model's own, ``None``/"none" → none."""
    if normalize == "model":
        normalize = model.normalization
    if normalize in (None, "none"):
        return None
    if normalize not in METHODS:
        raise ParameterError(
            f"unknown normalization {normalize!r}; choose 'model', 'none' or one of "
            + ", ".join(METHODS)
        )
    return normalize


def block_chunks(
    chunks: Mapping[str, int] | Sequence[int | None] | None,
    shape_zyx: Sequence[int],
    divisor: int = 1,
) -> dict[str, int] | None:
    """``predict``'s ``chunks`` as a dict z/y/x → block size (tuples and -1/None accepted).

    -1 or None is the whole axis, padded to a multiple of ``divisor`` as prediction pads it.
    """
    if chunks is None:
        return None
    if isinstance(chunks, Mapping):
        items = dict(chunks)
    elif isinstance(chunks, Sequence) and not isinstance(chunks, str) and len(chunks) in (3, 5):
        items = dict(zip(("z", "y", "x"), list(chunks)[-3:], strict=True))
    else:
        raise ParameterError(
            f"chunks={chunks!r}: give a dict like {{'y': 256, 'x': 256}} or a tuple (z, y, x) "
            "or (t, c, z, y, x)"
        )
    unknown = sorted(set(items) - {"t", "c", "z", "y", "x"})
    if unknown:
        raise ParameterError(f"chunks names axis {unknown[0]!r}; use z, y and x")
    sizes = dict(zip(("z", "y", "x"), shape_zyx, strict=True))
    out = {}
    for axis in ("z", "y", "x"):
        value = items.get(axis)
        if axis not in items:
            continue
        if value is None or value == -1:
            value = -(-sizes[axis] // divisor) * divisor
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ParameterError(
                f"chunks[{axis!r}]={value!r} is not a block size; use a positive integer, -1 or "
                "None (the whole axis)"
            )
        out[axis] = int(value)
    return out


def output_affine(model: Model) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, ``(offset, scale)`` to the target's units, as its head's kind says.

    Values (and interval bounds, quantiles) get ``* scale + offset``, spreads (std, width) the
    scale only, probabilities neither (see :data:`zarrstain.models.KINDS`).
    """
    offset, scale = np.asarray(model.output_intensity, np.float32).T
    uses = np.array([KINDS[h.kind] for h in model.outputs], bool).reshape(-1, 2)
    offset = np.where(uses[:, 0], offset, 0).astype(np.float32)
    scale = np.where(uses[:, 1], scale, 1).astype(np.float32)
    return offset, scale


def denormalize_outputs(out: da.Array, model: Model) -> da.Array:
    """Map each output channel to its target's units (:func:`output_affine`)."""
    offset, scale = output_affine(model)
    return out * scale[None, :, None, None, None] + offset[None, :, None, None, None]


def _align(arr: da.Array) -> dict[str, int]:
    return {d: int(arr.chunks[i][0]) for i, d in enumerate(DIMS) if d in ("z", "y", "x")}


def predict(
    data: Any,
    model: Model,
    *,
    halo: str | int = "auto",
    normalize: str | None = "model",
    input_channels: Sequence[str] | Mapping[str, str] | str | None = None,
    chunks: Mapping[str, int] | Sequence[int | None] | None = None,
    device: str = "auto",
    precision: str = "float32",
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    stats: xr.Dataset | None = None,
    predict_options: PredictOptions | None = None,
) -> xr.DataArray:
    """Predict the model's output channels for (t, c, z, y, x) data, lazily.

    Parameters
    ----------
    data
        A scene from :func:`zarrstain.open_image`, or any DataArray with dims (t, c, z, y, x),
        or a 5-D numpy/dask array (its channels are then the model's inputs, in order).
    model
        From :func:`zarrstain.load_model`.
    halo
        ``"exact"``: identical to one forward pass over the whole volume; ``"auto"``: a
        smaller halo with a small measured error (see the README); an integer: that overlap,
        rounded up to the model's divisor.
    normalize
        ``"model"`` (the model's own method), ``None`` (the data as given) or a method name
        (``"center"``, ``"zscore"``, ``"percentile"``, ``"median_iqr"``).
    input_channels
        Data channels the model reads, by label, in the model's order, or a mapping model label
        → data label. Default: the model's input labels; for models that name none
        (pytorch_fnet), the data's only channel.
    chunks
        Block cores per axis (``{"z": 32, "y": 256, "x": 256}``), multiples of the divisor;
        default: the largest blocks that fit the block memory (``predict_options``), aligned
        with the data's chunks. A dask-style tuple (z, y, x) or (t, c, z, y, x) says the same;
        its t and c entries are ignored (a block holds every input channel), and -1 or None
        means the whole axis.
    device
        ``"auto"`` (CUDA when the process running a block sees a GPU), ``"cpu"``, ``"cuda"`` or
        ``"cuda:N"``.
    precision
        ``"float32"`` (IEEE, also on a GPU), ``"tf32"`` (float32 with TensorFloat-32
        convolutions on CUDA GPUs of the Ampere generation and newer: faster, ~1e-3 relative
        error), or ``"bfloat16"``/``"float16"`` mixed precision (autocast).
    seed
        Seed of stochastic models: their random numbers are a function of the
        seed, the pass and global coordinates, never of the blocks. Ignored by deterministic
        models.
    options
        The model family's run options (its :attr:`~zarrstain.models.Architecture.run_schema`;
        ``zarrstain predict --help`` lists every installed family's), e.g. a sampler's number
        of steps. None: the model's defaults. A name the family does not declare is refused.
    stats
        Precomputed :func:`zarrstain.normalization_stats` of the selected channels (computed
        from the data, lazily, otherwise).
    predict_options
        The settings above and the rarer ones (``batch_size``, ``block_memory``,
        ``denormalize``, ``resources``, ``scratch``) as one validated
        :class:`~zarrstain.engine.options.PredictOptions`, e.g. reused across calls; the
        keyword arguments above must then stay at their defaults.

    Returns
    -------
    xarray.DataArray
        float32, dims (t, c, z, y, x), ``c`` = the model's output labels, the data's t/z/y/x
        coordinates and attrs; ``attrs["zarrstain"]`` holds the provenance that
        :func:`zarrstain.write_channels` stores, including a fingerprint of everything that
        determines the result. Nothing is computed until you compute or write it.
    """
    o = merge_options(  # every option checked once, before anything is read
        predict_options, PredictOptions, "predict_options", halo=halo, normalize=normalize,
        input_channels=input_channels, chunks=chunks, device=device, precision=precision,
        seed=seed, options=options,
    )  # fmt: skip
    prep = prepare(data, model, o.replace(options=model_options(model, o.options)))
    scene, model, chosen, method, inputs, plan = (
        prep.scene, prep.model, prep.chosen, prep.method, prep.inputs, prep.plan
    )  # fmt: skip
    if method is not None:
        if stats is None:
            stats = normalization_stats(inputs, method, **normalization_args(model, method))
        inputs = apply_normalization(inputs, method, stats=stats)
    arr = inputs.data.astype(np.float32)
    out = run_tiled(
        arr,
        model,
        plan,
        device=o.device,
        precision=o.precision,
        batch_size=o.batch_size,
        resources=dict(o.resources) if o.resources else None,
        seed=o.seed,
        scratch=o.scratch,
        tta=o.tta,
    )
    units = "normalized"
    if o.denormalize and model.output_intensity:
        out = denormalize_outputs(out, model)
        units = "target"
    coords = {d: scene.coords[d] for d in ("t", "z", "y", "x") if d in scene.coords}
    result = xr.DataArray(out, dims=DIMS, coords={**coords, "c": list(model.output_labels)})
    skip = ("normalization", "zarrstain", "provenance")
    result.attrs = {k: v for k, v in scene.attrs.items() if k not in skip}
    result.attrs["zarrstain"] = prediction_provenance(
        scene, model, chosen, method, stats, plan, o.precision, units, o.seed, o.tta
    )
    result.attrs["zarrstain"]["device"] = o.device
    return result


@dataclass(frozen=True)
class Prepared:
    """What :func:`predict` works from, before anything is normalized or predicted.

    Attributes
    ----------
    scene
        The data as a (t, c, z, y, x) DataArray.
    model
        With the scene's run options (:func:`run_model`).
    chosen, method
        The input channels' labels and the normalization method (None: none).
    inputs
        The chosen channels, as read (dask-backed).
    plan
        The blocks.
    """

    scene: xr.DataArray
    model: Model
    chosen: list[str]
    method: str | None
    inputs: xr.DataArray
    plan: TilePlan


def prepare(data: Any, model: Model, o: PredictOptions) -> Prepared:
    """The checks and choices of :func:`predict` under the settings ``o`` (their ``options``
    checked already by :func:`model_options`); reads and computes nothing.

    ``PredictionPlan.run`` uses it to compute blocks straight from a store, exactly as
    :func:`predict` tiles them.
    """
    scene = as_scene(data)
    model = run_model(model, scene, o.options or {})
    input_channels = o.input_channels
    if not isinstance(data, xr.DataArray) and input_channels is None:
        input_channels = list(scene.coords["c"].values)  # unlabeled arrays: by position
    chosen = select_inputs(scene.coords["c"].values, model, input_channels)
    method = normalization_method(o.normalize, model)
    if o.device != "auto":
        resolve_device(o.device)  # fail now, not inside a task
    inputs = scene.sel(c=chosen)
    if not isinstance(inputs.data, da.Array):
        inputs = inputs.copy(data=da.from_array(np.asarray(inputs.data), chunks=-1))
    shape = (inputs.shape[0], *inputs.shape[2:])
    plan = plan_tiles(
        shape,
        model,
        halo=o.halo,
        chunks=block_chunks(o.chunks, shape[1:], model.divisor),
        align=_align(inputs.data),
        block_memory=o.block_memory,
    )
    return Prepared(scene, model, chosen, method, inputs, plan)


def model_options(model: Model, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The run options given for ``model``, checked against its family's schema once: names
    it declares, values of their types, models given by path loaded.

    Raises
    ------
    ParameterError
        An option the family does not declare, or a bad value.
    """
    spec = model.spec
    owner = f"architecture {spec.name!r} (model {model.name})"
    return check_options(spec.run_schema, options, owner=owner, load_model=load_model)


def per_scene(model: Model, options: Mapping[str, Any]) -> bool:
    """Whether the options given may resolve differently per scene (a class map)."""
    return any(o.scene and o.name in options for o in model.spec.run_schema)


def run_model(model: Model, scene: xr.DataArray, options: Mapping[str, Any]) -> Model:
    """``model`` with the run options of this scene (:func:`model_options`, then the
    family's :meth:`~zarrstain.models.Architecture.scene_options`: the scene's class).

    Models that take no run options are returned as they are.

    Raises
    ------
    ParameterError
        An option the model cannot use; a class-conditional model's missing or unknown class
        names the scene.
    """
    name = scene.attrs.get("scene")
    try:
        given = model.spec.scene_options(options, scene)
        if not given and not model.spec.stochastic:
            return model
        return model.with_options(**given)
    except ParameterError as e:
        raise ParameterError(f"scene {name!r}: {e}" if name else str(e)) from None
