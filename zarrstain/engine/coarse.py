"""Coarse tasks for store-to-store prediction: a field's statistics, then one task per block.

``PredictionPlan.run`` predicts whole plates. Built lazily (``predict`` → ``write_channels``),
one field costs dozens of graph tasks per store chunk (read, normalize, pad, overlap, predict,
crop, cast, rechunk, store, and again per pyramid level): on a plate of small fields that
orchestration, not the model, dominates. Here (DESIGN decision 3) a field's statistics are
one task (its inputs read once and reduced in memory), and each model block is one task: it
reads its inputs with the halo straight from the store (one zarr call), normalizes, predicts
and hands the block to :mod:`zarrstain.io.blockwrite`, which casts it and writes it with every
pyramid level it covers.

The values are the lazy route's, voxel for voxel (the same tiling, padding, block context and
casts; ``tests/engine/test_coarse.py``), except that a field's means and standard deviations are
reduced in one piece rather than per chunk (float64 rounding). Multi-pass models (samplers)
keep the lazy route, as do fields whose inputs exceed :data:`FIELD_BYTES` (statistics only).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from zarrstain.engine.normalize import normalization_stats, safe_scale, stats_in_memory
from zarrstain.engine.planner import TilePlan
from zarrstain.engine.predict import normalization_args
from zarrstain.engine.tiling import Forward
from zarrstain.io.blockwrite import compute, gather
from zarrstain.io.integrity import ChunkReader
from zarrstain.io.metadata import DIMS
from zarrstain.progress import PREDICT_PREFIX, block_done

if TYPE_CHECKING:
    from zarrstain.engine.pipeline import PredictionPlan
    from zarrstain.engine.scene_plan import ScenePlan

__all__ = [
    "FIELD_BYTES",
    "FieldInputs",
    "StoreBlocks",
    "block_source",
    "statistics",
]

logger = logging.getLogger(__name__)

#: a field's inputs (its selected time points and channels, as stored) up to this size are
#: read by one task for their statistics; larger ones are reduced chunk by chunk with dask
FIELD_BYTES = 512 * 2**20

#: inputs the statistics task read, kept for the field's (one) block task in this process:
#: streamed in batches, a field is then read once (a task elsewhere reads it again)
CACHE_BYTES = 256 * 2**20


class _InputCache:
    """Whole fields' inputs by field, oldest dropped first beyond :data:`CACHE_BYTES`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: collections.OrderedDict[Any, np.ndarray] = collections.OrderedDict()
        self._bytes = 0

    def put(self, key: Any, values: np.ndarray) -> None:
        if values.nbytes > CACHE_BYTES // 4:
            return
        with self._lock:
            self._items[key] = values
            self._bytes += values.nbytes
            while self._bytes > CACHE_BYTES:
                self._bytes -= self._items.popitem(last=False)[1].nbytes

    def take(self, key: Any) -> np.ndarray | None:
        with self._lock:
            values = self._items.pop(key, None)
            if values is not None:
                self._bytes -= values.nbytes
            return values


_CACHE = _InputCache()

#: what ``predict`` takes beyond ``prepare``'s parameters


@dataclass(frozen=True)
class FieldInputs:
    """The input channels of one field, read straight from its full-resolution array.

    Attributes
    ----------
    reader
        The array (unreadable chunks raise :class:`~zarrstain.errors.DataError`).
    dims
        The array's axes (t, c, z, y, x, those present, in that order).
    channels
        The inputs' channel indices in the array.
    t0
        The first time point predicted.
    shape
        (t, z, y, x) of the time points predicted.
    """

    reader: ChunkReader
    dims: tuple[str, ...]
    channels: tuple[int, ...]
    t0: int
    shape: tuple[int, int, int, int]

    @property
    def nbytes(self) -> int:
        """Bytes of every input voxel predicted, as stored."""
        return int(np.prod(self.shape)) * len(self.channels) * self.reader.dtype.itemsize

    def read(self, t: slice, zyx: Sequence[slice]) -> np.ndarray:
        """The inputs at time points ``t`` (of those predicted) and ``zyx``, as (t, c, z, y, x)."""
        first = self.channels[0]
        contiguous = self.channels == tuple(range(first, first + len(self.channels)))
        index: dict[str, Any] = {
            "t": slice(t.start + self.t0, t.stop + self.t0),
            "c": slice(first, first + len(self.channels)) if contiguous else list(self.channels),
            **dict(zip("zyx", zyx, strict=True)),
        }
        raw = self.reader.read(tuple(index[d] for d in self.dims), orthogonal=not contiguous)
        return np.expand_dims(raw, tuple(i for i, d in enumerate(DIMS) if d not in self.dims))


