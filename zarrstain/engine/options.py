"""Validated, frozen option objects for predicting and writing.

``PredictOptions`` holds how a model runs over a scene (halo, normalization, inputs, blocks,
device, precision, seed, and the model family's own run options), ``WriteOptions`` where and
how its channels are written (new store or in place, overwrite, dtypes, copied channels).
Both are checked once, when built, with messages that name the Python argument or, under the
CLI, the flag. The CLI builds them from
its flags; Python users build them directly and pass them to
:func:`zarrstain.engine.pipeline.plan_prediction` (``zarrstain.predict`` and ``write_channels``
accept the same fields as keyword arguments).

>>> from zarrstain.engine.options import PredictOptions
>>> opts = PredictOptions(halo="exact", precision="bfloat16")
>>> opts.replace(device="cpu").device
'cpu'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from dask.utils import parse_bytes

from zarrstain.errors import ParameterError, option
from zarrstain.models.device import check_device
from zarrstain.units import as_dtype

__all__ = [
    "METHODS",
    "NORMALIZATIONS",
    "PRECISION_NAMES",
    "PredictOptions",
    "WriteOptions",
    "check_block_memory",
    "check_device",
    "check_halo",
    "check_precision",
    "merge_options",
]

#: normalization methods of :mod:`zarrstain.engine.normalize` (named here, where options are
#: checked, so that checking them imports no dask.array)
METHODS = ("center", "zscore", "percentile", "median_iqr")
#: the numeric precisions a forward can run in (see :data:`zarrstain.engine.tiling.PRECISIONS`)
PRECISION_NAMES = ("float32", "tf32", "bfloat16", "float16")
#: what ``normalize`` takes: the model's own method, none, or a method of
#: :mod:`zarrstain.engine.normalize`
NORMALIZATIONS = ("model", "none", *METHODS)
#: test-time augmentation → its transforms of the xy plane, each (flip x first, then k × 90°);
#: the forward averages them (:class:`zarrstain.engine.tiling.Forward`)
TTA: dict[str, tuple[tuple[bool, int], ...]] = {
    "none": ((False, 0),),
    "flips": ((False, 0), (True, 0), (False, 2), (True, 2)),  # identity, x, x+y, y flips
    "d4": tuple((f, k) for f in (False, True) for k in range(4)),  # + the 90° rotations
}
TTA_MODES = tuple(TTA)


def check_halo(halo: Any) -> str | int:
    """``halo`` as the engine takes it: ``"auto"``, ``"exact"`` or an overlap in voxels ≥ 0
    (a string of digits, as flags give it, becomes that integer).

    Raises
    ------
    ParameterError
        Anything else, naming the option.
    """
    if isinstance(halo, str) and halo.isdigit():
        halo = int(halo)
    if halo in ("auto", "exact"):
        return halo
    if isinstance(halo, bool) or not isinstance(halo, int | np.integer) or halo < 0:
        raise ParameterError(
            f"{_flag('halo')} must be 'auto', 'exact' or an integer ≥ 0 (voxels), not {halo!r}"
        )
    return int(halo)


def check_block_memory(value: Any) -> int:
    """A block's memory budget in bytes, from a number or a size (``"4GiB"``, ``"500MB"``).

    Raises
    ------
    ParameterError
        Not a positive size, naming the option.
    """
    try:
        budget = parse_bytes(value)
    except (ValueError, TypeError):
        budget = 0
    if budget <= 0:
        raise ParameterError(
            f"block memory {value!r} is not a size; use bytes or a unit, e.g. 4GiB or 500MB "
            f"({option('block_memory=', '--block-memory')})"
        )
    return int(budget)


def check_precision(precision: Any) -> str:
    """``precision`` when it is one of :data:`PRECISION_NAMES`.

    Raises
    ------
    ParameterError
        Anything else, naming the option and the choices.
    """
    if precision not in PRECISION_NAMES:
        raise ParameterError(
            f"{_flag('precision')} must be one of {', '.join(PRECISION_NAMES)}, not {precision!r}"
        )
    return str(precision)


def _flag(name: str) -> str:
    """The option's name as the user spells it: ``halo`` in Python, ``--halo`` in the CLI."""
    return option(name, "--" + name.replace("_", "-"))


class _Options:
    """What both option objects share: copies that are validated again, and keyword arguments."""

    def replace(self, **changes: Any) -> Any:
        """A copy with these fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of :func:`zarrstain.predict` / ``write_channels``.

        Frozen containers are thawed (tuples to lists, mappings to dicts) for the callee.
        """
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


