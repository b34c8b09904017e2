"""One scene's write, checked: :class:`~zarrstain.io.repeat.WritePlan` from a prediction.

Shapes, labels and dtypes are checked against the image before anything is written; the
prediction is converted to the stored dtype (lazily) and its provenance record made.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import dask
import numpy as np
import xarray as xr

from zarrstain._version import __version__
from zarrstain.errors import ChannelError, ParameterError, ShapeMismatchError
from zarrstain.io.channels import INCOMPLETE_SUFFIX
from zarrstain.io.dtypes import array_dtype, channel_dtypes, convert_channels
from zarrstain.io.metadata import DIMS
from zarrstain.io.opened import OpenStore
from zarrstain.io.repeat import WritePlan

__all__ = ["plan_write", "time_of"]


def time_of(time: slice | Mapping[str, slice | None] | None, scene: str) -> slice | None:
    """The time slice of ``scene``, checked."""
    if isinstance(time, Mapping):
        time = time.get(scene)
    if time is not None and (time.step not in (None, 1) or time.start is None or time.stop is None):
        raise ParameterError(f"time must be a slice(t0, t1) with step 1, not {time!r}")
    return time


def plan_write(
    src: OpenStore,
    sid: str,
    pred: xr.DataArray,
    dtype: Any,
    in_place: bool,
    time: slice | None,
    source: Any = None,
) -> WritePlan:
    gpath = src.layout.scenes[sid]
    swhere = src.where_of(gpath)
    meta = src.meta(gpath)
    if set(pred.dims) != set(DIMS):
        raise ShapeMismatchError(
            f"predictions for scene {sid!r} have dims {pred.dims}; expected {DIMS} "
            "(use open_image, or DataArray.expand_dims / transpose)"
        )
    pred = pred.transpose(*DIMS)
    dims = meta.axis_names
    full = dict(zip(dims, meta.levels[0].shape, strict=True))
    if time is not None:
        wanted = len(range(full.get("t", 1))[time])
        if wanted == 0 or time.stop > full.get("t", 1) or time.start < 0:
            raise ShapeMismatchError(
                f"time {time.start}:{time.stop} is outside scene {sid!r}, which has "
                f"t={full.get('t', 1)} time points (0:{full.get('t', 1)})"
            )
        full = {**full, "t": wanted}
    for d in ("t", "z", "y", "x"):
        if pred.sizes[d] != full.get(d, 1):
            raise ShapeMismatchError(
                f"predictions for scene {sid!r} have {d}={pred.sizes[d]} but {swhere} has "
                f"{d}={full.get(d, 1)}; predict on the full-resolution level (level=0)"
            )
    labels = [str(v) for v in pred.coords["c"].values] if "c" in pred.coords else []
    if not labels or len(set(labels)) != len(labels) or any(not x for x in labels):
        raise ChannelError(
            f"predictions for scene {sid!r} need unique, non-empty channel labels as 'c' "
            f"coordinates; got {labels}"
        )
    if any(x.endswith(INCOMPLETE_SUFFIX) for x in labels):
        raise ChannelError(f"channel labels may not end in {INCOMPLETE_SUFFIX!r}: {labels}")
    per_channel = channel_dtypes(dtype, labels, pred, in_place)
    single = None if isinstance(dtype, Mapping | list | tuple) else dtype
    target = array_dtype(single, per_channel, pred, in_place, meta, swhere)
    data = pred.data
    if not isinstance(data, dask.array.Array):
        data = dask.array.from_array(np.asarray(data), chunks=-1)
    convert = functools.partial(convert_channels, per_channel=per_channel, target=target)
    data = convert(data)
    fingerprint = fingerprint_of(pred)
    user = pred.attrs.get("zarrstain")
    record = {**(dict(user) if isinstance(user, dict) else {}), "zarrstain_version": __version__}
    if fingerprint:
        record["fingerprint"] = fingerprint
    record["dtype"] = str(target)
    if any(d is not None for d in per_channel):
        pairs = zip(labels, per_channel, strict=True)
        record["channel_dtypes"] = {lab: str(target if d is None else d) for lab, d in pairs}
    pred = pred.copy(deep=False, data=data)  # (deep: copies every attribute, per field)
    return WritePlan(sid, gpath, meta, pred, labels, fingerprint, record, time, source,
                     convert)  # fmt: skip


def fingerprint_of(pred: xr.DataArray) -> str | None:
    """The caller's fingerprint of what produced ``pred`` (``attrs["zarrstain"]["fingerprint"]``).

    ``predict`` sets one from the model hash, inputs, normalization and tiling, so a repeated
    run is recognised without computing anything. Plain data has none: its content decides.
    """
    given = (pred.attrs.get("zarrstain") or {}).get("fingerprint")
    return str(given) if given else None
