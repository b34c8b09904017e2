"""Run a model blockwise over a (t, c, z, y, x) dask array with ``map_overlap``.

Exactness (``halo="exact"``) rests on three rules:

1. the volume is padded once, at its far end, to a multiple of the model's divisor (mirroring:
   ``numpy.pad(mode="reflect")``); the whole-volume forward (:func:`predict_whole`) pads
   identically, and the padding is cropped away afterwards;
2. block cores start at multiples of the divisor and are multiples of it, so every block sees
   the strided down/up-sampling grid exactly where the whole volume does;
3. blocks overlap by the receptive radius rounded up to the divisor, with no overlap at the
   outer border (``boundary="none"``), where a block sees the same zero padding of the
   convolutions as the whole volume.

Every output voxel then depends on the same input voxels through the same operations as in
one forward pass over the whole volume. Smaller halos trade accuracy for time (``halo="auto"``
and integer halos; measured in ``benchmarks/tiling.py``).

Block sizes and halos are planned in :mod:`zarrstain.engine.planner` (re-exported here).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import dask
import dask.array as da
import numpy as np
import torch

from zarrstain.engine.options import PRECISION_NAMES, TTA, check_precision
from zarrstain.engine.planner import (
    TilePlan,
    auto_halo,
    bytes_per_voxel,
    default_block_memory,
    plan_tiles,
)
from zarrstain.io.scratch import STORED, persist_pass, stored_pass
from zarrstain.models.architecture import Architecture, BlockContext
from zarrstain.models.cache import (
    ModelHandle,
    forward_lock,
    match_worker_threads,
    placed_module,
    resolve_device,
)
from zarrstain.models.heads import OutputHead
from zarrstain.models.model import Model, run_token
from zarrstain.progress import PREDICT_PREFIX, block_done

__all__ = [
    "PRECISIONS",
    "Forward",
    "TilePlan",
    "auto_halo",
    "block_options",
    "bytes_per_voxel",
    "default_block_memory",
    "plan_tiles",
    "predict_whole",
    "run_tiled",
]

logger = logging.getLogger(__name__)

# "float32" is IEEE float32 everywhere; "tf32" lets CUDA convolutions use TensorFloat-32
# (float32 storage, 10-bit mantissa products: faster on Ampere and newer, ~1e-3 relative error)
# (the names are engine.options.PRECISION_NAMES; here each one's autocast dtype, or None)
_AUTOCAST = {"bfloat16": torch.bfloat16, "float16": torch.float16}
PRECISIONS = {name: _AUTOCAST.get(name) for name in PRECISION_NAMES}


@contextmanager
def _tf32(device: torch.device, allowed: bool) -> Iterator[None]:
    """TensorFloat-32 on or off for CUDA convolutions and matmuls within the block.

    torch allows it for cuDNN convolutions by default, which would make float32 predictions on a
    GPU differ from the CPU's in the third decimal; zarrstain's float32 means IEEE float32. The
    flags are process-wide; :func:`forward_lock` serialises forwards on one device.
    """
    if device.type != "cuda":
        yield
        return
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved = cudnn.allow_tf32, matmul.allow_tf32
    cudnn.allow_tf32 = matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32 = saved


def _pad_width(plan: TilePlan) -> list[tuple[int, int]]:
    return [(0, 0), (0, 0)] + [(0, p - s) for s, p in zip(plan.shape, plan.padded, strict=True)]


def _origins(
    origin: tuple[int, int, int, int], shape: tuple[int, ...], spatial_dims: int
) -> list[tuple[int, int, int, int]]:
    """Per batch item, the global (t, z, y, x) of its first voxel (see ``BlockContext``)."""
    t0, z0, y0, x0 = origin
    t, _, z = shape[:3]
    if spatial_dims == 3:
        return [(t0 + i, z0, y0, x0) for i in range(t)]
    return [(t0 + i, z0 + j, y0, x0) for i in range(t) for j in range(z)]


@dataclass(frozen=True)
class Forward:
    """How one pass of a model runs on blocks: what every block task of the pass carries.

    Attributes
    ----------
    handle, spec, spatial_dims
        The model (a small handle tasks pickle), its architecture and its spatial dims.
    device, precision, batch
        Where and in what precision it runs, and items per forward (0: all in a block).
    seed, step
        The run's seed and the pass (both reach the architecture's block context).
    head
        On the last pass, the output head that turns raw outputs into written channels.
    options
        The model's run options as tasks carry them (:func:`block_options`).
    """

    handle: ModelHandle
    spec: Architecture
    spatial_dims: int
    device: str = "cpu"
    precision: str = "float32"
    batch: int = 0
    seed: int = 0
    step: int = 0
    head: OutputHead | None = None
    options: dict[str, Any] = field(default_factory=dict)
    tta: str = "none"  # test-time augmentation (TTA): the mean over these xy transforms

    @classmethod
    def of(cls, model: Model, *, step: int = 0, last: bool = True, **run: Any) -> Forward:
        """The forward of ``model``'s pass ``step`` (``run``: device, precision, batch, seed,
        tta)."""
        head = model.head if last else None
        options = block_options(model.run_options)
        return cls(ModelHandle(model), model.spec, model.spatial_dims, step=step, head=head,
                   options=options, **run)  # fmt: skip

    def _run(self, module: Any, tensor: torch.Tensor, context: BlockContext) -> torch.Tensor:
        """The pass (and the head's reduction) on one batch, averaged over the TTA transforms:
        each transformed back before the mean, so every output voxel stays where it was."""
        total = None
        for flip, k in TTA[self.tta]:
            moved = _dihedral(tensor, flip, k)
            result = self.spec.run(module, moved, context)
            if self.head is not None:  # per voxel, in float32 whatever the precision
                result = self.head.reduce(result.float())
            result = _undo_dihedral(result.float(), flip, k)
            total = result if total is None else total + result
        return total / len(TTA[self.tta])

    def __call__(
        self,
        x: np.ndarray,
        origin: tuple[int, int, int, int] = (0, 0, 0, 0),
        volume: tuple[int, int, int, int] | None = None,
    ) -> np.ndarray:
        """Run the pass on (t, c, z, y, x), as 3D volumes or (y, x) planes, in batches.

        ``origin`` is the global (t, z, y, x) of the first voxel in the padded volume
        ``volume`` (what the architecture's block context reports).
        """
        dev = resolve_device(self.device)
        match_worker_threads()
        module = placed_module(self.handle, dev)
        t, c, z, y, xx = x.shape
        flat = self.spatial_dims == 3
        items = x if flat else x.transpose(0, 2, 1, 3, 4).reshape(t * z, c, y, xx)
        origins = _origins(origin, x.shape, self.spatial_dims)
        volume = volume or (t, z, y, xx)
        amp = PRECISIONS[self.precision]
        size = self.batch or items.shape[0]
        outs = []
        with forward_lock(dev), torch.inference_mode(), _tf32(dev, self.precision == "tf32"):
            for i in range(0, items.shape[0], size):
                tensor = torch.from_numpy(np.ascontiguousarray(items[i : i + size]))
                tensor = tensor.to(dev, dtype=torch.float32)
                context = BlockContext(
                    tuple(origins[i : i + size]), volume, self.seed, self.step, dev, self.options
                )
                ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else nullcontext()
                with ctx:
                    result = self._run(module, tensor, context)
                outs.append(result.float().cpu().numpy())
        out = np.concatenate(outs)
        if not flat:
            out = out.reshape(t, z, -1, y, xx).transpose(0, 2, 1, 3, 4)
        return out


def _dihedral(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """Flip along x, then rotate by k × 90° in the (y, x) plane (the last two axes)."""
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


def _undo_dihedral(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """The inverse of :func:`_dihedral`."""
    if k:
        x = torch.rot90(x, -k, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if flip else x


def _block(
    block: np.ndarray,
    *,
    forward: Forward,
    halo: tuple[int, int, int],
    starts: tuple[tuple[int, ...], ...],
    volume: tuple[int, int, int, int],
    block_info: dict | None = None,
) -> np.ndarray:
    info = block_info[None]
    loc, num = info["chunk-location"], info["num-chunks"]
    # the block's first voxel in the padded volume: its core's start less the overlap before it
    lows = [h if loc[axis] > 0 else 0 for axis, h in enumerate(halo, start=2)]
    origin = (
        starts[0][loc[0]],
        *(starts[i][loc[i + 1]] - lows[i - 1] for i in (1, 2, 3)),
    )
    out = forward(block, origin, volume)
    block_done()
    index: list[slice] = [slice(None), slice(None)]
    for axis, h in enumerate(halo, start=2):
        lo = h if loc[axis] > 0 else 0
        hi = h if loc[axis] < num[axis] - 1 else 0
        index.append(slice(lo, out.shape[axis] - hi))
    return out[tuple(index)]


def run_tiled(
    data: da.Array,
    model: Model,
    plan: TilePlan,
    *,
    device: str = "auto",
    precision: str = "float32",
    batch_size: int | None = None,
    resources: dict[str, float] | None = None,
    seed: int = 0,
    scratch: str | os.PathLike | None = None,
    tta: str = "none",
) -> da.Array:
    """The model's prediction for a normalized float32 (t, c, z, y, x) dask array, lazily.

    Multi-pass models run one ``map_overlap`` per pass, each with its own halo
    (``plan.halos``), over the padded volume; the padding is cropped after the last.

    Parameters
    ----------
    tta
        Test-time augmentation: ``"none"``, ``"flips"`` (the mean over the 4 flips of the xy
        plane) or ``"d4"`` (the 8 flips and 90° rotations); exact tiling is kept (the blocks
        and the padded volume are multiples of the divisor, so a flipped block is a block of
        the flipped volume).
    seed, scratch
        The run's seed (passed to the architecture in each block's context), and a folder
        (a zarr store) where the intermediate passes of a multi-pass model are computed and
        kept: then this call computes them (bounded memory: one pass at a time, or the
        architecture's :meth:`~zarrstain.models.Architecture.stored_every` passes chained),
        and a call after an interruption resumes from the last stored pass. Without a
        scratch store the passes chain lazily in one graph.

    Returns
    -------
    dask.array.Array
        (t, c_out, z, y, x) float32 whose chunks are the plan's block cores (cropped to the
        data's shape).
    """
    check_precision(precision)
    padded = da.pad(data, _pad_width(plan), mode="reflect") if plan.padded != plan.shape else data
    tc, zc, yc, xc = plan.chunks
    out = padded.rechunk((tc, -1, zc, yc, xc))
    last = len(plan.halos) - 1
    n_in, n_out = int(data.shape[1]), len(model.output_labels)
    every = model.spec.stored_every(model.config)  # passes chained between stored states
    stored = {s for s in range(last) if (s + 1) % every == 0} if scratch is not None else set()
    channels = [
        n_out if s == last else model.spec.pass_channels(model.config, s, n_in, n_out)
        for s in range(last + 1)
    ]
    # every pass's name, known before anything is computed: an interrupted run resumes after
    # the latest pass the scratch store holds for this very chain
    names, name = [], out.name
    for step in range(last + 1):
        names.append(name := _pass_name(name, model, plan, step, device, precision, seed, tta))
        if step in stored:
            name = STORED + name
    start = 0
    for step in sorted(stored, reverse=True):
        found = stored_pass(scratch, step, names[step], (tc, (channels[step],), zc, yc, xc))
        if found is not None:
            out, start = found, step + 1
            break
    for step in range(start, last + 1):
        # dask.distributed runs tasks annotated with resources only on workers that have them
        annotate = dask.annotate(resources=resources) if resources else nullcontext()
        with annotate:
            forward = Forward.of(model, step=step, last=step == last, device=device,
                                 precision=precision, batch=batch_size or 0, seed=seed,
                                 tta=tta)  # fmt: skip
            out = _map_pass(out, forward, plan, plan.halos[step], channels[step], names[step])
        if step in stored:
            out = persist_pass(out, scratch, step)
    z, y, x = plan.shape
    return out[:, :, :z, :y, :x]


def _pass_name(
    input_name: str,
    model: Model,
    plan: TilePlan,
    step: int,
    device: str,
    precision: str,
    seed: int,
    tta: str = "none",
) -> str:
    """The dask name of one pass's output: a token of its input's name and all it depends on."""
    key = (model.content_hash, plan, device, precision)
    if tta != "none":
        key += (tta,)
    if len(plan.halos) > 1:  # multi-pass: each pass its own graph layer
        key += (step,)
    if model.spec.stochastic:
        key += (seed,)
    options = model.run_options
    if options:
        key += (run_token(options),)
    return PREDICT_PREFIX + dask.base.tokenize(input_name, *key)


def _map_pass(
    arr: da.Array,
    forward: Forward,
    plan: TilePlan,
    halo: tuple[int, int, int],
    channels: int,
    name: str,
) -> da.Array:
    tc, zc, yc, xc = plan.chunks
    depth = {0: 0, 1: 0, 2: halo[0], 3: halo[1], 4: halo[2]}
    starts = tuple(tuple(int(v) for v in np.cumsum((0, *c[:-1]))) for c in plan.chunks)
    return da.map_overlap(
        _block,
        arr,
        depth=depth,
        boundary="none",
        trim=False,
        chunks=(tc, (channels,), zc, yc, xc),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0, 0), np.float32),
        name=name,
        forward=forward,
        halo=halo,
        starts=starts,
        volume=(sum(tc), *plan.padded),
    )


def block_options(options: dict) -> dict:
    """Run options as tasks carry them: models among them as small handles."""
    return {k: ModelHandle(v) if isinstance(v, Model) else v for k, v in options.items()}


def predict_whole(
    data: np.ndarray,
    model: Model,
    *,
    device: str = "cpu",
    precision: str = "float32",
    seed: int = 0,
    tta: str = "none",
) -> np.ndarray:
    """One forward pass over a whole normalized (t, c, z, y, x) volume: the reference of exact mode.

    Pads to the divisor exactly as :func:`run_tiled` does, runs each time point (3D) or plane
    (2D) in one piece, and crops back.
    """
    plan = plan_tiles((data.shape[0], *data.shape[2:]), model, halo=0)
    out = np.pad(np.asarray(data, np.float32), _pad_width(plan), mode="reflect")
    volume = (out.shape[0], *out.shape[2:])
    last = len(plan.halos) - 1
    for step in range(last + 1):
        forward = Forward.of(model, step=step, last=step == last, device=device,
                             precision=precision, batch=1, seed=seed, tta=tta)  # fmt: skip
        out = forward(out, volume=volume)
    z, y, x = plan.shape
    return out[:, :, :z, :y, :x]
