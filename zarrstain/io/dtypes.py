"""Dtypes of written channels: one per image array, cast per channel by its own dtype's rules.

NGFF images hold one array, so all channels of an image share a dtype. A channel may still ask
for its own (a value written as uint16 beside a float32 std): it is then cast by that dtype's
rules (rounded and clipped into integers) before joining the array, whose dtype is one that
holds every channel's values exactly (``numpy.result_type``), and the provenance records each
channel's dtype (``channel_dtypes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from zarrstain.errors import ChannelError, ParameterError, UnsupportedError, option
from zarrstain.units import as_dtype, float_into_integer_advice

__all__ = ["array_dtype", "cast", "channel_dtypes", "convert_channels", "dtypes_from_text"]


def dtypes_from_text(values: Sequence[str]) -> str | dict[str, str] | None:
    """The ``dtype`` of repeated ``--dtype`` texts: one dtype for all channels, or per label.

    ``["uint16"]`` → ``"uint16"``; ``["DNA (predicted)=uint16", "DNA (predicted) std=float32"]``
    → a mapping label → dtype (split at the last ``=``: labels may hold one); ``[]`` → None.

    Raises
    ------
    ParameterError
        Several values that are not all ``LABEL=DTYPE``.
    """
    values = list(values)
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    plain = [v for v in values if "=" not in v]
    if plain:
        raise ParameterError(
            f"dtype {plain[0]!r} among several: give one dtype for every channel, or "
            f"LABEL=DTYPE for each ({option('dtype={LABEL: DTYPE}', '--dtype LABEL=DTYPE')})"
        )
    return dict(v.rsplit("=", 1) for v in values)


def channel_dtypes(
    dtype: Any, labels: list[str], pred: xr.DataArray, in_place: bool = False
) -> list[np.dtype | None]:
    """Per channel, the dtype it is cast to before it joins the image's array (None: the array's).

    An explicit mapping label → dtype (or a sequence, one per channel) comes first; then the
    default of the head that predicted the channel (``predict`` records them as
    ``output_dtypes``: spreads and probabilities stay float32 when values become integers,
    in a new store). In place, one dtype given for all (``--dtype uint16``) is every new
    channel's: the store's array has one dtype, so the heads' float32 cannot be kept there.
    """
    if in_place and dtype is not None and not isinstance(dtype, Mapping | list | tuple):
        return [as_dtype(dtype)] * len(labels)
    if isinstance(dtype, list | tuple):
        if len(dtype) != len(labels):
            raise ParameterError(
                f"dtype gives {len(dtype)} dtypes for {len(labels)} channels {labels}; give one "
                "per channel or a mapping label → dtype"
            )
        dtype = dict(zip(labels, dtype, strict=True))
    heads = (pred.attrs.get("zarrstain") or {}).get("output_dtypes") or [None] * len(labels)
    if len(heads) != len(labels):
        heads = [None] * len(labels)
    if isinstance(dtype, Mapping):
        unknown = [k for k in dtype if k not in labels]
        if unknown:
            raise ChannelError(f"dtype names channel {unknown[0]!r}; the channels are {labels}")
        heads = [dtype.get(lab, h) for lab, h in zip(labels, heads, strict=True)]
    return [as_dtype(d) if d is not None else None for d in heads]


def array_dtype(
    dtype: Any,
    per_channel: list[np.dtype | None],
    pred: xr.DataArray,
    in_place: bool,
    meta: Any,
    swhere: str,
) -> np.dtype:
    """The dtype of the image's array: one for all its channels (NGFF images have one)."""
    target = as_dtype(dtype) if dtype is not None else None
    if target is None:
        target = np.dtype(np.float32) if np.issubdtype(pred.dtype, np.floating) else pred.dtype
    given = [d for d in per_channel if d is not None]
    if given and all(d is not None for d in per_channel) and dtype is None:
        target = np.result_type(*given)  # holds every channel's values exactly
    elif given:
        target = np.result_type(target, *given)
    if not in_place:
        return target
    store_dtype = np.dtype(meta.levels[0].dtype)
    labels = [str(c) for c in pred.coords["c"].values]
    for label, d in zip(labels, per_channel, strict=True):
        if d is not None and not np.can_cast(d, store_dtype, "safe"):
            flag = option(f"dtype={str(store_dtype)!r}", f"--dtype {store_dtype}")
            raise UnsupportedError(
                f"{swhere} stores {store_dtype}, which cannot hold the {d} channel "
                f"{label!r}; pass {flag} to write every new channel as {store_dtype} "
                f"({label!r} then rounded to whole numbers), or write to a new store with "
                + option("out=...", "--out")
                + " to keep it exact"
            )
    if dtype is not None and as_dtype(dtype) != store_dtype:
        raise UnsupportedError(
            f"{swhere} stores {store_dtype}; channels added in place take that dtype, not "
            f"{as_dtype(dtype)}; pass "
            f"{option(f'dtype={str(store_dtype)!r}', f'--dtype {store_dtype}')} "
            f"or write to a new store with {option('out=...', '--out')}"
        )
    if dtype is None and not given and not np.can_cast(target, store_dtype, "same_kind"):
        raise UnsupportedError(
            f"{swhere} stores {store_dtype} and cannot hold {target} predictions without "
            "rounding them; "
            + float_into_integer_advice(
                (pred.attrs.get("zarrstain") or {}).get("output_units"), store_dtype
            )
        )
    return store_dtype


def cast(data: Any, target: np.dtype) -> Any:
    """``data`` (a numpy or dask array) as ``target``; floats into integers rounded and clipped.

    (A bare ``astype`` wraps out-of-range values around: a bright spot would turn black.)
    """
    if np.issubdtype(target, np.integer) and np.issubdtype(data.dtype, np.floating):
        info = np.iinfo(target)
        data = np.clip(np.round(data), info.min, info.max)  # dask arrays dispatch to dask
    return data.astype(target)


def convert_channels(data: Any, per_channel: list[np.dtype | None], target: np.dtype) -> Any:
    """(t, c, z, y, x) predictions as stored: each channel by its dtype's rules, then ``target``.

    The same operations for a dask array (the lazy route) and a numpy block (coarse tasks), so
    both store the same values.
    """
    if any(d is not None for d in per_channel):
        parts = [cast(data[:, i : i + 1], d) if d is not None else data[:, i : i + 1]
                 for i, d in enumerate(per_channel)]  # fmt: skip
        data = np.concatenate([cast(p, target) for p in parts], axis=1)
    return cast(data, target)
