"""Compute a pyramid level from the level above it, matching the shapes already in the store."""

from __future__ import annotations

import dask.array as da
import numpy as np

from zarrstain.errors import UnsupportedError, option

__all__ = ["downsample_block", "downsample_to", "halving_shapes", "level_factor"]


def _factor(src: int, dst: int, where: str) -> tuple[int, int]:
    """Integer factor ``f`` with ``dst`` = floor or ceil of ``src / f``; returns (f, padding)."""
    f = max(1, round(src / dst))
    if dst == src // f:
        return f, 0
    if dst == -(-src // f):
        return f, dst * f - src
    raise UnsupportedError(
        f"{where}: cannot derive a level of size {dst} from {src} by an integer factor; "
        f"write to a new store with {option('out=...', '--out')} to get a regular pyramid"
    )


def downsample_to(data: da.Array, shape: tuple[int, ...], where: str) -> da.Array:
    """Block-mean ``data`` down to ``shape`` (an existing level's shape) with integer factors.

    Each output voxel is the mean of the ``f`` input voxels it covers along each axis. When the
    existing level rounded up (``ceil(n / f)``), the last partial block is averaged over the
    voxels it has (edge padding), so no voxel is invented outside the image.
    """
    factors = {}
    pad = []
    for axis, (src, dst) in enumerate(zip(data.shape, shape, strict=True)):
        f, p = _factor(src, dst, where)
        factors[axis] = f
        pad.append((0, p))
    if any(p for _, p in pad):
        data = da.pad(data, pad, mode="edge")
    if all(f == 1 for f in factors.values()):
        out = data
    else:
        out = da.coarsen(np.mean, data.astype(np.float64), factors, trim_excess=True)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        out = da.clip(da.round(out), info.min, info.max)
    return out.astype(data.dtype)


def level_factor(upper: tuple[int, ...], lower: tuple[int, ...], where: str = "") -> list[int]:
    """Per axis, the integer factor between two levels' shapes (see :func:`downsample_to`)."""
    return [_factor(a, b, where)[0] for a, b in zip(upper, lower, strict=True)]


def downsample_block(data: np.ndarray, factors: list[int], shape: tuple[int, ...]) -> np.ndarray:
    """:func:`downsample_to` of one block held in memory, to ``shape``, with the same values.

    The block starts on a factor boundary; where it ends at the image's edge, its last partial
    window is edge-padded (or trimmed) exactly as the whole level would be.
    """
    pad = [(0, max(0, n * f - s)) for s, f, n in zip(data.shape, factors, shape, strict=True)]
    if any(p for _, p in pad):
        data = np.pad(data, pad, mode="edge")
    data = data[tuple(slice(0, n * f) for f, n in zip(factors, shape, strict=True))]
    if all(f == 1 for f in factors):
        out = data
    else:
        split = [v for n, f in zip(shape, factors, strict=True) for v in (n, f)]
        axes = tuple(range(1, 2 * data.ndim, 2))
        out = np.mean(data.astype(np.float64).reshape(split), axis=axes)
    if np.issubdtype(data.dtype, np.integer):
        info = np.iinfo(data.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    return out.astype(data.dtype)


def halving_shapes(
    shape: tuple[int, ...], spatial: tuple[bool, ...], n_levels: int
) -> list[tuple[int, ...]]:
    """Shapes of a pyramid halving the marked axes per level (ceil), starting with ``shape``."""
    shapes = [tuple(shape)]
    for _ in range(n_levels - 1):
        prev = shapes[-1]
        shapes.append(tuple(-(-s // 2) if sp else s for s, sp in zip(prev, spatial, strict=True)))
    return shapes