def field_inputs(
    plan: PredictionPlan, scene: str, source: xr.DataArray, chosen: Sequence[str]
) -> FieldInputs:
    """The inputs ``chosen`` of ``scene`` (``source``: as opened) in the store the plan read."""
    src, attrs = plan.opened, source.attrs
    assert src is not None  # plan_scene checked
    gpath = src.layout.scenes[scene]
    level = src.meta(gpath).levels[0]
    arr = level.array if level.array is not None else src.group(gpath)[level.path]
    labels = [str(c) for c in source.coords["c"].values]
    time = plan.times.get(scene)
    sizes = source.sizes
    return FieldInputs(
        ChunkReader(arr, src.where_of(gpath)),
        tuple(attrs["axes"]),
        tuple(labels.index(lab) for lab in chosen),
        time.start if time is not None else 0,
        (sizes["t"], sizes["z"], sizes["y"], sizes["x"]),
    )


def _field_statistics(
    inputs: FieldInputs, method: str | None, args: dict[str, Any], scene: str, keep: Any = None
) -> tuple[tuple[np.ndarray, np.ndarray] | None, np.ndarray | None]:
    """One task: a field's (offset, scale) per (t, c) and its NaN/inf count per channel.

    ``keep``: the inputs stay under this key in this process's cache for the field's one
    block task (:attr:`StoreBlocks.cached`).
    """
    t, z, y, x = inputs.shape
    values = inputs.read(slice(0, t), (slice(0, z), slice(0, y), slice(0, x)))
    if keep is not None:
        _CACHE.put(keep, values)
    stats = stats_in_memory(values, method, **args, scene=scene) if method else None
    bad = (~np.isfinite(values)).sum(axis=(0, 2, 3, 4)) if values.dtype.kind in "fc" else None
    return stats, bad


def nonfinite(inputs: xr.DataArray) -> Any:
    """Per input channel, the number of NaN/inf voxels (lazy); nothing to count for integers."""
    if inputs.dtype.kind not in "fc":
        return None
    return (~da.isfinite(inputs.data)).sum(axis=(0, 2, 3, 4))


def statistics(
    plan: PredictionPlan, todo: list[ScenePlan]
) -> tuple[dict[str, xr.Dataset | None], dict[str, Any]]:
    """Every scene's normalization statistics (computed) and NaN/inf counts per input channel.

    One task per field whose inputs fit :data:`FIELD_BYTES`; dask reductions for the others.
    """
    method = plan.method
    args = normalization_args(plan.model, method) if method else {}
    calls, lazy_stats, lazy_checks = {}, {}, {}
    token = uuid.uuid4().hex
    for s in todo:
        inputs = s.blocks.inputs if s.blocks is not None else None
        if inputs is not None and inputs.nbytes <= FIELD_BYTES:
            # a one-block field's inputs, read here, are kept for its block (this pass only)
            keep = (token, s.scene) if s.blocks.single else None  # type: ignore[union-attr]
            s.blocks = dataclasses.replace(s.blocks, cached=keep)  # type: ignore[arg-type]
            calls[s.scene] = functools.partial(
                _field_statistics, inputs, method, args, s.scene, keep
            )
        else:  # reductions chunk by chunk (statistics as predict computes them)
            if method is not None and s.blocks is not None:
                s.stats = normalization_stats(s.source.sel(c=s.inputs), method, **args)
            lazy_stats[s.scene] = s.stats
            lazy_checks[s.scene] = nonfinite(s.source.sel(c=s.inputs))
    if method is not None:
        logger.info("computing %s statistics of %d scene(s)", method, len(todo))
    tasks = gather("zarrstain-statistics-" + uuid.uuid4().hex, list(calls.values()), None)
    results, computed, bad = compute(tasks, lazy_stats, lazy_checks)
    fields = dict(zip(calls, results, strict=True))
    for s in todo:
        if s.scene in fields:
            pair, bad[s.scene] = fields[s.scene]
            if pair is not None and s.stats is not None:
                offset, scale = pair
                computed[s.scene] = s.stats.copy(data={"offset": offset, "scale": scale})
    return computed, bad