@dataclass(frozen=True)
class PredictOptions(_Options):
    """How a model runs over a scene: :func:`zarrstain.predict`'s settings as one object.

    ``halo``, ``normalize``, ``input_channels``, ``chunks``, ``device``, ``precision``,
    ``seed`` and ``options`` are described with :func:`zarrstain.predict`; the others are set
    here only:

    Attributes
    ----------
    batch_size
        Items (time points, or planes for 2D models) per forward pass; default all in a block.
    block_memory
        Memory budget of one block's forward pass (bytes or ``"4GiB"``); default
        :func:`zarrstain.engine.planner.default_block_memory`. Sizes the default ``chunks``.
    denormalize
        Map predictions to the target channel's units with the model's ``output_intensity``
        (models trained by zarrstain carry it); otherwise, or when False, predictions stay in
        the normalized units the model computes in.
    resources
        dask.distributed resources the model's tasks need, e.g. ``{"GPU": 1}``: they then run
        only on workers that have them (reading, normalization and writing run anywhere).
    scratch
        Folder for the intermediate passes of multi-pass models: they are then computed now,
        one pass at a time, and reused by a rerun after an interruption. Without it the passes
        chain lazily in one graph. Single-pass models never use it.
    tta
        Test-time augmentation: ``"flips"`` predicts the 4 flips of the xy plane and
        averages them (each flipped back), ``"d4"`` the 8 flips and 90° rotations; 4× or 8×
        the forward passes. Tiling stays exact for local models (blocks and the padded
        volume are multiples of the divisor, so a flipped block is a block of the flipped
        volume). The prediction's provenance records it.

    Raises
    ------
    ParameterError
        A value no run could use, naming the option and what would work.
    """

    halo: str | int = "auto"
    normalize: str | None = "model"
    input_channels: tuple[str, ...] | Mapping[str, str] | None = None
    chunks: Mapping[str, int] | Sequence[int | None] | None = None
    device: str = "auto"
    batch_size: int | None = None
    precision: str = "float32"
    block_memory: int | str | None = None
    denormalize: bool = True
    resources: Mapping[str, float] | None = None
    seed: int = 0
    scratch: str | None = None
    #: the model family's run options (``predict(options=...)``), checked against its schema
    options: Mapping[str, Any] | None = None
    #: test-time augmentation: "none", "flips" (4 xy flips) or "d4" (+ 90° rotations: 8)
    tta: str = "none"

    def __post_init__(self) -> None:
        object.__setattr__(self, "halo", check_halo(self.halo))
        if self.normalize is not None and self.normalize not in NORMALIZATIONS:
            raise ParameterError(
                f"unknown normalization {self.normalize!r}; choose one of "
                + ", ".join(NORMALIZATIONS)
                + f" ({option('normalize=', '--normalization')})"
            )
        check_device(self.device)
        check_precision(self.precision)
        if self.tta not in TTA_MODES:
            raise ParameterError(
                f"{_flag('tta')} {self.tta!r} is not one of {', '.join(TTA_MODES)}"
            )
        size = self.batch_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ParameterError(f"{_flag('batch_size')} must be a whole number ≥ 1, not {size!r}")
        if self.block_memory is not None:
            check_block_memory(self.block_memory)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int | np.integer):
            raise ParameterError(f"{_flag('seed')} must be a whole number, not {self.seed!r}")
        channels = self.input_channels
        if isinstance(channels, str):
            object.__setattr__(self, "input_channels", (channels,))
        elif channels is not None and not isinstance(channels, Mapping):
            object.__setattr__(self, "input_channels", tuple(str(c) for c in channels) or None)
        if self.options is not None and not isinstance(self.options, Mapping):
            raise ParameterError(
                f"options must be a mapping of the model's run options like {{'steps': 20}}, "
                f"not {self.options!r}"
            )
        if self.resources is not None and not isinstance(self.resources, Mapping):
            raise ParameterError(
                f"resources must be a mapping like {{'GPU': 1}}, not {self.resources!r}"
            )


@dataclass(frozen=True)
class WriteOptions(_Options):
    """Where and how predicted channels are written; see :func:`zarrstain.write_channels`.

    Raises
    ------
    ParameterError
        A value no write could use (a dtype numpy does not know, ``copy_channels`` without
        ``out``).
    """

    out: Any = None
    overwrite: bool = False
    dtype: Any = None
    copy_channels: bool | tuple[str, ...] = False
    storage_options: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        dtype = self.dtype
        if isinstance(dtype, Mapping):
            object.__setattr__(self, "dtype", {str(k): as_dtype(v) for k, v in dtype.items()})
        elif isinstance(dtype, list | tuple):
            object.__setattr__(self, "dtype", tuple(as_dtype(v) for v in dtype))
        elif dtype is not None:
            object.__setattr__(self, "dtype", as_dtype(dtype))
        if isinstance(self.copy_channels, list | tuple):
            object.__setattr__(self, "copy_channels", tuple(str(c) for c in self.copy_channels))
        if self.copy_channels and self.out is None:
            raise ParameterError(
                f"{_flag('copy_channels')} copies source channels into a new store; give "
                + option("out=...", "--out")
            )


def merge_options(given: Any, cls: type, name: str, **values: Any) -> Any:
    """``given`` (an options object), or one built from the keyword arguments; not both.

    Raises
    ------
    ParameterError
        ``given`` is not a ``cls``, or a keyword argument differs from its default as well.
    """
    defaults = cls()
    changed = [k for k, v in values.items() if not same_value(v, getattr(defaults, k))]
    if given is None:
        return cls(**values)
    if not isinstance(given, cls):
        raise ParameterError(f"{name} must be a {cls.__name__}, not {type(given).__name__}")
    if changed:
        raise ParameterError(
            f"{', '.join(changed)} given both as keyword argument(s) and in {name}; set them in "
            f"{name} only (e.g. {name}.replace({changed[0]}=...))"
        )
    return given


def same_value(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except (TypeError, ValueError):  # arrays, dtypes against None
        return a is b
