"""Random numbers as a pure function of position: the same voxel draws the same number in any block.

Stochastic models (diffusion samplers) and samplers of pixels (calibration) need random numbers
that do not depend on how a volume is cut into blocks. ``dask.array.random`` draws per chunk, so
its numbers change with the chunking; here every number is a hash of a **key** (seed, sample,
step, channel, a purpose) and the voxel's **global index** in the whole (t, z, y, x) volume:
counter-based generation, as Philox and Threefry do, with SplitMix64's finalizer as the
counter-to-bits function (it passes BigCrush as a hash of consecutive integers). Any region of
any chunking then equals, bit for bit, the same region of the whole field's numbers.

Normal numbers come from two independent uniforms per voxel by the Box–Muller transform.
"""

from __future__ import annotations

from collections.abc import Sequence

import dask.array as da
import numpy as np

__all__ = ["key", "normal", "normal_array", "uniform"]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def key(*parts: int) -> int:
    """A 64-bit stream key from small integers (seed, sample, step, channel, purpose...).

    Parts are mixed one at a time through the finalizer, so (1, 2) and (2, 1) differ and no
    two tuples of the same length that differ in any part collide in practice.
    """
    k = np.uint64(0x243F6A8885A308D3)  # π's fraction: any fixed start
    with np.errstate(over="ignore"):
        for part in parts:
            k = _mix(k ^ (np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF) + _GOLDEN))
    return int(k)


def _mix(z: np.ndarray | np.uint64) -> np.ndarray:
    """SplitMix64's finalizer: a bijection of 64-bit integers with full avalanche."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        return z ^ (z >> np.uint64(31))


def _index(origin: Sequence[int], shape: Sequence[int], volume: Sequence[int]) -> np.ndarray:
    """Global linear index (uint64) of each voxel of the block at ``origin`` in ``volume``."""
    grids = np.meshgrid(
        *(np.arange(o, o + n, dtype=np.uint64) for o, n in zip(origin, shape, strict=True)),
        indexing="ij",
        sparse=True,
    )
    strides = np.cumprod([1, *volume[::-1]][:-1])[::-1].astype(np.uint64)
    index = np.zeros(tuple(shape), dtype=np.uint64)
    for g, s in zip(grids, strides, strict=True):
        index = index + g * s
    return index


def uniform(
    stream: int, origin: Sequence[int], shape: Sequence[int], volume: Sequence[int]
) -> np.ndarray:
    """Uniform float64 in [0, 1) per voxel of a block, from its global index and ``stream``.

    Parameters
    ----------
    stream
        A key from :func:`key`.
    origin, shape
        The block: its first voxel's global index per axis, and its size.
    volume
        The whole volume's size per axis (fixes the global index of every voxel).
    """
    with np.errstate(over="ignore"):
        bits = _mix(_index(origin, shape, volume) * _GOLDEN + np.uint64(stream))
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


def normal(
    stream: int, origin: Sequence[int], shape: Sequence[int], volume: Sequence[int]
) -> np.ndarray:
    """Standard normal float32 per voxel (Box–Muller on two uniforms of derived streams)."""
    u1 = uniform(key(stream, 1), origin, shape, volume)
    u2 = uniform(key(stream, 2), origin, shape, volume)
    radius = np.sqrt(-2.0 * np.log1p(-u1))  # 1 - u1 in (0, 1]: log is finite
    return (radius * np.cos(2.0 * np.pi * u2)).astype(np.float32)


def normal_array(
    stream: int, shape: Sequence[int], chunks: Sequence[int] | tuple | str = "auto"
) -> da.Array:
    """A lazy standard normal array whose values do not depend on ``chunks``."""
    template = da.empty(tuple(shape), chunks=chunks, dtype=np.float32)
    volume = tuple(int(s) for s in shape)

    def block(x: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[None]["array-location"]
        return normal(stream, [lo for lo, _ in loc], x.shape, volume)

    return template.map_blocks(
        block, dtype=np.float32, meta=np.empty((0,) * len(shape), np.float32)
    )