@dataclass(frozen=True)
class StoreBlocks:
    """A :class:`~zarrstain.io.blockwrite.BlockSource`: a field's predictions, block by block.

    Computes exactly what :func:`zarrstain.engine.tiling.run_tiled` computes for the same block
    of the normalized, padded volume (see that module for why tiles then equal the whole),
    followed by ``predict``'s map to the target's units and the pipeline's rescaling.
    """

    inputs: FieldInputs
    plan: TilePlan
    method: str | None  # normalization
    norm_args: dict[str, Any]
    norm: tuple[np.ndarray, np.ndarray] | None  # offset and safe scale per (t, c); None: own
    clip: bool
    forward: Forward  # the model's one pass
    affine: tuple[np.ndarray, np.ndarray] | None  # to the target's units, per output channel
    rescale: tuple[float, float] | None  # (offset, scale) onto an integer dtype
    resources: dict[str, float] | None = None
    cached: Any = None  # the key of its inputs in the process's cache (one-block fields)

    @property
    def single(self) -> bool:
        """Whether one block (reading the whole field) computes it all."""
        return all(len(c) == 1 for c in self.grid)

    @functools.cached_property  # (asked for per block and region: computed once)
    def grid(self) -> tuple[tuple[int, ...], ...]:
        """Block sizes along (t, z, y, x) of the predictions (the last cropped to the data)."""
        out = [tuple(self.plan.chunks[0])]
        for cores, n in zip(self.plan.chunks[1:], self.plan.shape, strict=True):
            ends = np.minimum(np.cumsum(cores), n)
            out.append(tuple(int(v) for v in np.diff(ends, prepend=0) if v > 0))
        return tuple(out)

    def block(self, index: tuple[int, int, int, int]) -> np.ndarray:
        """The float32 predictions (t, c, z, y, x) of block ``index``."""
        plan, (it, *spatial) = self.plan, index
        t_lo = int(sum(plan.chunks[0][:it]))
        t = slice(t_lo, t_lo + plan.chunks[0][it])
        reads, takes, origin, crops = [], [], [], []
        for a, i in enumerate(spatial):
            cores, n, h = plan.chunks[a + 1], plan.shape[a], plan.halo[a]
            start = int(sum(cores[:i]))
            lo = start - (h if i > 0 else 0)
            hi = start + cores[i] + (h if i < len(cores) - 1 else 0)
            # padded positions → stored ones (numpy's "reflect", as run_tiled pads)
            where = np.pad(np.arange(n), (0, plan.padded[a] - n), mode="reflect")[lo:hi]
            first = int(where.min())
            reads.append(slice(first, int(where.max()) + 1))
            takes.append(where - first)
            origin.append(lo)
            crops.append(slice(start - lo, min(start + cores[i], n) - lo))
        x = None
        if self.cached is not None:  # the statistics task may have read it already
            x = _CACHE.take(self.cached)
        if x is None:
            x = self.inputs.read(t, reads)
        for a, take in enumerate(takes):
            if not np.array_equal(take, np.arange(x.shape[a + 2])):
                x = np.take(x, take, axis=a + 2)
        norm = self.norm
        if norm is None and self.method is not None:  # not given: the field's own
            norm = _own_statistics(self.inputs, self.method, tuple(self.norm_args.items()))
        if norm is not None:
            offset, scale = (v[t, :, None, None, None] for v in norm)
            x = ((x.astype(np.float64) - offset) / scale).astype(np.float32)
            if self.clip:
                x = np.clip(x, 0.0, 1.0)
        x = x.astype(np.float32, copy=False)
        out = self.forward(x, (t_lo, *origin), (sum(plan.chunks[0]), *plan.padded))
        block_done()
        out = out[(slice(None), slice(None), *crops)]
        if self.affine is not None:
            offset, scale = self.affine
            out = out * scale[None, :, None, None, None] + offset[None, :, None, None, None]
        if self.rescale is not None:
            offset, scale = self.rescale
            out = ((out - offset) / scale).astype(np.float32)
        return out


@functools.lru_cache(maxsize=16)
def _own_statistics(
    inputs: FieldInputs, method: str, args: tuple[tuple[str, Any], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A field's (offset, safe scale), computed once per process for all its blocks (only when
    a planned prediction is computed before ``run`` supplied the statistics)."""
    pair, _ = _field_statistics(inputs, method, dict(args), "")
    return pair[0], safe_scale(pair[1])  # type: ignore[index]


def _compute(source: StoreBlocks, index: tuple[int, int, int, int]) -> np.ndarray:
    return source.block(index)


def as_dask(source: StoreBlocks, channels: int, name: str) -> da.Array:
    """The predictions as a dask array with one task per block (for levels written lazily)."""
    grid = source.grid
    dsk = {
        (name, i, 0, j, k, m): (_compute, source, (i, j, k, m))
        for i, j, k, m in np.ndindex(*(len(c) for c in grid))
    }
    # model tasks: on a cluster they go where the resources are (GPU workers)
    annotations = {"resources": source.resources} if source.resources else None
    graph = HighLevelGraph({name: MaterializedLayer(dsk, annotations=annotations)}, {name: set()})
    chunks = (grid[0], (channels,), *grid[1:])
    return da.Array(graph, name, chunks, dtype=np.float32)


def block_source(
    plan: PredictionPlan, scene: ScenePlan, stats: xr.Dataset | None
) -> tuple[xr.DataArray, StoreBlocks] | None:
    """``scene``'s predictions as written (one task per block) with these statistics.

    None when the scene takes the lazy route (see :func:`zarrstain.engine.coarse_plan.plan_scene`).
    """
    if scene.blocks is None:
        return None
    norm = None
    if stats is not None:
        norm = (np.asarray(stats["offset"].values), safe_scale(np.asarray(stats["scale"].values)))
    source = dataclasses.replace(scene.blocks, norm=norm, resources=plan.options.resources)
    pred = scene.prediction
    record = dict(pred.attrs["zarrstain"])
    if stats is not None:  # the statistics used, as the lazy route records them
        record["normalization"] = {
            **record["normalization"],
            "offset": stats["offset"].data,
            "scale": stats["scale"].data,
        }
    name = PREDICT_PREFIX + "blocks-" + tokenize(record.get("fingerprint"), scene.scene, norm)
    out = pred.copy(deep=False, data=as_dask(source, pred.sizes["c"], name))
    out.attrs = {**pred.attrs, "zarrstain": record}
    return out, source
