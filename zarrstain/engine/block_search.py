"""The block-size search of tiled prediction: regular cores along an axis, and the (y, x)
block shape that computes the fewest voxels within a memory budget (:func:`planar_blocks`).

Pure arithmetic on sizes, halos and budgets; :mod:`zarrstain.engine.planner` decides what to ask.
"""

from __future__ import annotations

import functools
import itertools
import math

__all__ = ["axis_chunks", "extent", "planar_blocks", "round_up"]


def round_up(n: int, k: int) -> int:
    """``n`` rounded up to a multiple of ``k``."""
    return -(-n // k) * k


def axis_chunks(size: int, block: int, halo: int) -> tuple[int, ...]:
    """Regular blocks; a last block smaller than the halo is merged into its neighbour."""
    if block >= size:
        return (size,)
    chunks = [block] * (size // block)
    rest = size - sum(chunks)
    if rest:
        if rest < halo:
            chunks[-1] += rest
        else:
            chunks.append(rest)
    return tuple(chunks)


def extent(cores: tuple[int, ...], halo: int) -> int:
    """The largest block along an axis with its overlap (edge blocks overlap on one side)."""
    n = len(cores)
    return max(c + halo * ((i > 0) + (i < n - 1)) for i, c in enumerate(cores))


def _cost(size: int, cores: tuple[int, ...], halo: int) -> float:
    """Voxels computed along an axis, over its size."""
    return (size + 2 * halo * (len(cores) - 1)) / size


def _candidates(size: int, halo: int, unit: int) -> list[tuple[int, int, float]]:
    """(block, extent, cost) for every number of near-equal blocks of multiples of ``unit``."""
    out: dict[int, tuple[int, int, float]] = {}
    for n in range(1, max(1, size // unit) + 1):
        b = max(round_up(-(-size // n), unit), round_up(halo, unit) if n > 1 else unit)
        if b not in out:  # n blocks of at most b: only ~2√(size/unit) distinct sizes
            cores = axis_chunks(size, b, halo)
            out[b] = (b, extent(cores, halo), _cost(size, cores, halo))
    return list(out.values())


def planar_blocks(
    sizes: list[int], halos: list[int], depth: int, units: list[int], div: int, budget: int,
    bpv: int,
) -> list[int]:  # fmt: skip
    """Block cores along the planar axes (y, x) that compute the fewest voxels within budget.

    Every combination of block counts per axis is weighed: halo overhead against block size,
    so a long strip can beat square blocks. Blocks of whole store chunks (``units``) avoid
    rechunking before writing; they are used unless they cost more than 10% extra compute over
    plain multiples of the divisor. Ties go to fewer, then squarer, blocks.

    Remembered per arguments: the fields of a plate share them, and the search costs ~5 ms.
    """
    found = _planar_blocks(tuple(sizes), tuple(halos), depth, tuple(units), div, budget, bpv)
    return list(found)


@functools.lru_cache(maxsize=256)
def _planar_blocks(
    sizes: tuple[int, ...], halos: tuple[int, ...], depth: int, units: tuple[int, ...],
    div: int, budget: int, bpv: int,
) -> tuple[int, ...]:  # fmt: skip

    def best(axis_units: list[int]) -> tuple[float, list[int]] | None:
        options = [_candidates(s, h, u) for s, h, u in zip(sizes, halos, axis_units, strict=True)]
        found = None
        for combo in itertools.product(*options):
            if depth * math.prod(ext for _, ext, _ in combo) * bpv > budget:
                continue
            cost = math.prod(c for _, _, c in combo)
            blocks = [b for b, _, _ in combo]
            key = (round(cost, 9), -math.prod(blocks), max(blocks) - min(blocks))
            if found is None or key < found[0]:
                found = (key, blocks)
        return (found[0][0], found[1]) if found else None

    free = best([div] * len(sizes))
    aligned = best(list(units)) if list(units) != [div] * len(sizes) else None
    if aligned is not None and free is not None and aligned[0] <= 1.1 * free[0]:
        return tuple(aligned[1])
    if free is not None:
        return tuple(free[1])
    # nothing fits: the smallest blocks the halos allow (plan_tiles warns)
    return tuple(max(div, round_up(h, div)) for h in halos)
