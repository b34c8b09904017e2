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

Block sizes and halos are planned in :mod:`zarrstain.planner` (re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import dask
import dask.array as da
import numpy as np
import torch

from .errors import ParameterError
from .models.cache import (
    ModelHandle,
    forward_lock,
    match_worker_threads,
    placed_module,
    resolve_device,
)
from .models.model import Model
from .planner import TilePlan, auto_halo, bytes_per_voxel, default_block_memory, plan_tiles
from .progress import PREDICT_PREFIX, block_done

__all__ = [
    "PRECISIONS",
    "TilePlan",
    "auto_halo",
    "bytes_per_voxel",
    "default_block_memory",
    "plan_tiles",
    "predict_whole",
    "run_tiled",
]

logger = logging.getLogger(__name__)

# "float32" is IEEE float32 everywhere; "tf32" lets CUDA convolutions use TensorFloat-32
# (float32 storage, 10-bit mantissa products: faster on Ampere and newer, ~1e-3 relative error)
PRECISIONS = {
    "float32": None,
    "tf32": None,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


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


def _forward(
    x: np.ndarray, handle: ModelHandle, spatial_dims: int, device: str, precision: str, batch: int
) -> np.ndarray:
    """Run the model on (t, c, z, y, x), as 3D volumes or as (y, x) planes, in batches."""
    dev = resolve_device(device)
    match_worker_threads()
    module = placed_module(handle, dev)
    t, c, z, y, xx = x.shape
    items = x if spatial_dims == 3 else x.transpose(0, 2, 1, 3, 4).reshape(t * z, c, y, xx)
    amp = PRECISIONS[precision]
    outs = []
    with forward_lock(dev), torch.inference_mode(), _tf32(dev, precision == "tf32"):
        for i in range(0, items.shape[0], batch or items.shape[0]):
            tensor = torch.from_numpy(np.ascontiguousarray(items[i : i + (batch or len(items))]))
            tensor = tensor.to(dev, dtype=torch.float32)
            ctx = torch.autocast(dev.type, dtype=amp) if amp is not None else nullcontext()
            with ctx:
                result = module(tensor)
            outs.append(result.float().cpu().numpy())
    out = np.concatenate(outs)
    if spatial_dims == 2:
        out = out.reshape(t, z, -1, y, xx).transpose(0, 2, 1, 3, 4)
    return out


def _block(
    block: np.ndarray,
    *,
    handle: ModelHandle,
    spatial_dims: int,
    halo: tuple[int, int, int],
    device: str,
    precision: str,
    batch: int,
    block_info: dict | None = None,
) -> np.ndarray:
    info = block_info[None]
    loc, num = info["chunk-location"], info["num-chunks"]
    out = _forward(block, handle, spatial_dims, device, precision, batch)
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
) -> da.Array:
    """The model's prediction for a normalized float32 (t, c, z, y, x) dask array, lazily.

    Returns a (t, c_out, z, y, x) float32 dask array whose chunks are the plan's block cores
    (cropped to the data's shape).
    """
    if precision not in PRECISIONS:
        raise ParameterError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    padded = da.pad(data, _pad_width(plan), mode="reflect") if plan.padded != plan.shape else data
    tc, zc, yc, xc = plan.chunks
    padded = padded.rechunk((tc, -1, zc, yc, xc))
    # dask.distributed runs tasks annotated with resources only on workers that have them
    annotate = dask.annotate(resources=resources) if resources else nullcontext()
    with annotate:
        out = _map_model(padded, model, plan, device, precision, batch_size)
    z, y, x = plan.shape
    return out[:, :, :z, :y, :x]


def _map_model(
    padded: da.Array,
    model: Model,
    plan: TilePlan,
    device: str,
    precision: str,
    batch_size: int | None,
) -> da.Array:
    tc, zc, yc, xc = plan.chunks
    n_out = len(model.output_labels)
    depth = {0: 0, 1: 0, 2: plan.halo[0], 3: plan.halo[1], 4: plan.halo[2]}
    return da.map_overlap(
        _block,
        padded,
        depth=depth,
        boundary="none",
        trim=False,
        chunks=(tc, (n_out,), zc, yc, xc),
        dtype=np.float32,
        meta=np.empty((0, 0, 0, 0, 0), np.float32),
        name=PREDICT_PREFIX
        + dask.base.tokenize(padded, model.content_hash, plan, device, precision),
        handle=ModelHandle(model),
        spatial_dims=model.spatial_dims,
        halo=plan.halo,
        device=device,
        precision=precision,
        batch=batch_size or 0,
    )


def predict_whole(
    data: np.ndarray, model: Model, *, device: str = "cpu", precision: str = "float32"
) -> np.ndarray:
    """One forward pass over a whole normalized (t, c, z, y, x) volume: the reference of exact mode.

    Pads to the divisor exactly as :func:`run_tiled` does, runs each time point (3D) or plane
    (2D) in one piece, and crops back.
    """
    plan = plan_tiles((data.shape[0], *data.shape[2:]), model, halo=0)
    padded = np.pad(np.asarray(data, np.float32), _pad_width(plan), mode="reflect")
    out = _forward(padded, ModelHandle(model), model.spatial_dims, device, precision, 1)
    z, y, x = plan.shape
    return out[:, :, :z, :y, :x]
