"""Units of predictions, and how they reach an integer store without losing them.

Models trained by zarrstain predict in their target channel's units (``output_units ==
"target"``): rounding those to the store's integers is what the acquired channel does too.
Models without an intensity scale (pytorch_fnet checkpoints) predict in *normalized* units,
mean 0 and standard deviation 1 of their training targets, mostly between -2 and 10: rounded to
uint16 they become a handful of levels, the negative half 0. :func:`rescale` maps them onto the
integer range by a fixed affine map instead, recorded in the provenance so the normalized
values can be recovered (``value = stored * scale + offset``). A fixed map, not one fitted to
each prediction's range: it needs no pass over the predictions before writing, and every
scene, block and run gets the same one, so predictions stay comparable.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
import numpy as np
import xarray as xr

from zarrstain.errors import ParameterError, option

__all__ = [
    "RESCALE_RANGE",
    "as_dtype",
    "check_integer_output",
    "float_into_integer_advice",
    "rescale",
    "rescale_map",
    "rescale_record",
]

logger = logging.getLogger(__name__)

#: normalized values mapped onto an integer dtype's full range by :func:`rescale`: below the
#: darkest background and above bright nuclei and spots; values outside are clipped
RESCALE_RANGE = (-8.0, 24.0)


def rescale_map(dtype: Any, value_range: tuple[float, float] = RESCALE_RANGE):
    """``(offset, scale)`` of :func:`rescale`: stored = (value - offset) / scale."""
    lo, hi = (float(v) for v in value_range)
    info = np.iinfo(np.dtype(dtype))
    scale = (hi - lo) / (float(info.max) - float(info.min))  # value units per integer step
    return lo - float(info.min) * scale, scale


def rescale_record(
    record: dict[str, Any], dtype: Any, value_range: tuple[float, float] = RESCALE_RANGE
) -> dict[str, Any]:
    """A prediction's provenance with :func:`rescale`'s map recorded (and in its fingerprint)."""
    offset, scale = rescale_map(dtype, value_range)
    record = dict(record)
    record["rescale"] = {
        "range": [float(v) for v in value_range],
        "dtype": str(np.dtype(dtype)),
        "scale": scale,
        "offset": offset,
        "inverse": "value = stored * scale + offset",
    }
    if record.get("fingerprint"):
        record["fingerprint"] = dask.base.tokenize(record["fingerprint"], record["rescale"])
    return record


def rescale(pred: xr.DataArray, dtype: Any, value_range: tuple[float, float] = RESCALE_RANGE):
    """Map normalized predictions onto an integer dtype's range (lazily).

    Parameters
    ----------
    pred
        From :func:`zarrstain.predict`, in normalized units.
    dtype
        The integer dtype the values will be written as (``write_channels`` rounds and clips).
    value_range
        The normalized values that map to the dtype's minimum and maximum.

    Returns
    -------
    xarray.DataArray
        float32 values in the dtype's range; ``attrs["zarrstain"]["rescale"]`` records the map
        (``value = stored * scale + offset``) and the fingerprint includes it.
    """
    target = np.dtype(dtype)
    if not np.issubdtype(target, np.integer):
        raise ParameterError(
            f"rescaling maps predictions onto an integer dtype, not {target}; float stores "
            "hold the predictions as they are"
        )
    offset, scale = rescale_map(target, value_range)
    out = ((pred - offset) / scale).astype(np.float32)
    record = rescale_record(pred.attrs.get("zarrstain") or {}, target, value_range)
    out.attrs = {**pred.attrs, "zarrstain": record}
    return out


def as_dtype(dtype: Any) -> np.dtype:
    """``dtype`` as a numpy dtype zarrstain writes (integers or floats), or a clear error."""
    try:
        target = np.dtype(dtype)
    except TypeError:
        target = None
    if target is None or target.kind not in "iuf":
        raise ParameterError(
            f"dtype {dtype!r} is not a number type zarrstain writes; use e.g. uint16, uint8 or "
            f"float32 ({option('dtype=', '--dtype')})"
        )
    return target


def check_integer_output(
    units: str, dtype: Any, rescaling: bool, model_name: str, where: str
) -> None:
    """Refuse or warn where normalized predictions would be rounded to integers.

    Parameters
    ----------
    units
        The predictions' ``output_units`` (``"normalized"`` or ``"target"``).
    dtype
        The dtype they will be written as (None: float32 into a new store).
    rescaling
        Whether :func:`rescale` will map them first.
    model_name, where
        For messages: the model, and the store.
    """
    integer = dtype is not None and np.issubdtype(np.dtype(dtype), np.integer)
    if rescaling and units != "normalized":
        raise ParameterError(
            f"model {model_name!r} predicts in its target channel's units already; rescaling "
            f"is for normalized predictions: drop {option('rescale=True', '--rescale')}"
        )
    if rescaling and not integer:
        raise ParameterError(
            f"rescaling maps predictions onto an integer dtype, and {where} would hold "
            f"{dtype or 'float32'}; pass {option('dtype=', '--dtype')} uint16 or uint8, or drop "
            + option("rescale=True", "--rescale")
        )
    if integer and units == "normalized" and not rescaling:
        info = np.iinfo(np.dtype(dtype))
        logger.warning(
            "model %r predicts in normalized units (mostly -2 to 10); as %s only whole numbers "
            "from %d to %d remain%s and finer differences are lost. Write float32 to a new "
            "store (%s), or map %g..%g onto the whole range (%s)",
            model_name,
            info.dtype,
            info.min,
            info.max,
            ": negative values become 0" if info.min == 0 else "",
            option("out=...", "--out"),
            *RESCALE_RANGE,
            option("rescale=True", "--rescale"),
        )


def float_into_integer_advice(units: str | None, store_dtype: np.dtype) -> str:
    """What to do instead of writing float predictions into an integer store unasked."""
    out = option("out=...", "--out")
    if units == "normalized":
        return (
            f"the predictions are in normalized units (mostly -2 to 10), which rounding to "
            f"{store_dtype} would flatten to a few levels; write them as float32 to a new store "
            f"with {out}, or map them onto {store_dtype}'s range with "
            + option(f"dtype='{store_dtype}', rescale=True", f"--dtype {store_dtype} --rescale")
        )
    return (
        f"pass {option(f'dtype={str(store_dtype)!r}', f'--dtype {store_dtype}')} to round and "
        f"clip them, or write to a new store with {out} to keep them as floats"
    )
