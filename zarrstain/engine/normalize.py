"""Normalization with global statistics, computed once per (t, c) of a scene and applied lazily.

Never per block: statistics are dask reductions over each (t, c) volume, and the result is an
affine map ``(x - offset) / scale`` applied blockwise, so tiles cannot drift apart.

Methods (pytorch_fnet's and VisCy's conventions, and percentile clipping):

- ``"center"``: pytorch_fnet's ``norm_around_center``: mean and population std of the 32
  z-slices around the middle (start ``Z//2 - 16``, clamped inside the stack), in float64.
  With fewer than 32 slices all are used (logged; pytorch_fnet would raise).
- ``"zscore"``: whole-volume mean and population std (pytorch_fnet's ``normalize``).
- ``"percentile"``: clip to the ``p_low``/``p_high`` percentiles and rescale to [0, 1] (common
  practice; MMV_Im2Im's percentile normalization rescales to [-1, 1] instead).
- ``"median_iqr"``: subtract the median and divide by the interquartile range (VisCy's
  ``NormalizeSampled(subtrahend="median", divisor="iqr")``, which its published models use).
  VisCy estimates the statistics on a 32-pixel grid (``viscy preprocess``), per field of view
  over all time points (``fov_statistics``); here they are exact, per (t, c) as every method
  here: equal for single time points, and within the grid's sampling error otherwise.

Percentiles are exact: a histogram over the dtype's range for 8- and 16-bit integers, and
numpy's percentile of the whole (t, c) volume for other dtypes (linear interpolation, numpy's
default, in both).

A constant or empty volume (std 0, or equal percentiles) gets a warning and a divisor of 1,
never NaN or inf.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Literal

import dask.array as da
import numpy as np
import xarray as xr

from zarrstain.engine.options import METHODS
from zarrstain.errors import ParameterError
from zarrstain.io.read import source_token

__all__ = [
    "METHODS",
    "normalization_stats",
    "normalize",
    "safe_scale",
    "stats_in_memory",
    "stats_params",
]

logger = logging.getLogger(__name__)

Method = Literal["center", "zscore", "percentile", "median_iqr"]
CENTER_SLICES = 32


def _as_dask(data: xr.DataArray) -> da.Array:
    return data.data if isinstance(data.data, da.Array) else da.from_array(data.values)


def _center_window(nz: int, scene: str | None, quiet: bool = False) -> slice:
    if nz < CENTER_SLICES:
        if quiet:  # said once when the statistics were planned
            return slice(0, nz)
        logger.info(
            "center normalization%s: only %d z-slices (< %d); using all",
            f" of scene {scene!r}" if scene else "",
            nz,
            CENTER_SLICES,
        )
        return slice(0, nz)
    start = min(max(nz // 2 - CENTER_SLICES // 2, 0), nz - CENTER_SLICES)
    return slice(start, start + CENTER_SLICES)


def _hist_percentiles(arr: da.Array, q: tuple[float, ...]) -> da.Array:
    """Exact percentiles of integer data per (t, c) from full-range histograms; (t, c, len(q))."""
    info = np.iinfo(arr.dtype)
    n_bins = int(info.max) - int(info.min) + 1
    if n_bins > 2**17:
        raise TypeError(f"exact percentiles need 8- or 16-bit integers, not {arr.dtype}")
    lo = int(info.min)

    def hist(block: np.ndarray) -> np.ndarray:  # one (t, c) per block, see the rechunk below
        counts = np.bincount(block.ravel().astype(np.int64) - lo, minlength=n_bins)
        return counts.reshape(1, 1, 1, 1, n_bins)

    # one histogram per block, each block spanning all of x so the bins line up along x
    counts = arr.rechunk({0: 1, 1: 1, 4: -1}).map_blocks(
        hist, dtype=np.int64, chunks=(1, 1, 1, 1, n_bins)
    )
    total = counts.sum(axis=(2, 3))  # (t, c, bins): add up the z and y block grid

    pick = functools.partial(_pick_percentiles, q=q, lo=lo)
    return total.map_blocks(pick, dtype=np.float64, chunks=(1, 1, len(q)))


def _pick_percentiles(counts: np.ndarray, q: tuple[float, ...], lo: int) -> np.ndarray:
    """Percentiles ``q`` (numpy's 'linear' method) from histograms over the last axis."""
    cum = np.cumsum(counts, axis=-1)
    n = cum[..., -1:]
    out = np.empty((*counts.shape[:-1], len(q)), np.float64)
    for k, p in enumerate(q):
        pos = p / 100.0 * (n[..., 0] - 1)
        below, above = np.floor(pos), np.ceil(pos)
        v_lo = np.argmax(cum > below[..., None], axis=-1)
        v_hi = np.argmax(cum > above[..., None], axis=-1)
        out[..., k] = v_lo + (v_hi - v_lo) * (pos - below) + lo
    return out


def _percentiles_in_memory(arr: np.ndarray, q: tuple[float, ...]) -> np.ndarray:
    """:func:`_percentiles` of an array in memory (the same values); shape (t, c, len(q))."""
    t, c = arr.shape[:2]
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2:
        info = np.iinfo(arr.dtype)
        n_bins, lo = int(info.max) - int(info.min) + 1, int(info.min)
        counts = np.stack([
            np.bincount(arr[i, j].ravel().astype(np.int64) - lo, minlength=n_bins)
            for i in range(t) for j in range(c)
        ]).reshape(t, c, n_bins)  # fmt: skip
        return _pick_percentiles(counts, q, lo)
    flat = arr.reshape(t, c, -1).astype(np.float64)
    return np.stack([[np.percentile(flat[i, j], list(q)) for j in range(c)] for i in range(t)])


def stats_in_memory(
    arr: np.ndarray,
    method: Method,
    *,
    p_low: float = 0.5,
    p_high: float = 99.5,
    clip: bool = True,
    scene: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(offset, scale)`` per (t, c) of a (t, c, z, y, x) numpy array, as
    :func:`normalization_stats` computes them (percentiles exactly equal; means and standard
    deviations up to float64 rounding, which depends on how a reduction is split).

    For one field's coarse task (:mod:`zarrstain.engine.coarse`): no graph, one pass in memory.
    """
    del clip  # a parameter of applying the statistics, not of computing them
    # the plan (stats_params) has said it already when the center window is short
    window = _center_window(arr.shape[2], scene, True) if method == "center" else slice(None)
    return _offset_scale(arr, method, window, p_low, p_high, _percentiles_in_memory)


def _offset_scale(
    arr: Any,
    method: str,
    window: slice,
    p_low: float,
    p_high: float,
    percentiles: Any,
) -> tuple[Any, Any]:
    """``(offset, scale)`` per (t, c) of ``arr`` (numpy or dask: the same reductions), with
    ``percentiles(arr, q)`` of its kind."""
    if method in ("center", "zscore"):
        sub = arr[:, :, window].astype(np.float64)
        # population std (ddof 0), as pytorch_fnet
        return sub.mean(axis=(2, 3, 4)), sub.std(axis=(2, 3, 4))
    if method == "percentile":
        pct = percentiles(arr, (p_low, p_high))
        return pct[..., 0], pct[..., 1] - pct[..., 0]
    pct = percentiles(arr, (25.0, 50.0, 75.0))  # median_iqr
    return pct[..., 1], pct[..., 2] - pct[..., 0]


def _percentiles(arr: da.Array, q: tuple[float, ...]) -> da.Array:
    """Exact percentiles per (t, c) of a (t, c, z, y, x) array; shape (t, c, len(q))."""
    if np.issubdtype(arr.dtype, np.integer) and arr.dtype.itemsize <= 2:
        return _hist_percentiles(arr, q)
    flat = arr.reshape(arr.shape[0], arr.shape[1], -1).astype(np.float64)
    # one chunk per (t, c) volume: dask's percentile is exact within a chunk
    return da.stack(
        [
            da.stack([da.percentile(flat[i, j].rechunk(-1), list(q)) for j in range(arr.shape[1])])
            for i in range(arr.shape[0])
        ]
    )


def normalization_stats(
    data: xr.DataArray,
    method: Method = "center",
    *,
    p_low: float = 0.5,
    p_high: float = 99.5,
    clip: bool = True,
) -> xr.Dataset:
    """Per (t, c) ``offset`` and ``scale`` of a (t, c, z, y, x) DataArray, lazily.

    ``clip`` (``"percentile"``): clip normalized data to [0, 1] (False: bioimage.io's
    ``scale_range`` without a ``clip``).

    Returns
    -------
    xarray.Dataset
        ``offset`` and ``scale`` (float64, dims (t, c), dask-backed): normalized data is
        ``(data - offset) / scale``. ``attrs`` holds the method and its parameters.
    """
    arr = _as_dask(data)
    params = stats_params(data, method, p_low=p_low, p_high=p_high, clip=clip)
    window = slice(*params["z_slices"]) if method == "center" else slice(None)
    offset, scale = _offset_scale(arr, method, window, p_low, p_high, _percentiles)
    coords = {d: data.coords[d] for d in ("t", "c") if d in data.coords}
    return xr.Dataset(
        {"offset": (("t", "c"), offset), "scale": (("t", "c"), scale)}, coords=coords, attrs=params
    )


def stats_params(
    data: xr.DataArray,
    method: Method,
    *,
    p_low: float = 0.5,
    p_high: float = 99.5,
    clip: bool = True,
) -> dict[str, Any]:
    """The ``attrs`` of :func:`normalization_stats`: the method, its parameters and the data.

    Reads and computes nothing; fingerprints and provenance use these, not the values.
    """
    if method not in METHODS:
        choices = ", ".join(METHODS)
        raise ParameterError(f"unknown normalization {method!r}; choose one of {choices}")
    params: dict[str, Any] = {"method": method}
    if method == "center":
        window = _center_window(data.shape[2], data.attrs.get("scene"))
        params["z_slices"] = [window.start, window.stop]
    elif method == "percentile":
        params.update(p_low=p_low, p_high=p_high, clip=clip)
    params["data"] = source_token(data)  # what the statistics describe (for fingerprints)
    return params


def safe_scale(scale: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(scale) | (scale <= 0)
    if bad.any():
        logger.warning(
            "normalization: %d (t, c) volume(s) are constant or empty (spread 0); dividing by 1 "
            "instead (VisCy#422)",
            int(bad.sum()),
        )
    return np.where(bad, 1.0, scale)


def normalize(
    data: xr.DataArray,
    method: Method = "center",
    *,
    p_low: float = 0.5,
    p_high: float = 99.5,
    stats: xr.Dataset | None = None,
) -> xr.DataArray:
    """Normalize a (t, c, z, y, x) DataArray with global statistics, lazily, as float32.

    Parameters
    ----------
    data
        The scene (or any DataArray with those dims).
    method
        ``"center"``, ``"zscore"``, ``"percentile"`` or ``"median_iqr"`` (see the module
        docstring).
    p_low, p_high
        Percentiles for ``"percentile"``.
    stats
        Precomputed :func:`normalization_stats` (e.g. from training data) instead of the data's own.

    Returns
    -------
    xarray.DataArray
        float32, same dims and coords; ``attrs["normalization"]`` names the method.
        ``"percentile"`` output is clipped to [0, 1].
    """
    stats = (
        stats
        if stats is not None
        else normalization_stats(data, method, p_low=p_low, p_high=p_high)
    )
    offset = da.asarray(stats["offset"].data)[:, :, None, None, None]
    scale = da.asarray(stats["scale"].data).map_blocks(safe_scale, dtype=np.float64)
    scale = scale[:, :, None, None, None]
    arr = _as_dask(data)
    out = ((arr.astype(np.float64) - offset) / scale).astype(np.float32)
    if stats.attrs.get("method") == "percentile" and stats.attrs.get("clip", True):
        out = da.clip(out, 0.0, 1.0)
    result = data.copy(data=out)
    result.attrs = {**data.attrs, "normalization": dict(stats.attrs)}
    return result
