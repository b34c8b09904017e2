"""Block planning for tiled prediction: halo, block sizes and the memory they need.

Block sizes come from a memory budget per block (:func:`default_block_memory`): multiples of
the model's divisor, full Z for 3D models when it fits, and, of every block shape along y and x
that fits, the one computing the fewest voxels (halo overhead weighed against block size, see
:func:`zarrstain.engine.block_search.planar_blocks`), preferring whole multiples of the data's own
chunks (the store's, when the data came from a store) so that every task writes whole zarr
chunks. Non-local models get
one whole field per block. See :mod:`zarrstain.engine.tiling` for why the halo and the divisor make
tiled prediction exact.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import dask
from dask.utils import format_bytes

from zarrstain.engine.block_search import axis_chunks, extent, planar_blocks, round_up
from zarrstain.engine.options import check_block_memory, check_halo
from zarrstain.errors import ParameterError, ShapeMismatchError
from zarrstain.models.model import Model

__all__ = ["TilePlan", "auto_halo", "bytes_per_voxel", "default_block_memory", "plan_tiles"]

logger = logging.getLogger(__name__)

SPATIAL = ("z", "y", "x")
#: halo used by ``halo="auto"``, as a fraction of the exact halo (see ``auto_halo``)
AUTO_FRACTION = 0.7


@dataclass(frozen=True)
class TilePlan:
    """How a volume is cut into blocks.

    Attributes
    ----------
    model_axes
        Axes the model convolves: ``("z", "y", "x")`` or ``("y", "x")``.
    shape, padded
        (z, y, x) of the data, and after padding to the divisor.
    chunks
        Block cores along (t, z, y, x) of the padded volume.
    halo
        Overlap along (z, y, x); 0 where an axis is one block.
    halo_mode
        ``"exact"``, ``"auto"`` or ``"fixed"``.
    divisor, bytes_per_voxel
        Of the model.
    pass_halos
        Per pass of a multi-pass model, its overlap along (z, y, x); ``halo`` is their
        per-axis maximum (what sizes blocks). Empty: one pass with ``halo``.
    exact
        Tiled prediction equals one whole-volume forward: a local model with the exact halo,
        or one block per model axis.
    """

    model_axes: tuple[str, ...]
    shape: tuple[int, int, int]
    padded: tuple[int, int, int]
    chunks: tuple[tuple[int, ...], ...]
    halo: tuple[int, int, int]
    halo_mode: str
    divisor: int
    bytes_per_voxel: int
    pass_halos: tuple[tuple[int, int, int], ...] = ()
    exact: bool = False

    @property
    def halos(self) -> tuple[tuple[int, int, int], ...]:
        """The overlap of every pass (one entry for single-pass models)."""
        return self.pass_halos or (self.halo,)

    @property
    def n_blocks(self) -> int:
        """Number of blocks (tasks running the model)."""
        return math.prod(len(c) for c in self.chunks)

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Largest block core, (t, z, y, x)."""
        return tuple(max(c) for c in self.chunks)

    @property
    def extended_shape(self) -> tuple[int, ...]:
        """Largest block with its overlap, (t, z, y, x) (edge blocks overlap on one side)."""
        return (
            max(self.chunks[0]),
            *(extent(c, h) for c, h in zip(self.chunks[1:], self.halo, strict=True)),
        )

    @property
    def memory_per_block(self) -> int:
        """Estimated peak bytes of one block's forward pass."""
        return math.prod(self.extended_shape) * self.bytes_per_voxel

    @property
    def compute_ratio(self) -> float:
        """Voxels the model processes, over the voxels of one whole-volume forward."""
        total = 0
        for halo in self.halos:
            voxels = 1
            for cores, h in zip(self.chunks[1:], halo, strict=True):
                voxels *= sum(cores) + 2 * h * (len(cores) - 1)
            total += voxels
        return total / math.prod(self.padded) / len(self.halos)

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable summary for provenance and ``--dry-run``."""
        return {
            "halo_mode": self.halo_mode,
            "halo_zyx": list(self.halo),
            **(
                {
                    "passes": len(self.pass_halos),
                    "pass_halos_zyx": [list(h) for h in self.pass_halos],
                }
                if self.pass_halos
                else {}
            ),
            "exact": self.exact,
            "block_tzyx": list(self.block_shape),
            "blocks": self.n_blocks,
            "padded_zyx": list(self.padded),
            "memory_per_block": self.memory_per_block,
            "compute_ratio": round(self.compute_ratio, 3),
        }


def bytes_per_voxel(model: Model) -> int:
    """Rough peak activation bytes per input voxel of a forward pass, as its architecture says.

    See :meth:`zarrstain.models.Architecture.bytes_per_voxel` (fnet: about eight float32
    feature maps of the top level's width).
    """
    return int(model.spec.bytes_per_voxel(model.config))


def default_block_memory() -> int:
    """Budget of one block's forward pass.

    The dask config value ``zarrstain.block-memory`` when set; else half the memory of the
    first CUDA GPU, or a quarter of this machine's RAM (one forward runs at a time per process,
    see :func:`~zarrstain.models.cache.forward_lock`).
    """
    configured = dask.config.get("zarrstain.block-memory", None)
    if configured:
        return check_block_memory(configured)
    import torch  # only here: planning needs no torch otherwise

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory // 2
    import psutil

    return psutil.virtual_memory().total // 4


def auto_halo(model: Model, radius: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The halo ``"auto"`` uses: 70% of the receptive radius, rounded up to the divisor.

    For the depth-4 fnet that is 80 instead of the exact 112. Measured in
    ``benchmarks/tiling.py`` (see the README): on pytorch_fnet's fixture net halos of 32 / 64 /
    80 / 96 left max errors of 0.16 / 0.027 / 0.0044 / 0 output standard deviations.
    ``radius``: of one pass of a multi-pass model (default the model's).
    """
    radius = model.receptive_radius if radius is None else radius
    return tuple(round_up(math.ceil(r * AUTO_FRACTION), model.divisor) for r in radius)


def _halos(model: Model, halo: str | int) -> tuple[str, list[dict[str, int]]]:
    """The halo mode and, per pass, the overlap per model axis."""
    axes = SPATIAL[-model.spatial_dims :]
    radii = model.geometry.radii if model.geometry.passes > 1 else (model.receptive_radius,)
    halo = check_halo(halo)
    if halo == "exact":
        values = [[round_up(r, model.divisor) for r in radius] for radius in radii]
    elif halo == "auto":
        values = [list(auto_halo(model, radius)) for radius in radii]
    else:
        values = [[round_up(halo, model.divisor)] * model.spatial_dims] * len(radii)
        if values[0][0] != halo:
            logger.info("halo %d rounded up to %d, a multiple of the divisor", halo, values[0][0])
    mode = halo if isinstance(halo, str) else "fixed"
    return mode, [dict(zip(axes, v, strict=True)) for v in values]


def plan_tiles(
    shape: tuple[int, int, int, int],
    model: Model,
    *,
    halo: str | int = "auto",
    chunks: dict[str, int] | None = None,
    align: dict[str, int] | None = None,
    block_memory: int | str | None = None,
) -> TilePlan:
    """Choose padding, block cores and halos for a (t, z, y, x) volume.

    Parameters
    ----------
    shape
        (t, z, y, x) of the data.
    model
        The model to tile.
    halo
        ``"exact"``, ``"auto"`` or an integer (rounded up to the divisor).
    chunks
        Block cores per axis (``{"t": 1, "z": 32, "y": 256, "x": 256}``; missing axes are
        chosen); model axes must be multiples of the divisor.
    align
        Chunk sizes per axis that blocks should be whole multiples of (the store's chunks).
    block_memory
        Budget for one block's forward pass (bytes or a string such as ``"2GiB"``); default
        :func:`default_block_memory`.

    Raises
    ------
    ShapeMismatchError
        A volume too small for the model's padding, or chunks that break the divisor.
    """
    div = model.divisor
    model_axes = SPATIAL[-model.spatial_dims :]
    mode, per_pass = _halos(model, halo)
    halos = {a: max(h[a] for h in per_pass) for a in model_axes}
    t, *zyx = shape
    axes = _Axes(model_axes, _padded(model, zyx), halos, div, dict(align or {}))
    budget = check_block_memory(block_memory) if block_memory else default_block_memory()
    bpv = bytes_per_voxel(model)
    chunks = _requested(model, axes, chunks, mode)
    sizes = _block_sizes(axes, chunks, budget, bpv)
    plane = math.prod(axes.ext(a, sizes[a]) for a in axes.planar)
    block_bytes = axes.ext(0, sizes[0]) * plane * bpv
    t_block = chunks.get("t") or int(max(1, min(t, budget // max(block_bytes, 1))))
    core = [axis_chunks(axes.padded[a], sizes[a], axes.halo(a)) for a in range(3)]

    def zeroed(h: dict[str, int]) -> tuple[int, int, int]:  # no overlap along one-block axes
        return tuple(h.get(SPATIAL[a], 0) if len(core[a]) > 1 else 0 for a in range(3))

    halo_zyx = zeroed(halos)
    whole = all(len(core[a]) == 1 for a in range(3) if SPATIAL[a] in model_axes)
    plan = TilePlan(
        model_axes=model_axes,
        shape=tuple(zyx),
        padded=axes.padded,
        chunks=(axis_chunks(t, t_block, 0), *core),
        halo=halo_zyx,
        halo_mode=mode,
        divisor=div,
        bytes_per_voxel=bpv,
        pass_halos=tuple(zeroed(h) for h in per_pass) if len(per_pass) > 1 else (),
        exact=whole or (model.geometry.local and mode == "exact"),
    )
    if plan.memory_per_block > budget and not model.geometry.local and whole:
        logger.warning(
            "blocks need about %s, over the budget of %s: model %s is not local, so it runs "
            "one whole field per block",
            format_bytes(plan.memory_per_block),
            format_bytes(budget),
            model.name,
        )
    elif plan.memory_per_block > budget:
        logger.warning(
            "blocks need about %s, over the budget of %s: the halo (%s) sets their minimum "
            "size; use a smaller halo or a larger block_memory",
            format_bytes(plan.memory_per_block),
            format_bytes(budget),
            halo_zyx,
        )
    return plan


@dataclass(frozen=True)
class _Axes:
    """The padded volume's (z, y, x) axes as the block search sees them."""

    model_axes: tuple[str, ...]
    padded: tuple[int, int, int]
    halos: dict[str, int]
    div: int
    align: dict[str, int]

    @property
    def planar(self) -> list[int]:
        """Indices of the model's y / x axes."""
        return [a for a in (1, 2) if SPATIAL[a] in self.model_axes]

    def halo(self, a: int) -> int:
        return self.halos.get(SPATIAL[a], 0)

    def unit(self, a: int) -> int:
        """What blocks along axis ``a`` are multiples of: the divisor and the data's chunks."""
        if SPATIAL[a] not in self.model_axes:
            return 1
        u = math.lcm(self.div, max(int(self.align.get(SPATIAL[a], self.div)), 1))
        return u if u <= max(self.padded[a], self.div) and u <= 1024 else self.div

    def ext(self, a: int, block: int) -> int:
        """The largest block along axis ``a`` with its overlap, for cores of ``block``."""
        h = self.halo(a)
        return extent(axis_chunks(self.padded[a], block, h), h)


def _padded(model: Model, zyx: list[int]) -> tuple[int, int, int]:
    """(z, y, x) padded to the divisor along the model's axes; refuses too small a volume."""
    div, model_axes = model.divisor, SPATIAL[-model.spatial_dims :]
    padded = tuple(
        round_up(s, div) if a in model_axes else s for a, s in zip(SPATIAL, zyx, strict=True)
    )
    least = dict(zip(model_axes, model.geometry.minimum, strict=False))
    for a, s in zip(SPATIAL, zyx, strict=True):
        if s < least.get(a, 0):
            raise ShapeMismatchError(
                f"{a}={s} is too small for model {model.name!r}, which reads {least[a]} "
                f"{a}-planes at a time; use a stack of at least {least[a]}"
            )
    for a, s, p in zip(SPATIAL, zyx, padded, strict=True):
        if p - s >= s:  # reflect padding needs more data than it adds
            raise ShapeMismatchError(
                f"{a}={s} is too small for {model.spatial_dims}D model {model.name!r}: it pads "
                f"each axis by mirroring to a multiple of {div} and needs {a} ≥ {p - s + 1}; "
                + ("use a 2D model for thin stacks" if a == "z" else "use a larger image")
            )
    return padded  # type: ignore[return-value]


def _requested(
    model: Model, axes: _Axes, chunks: dict[str, int] | None, mode: str = "auto"
) -> dict[str, int]:
    """The caller's block cores, checked: divisor multiples, at least the halo.

    A non-local model without any gets one whole field per block, the only exact tiling; one
    cut into smaller blocks needs an explicit integer halo (``mode="fixed"``) and is
    approximate.

    Raises
    ------
    ParameterError
        A non-local model tiled with ``halo="exact"`` or ``"auto"``.
    """
    cut = {
        a: c
        for a, c in (chunks or {}).items()
        if a in axes.model_axes and 0 < c < axes.padded[SPATIAL.index(a)]
    }
    if not model.geometry.local and cut:
        if mode != "fixed":
            raise ParameterError(
                f"model {model.name} is not local (GroupNorm, global attention or per-image "
                f"statistics see the whole field), so halo={mode!r} cannot tile it "
                f"(chunks {cut}): omit chunks to run one whole field per block (exact), or "
                "give an integer halo to tile it approximately"
            )
        logger.warning(
            "model %s is not local (its layers see the whole field): tiling it with chunks=%s "
            "is approximate",
            model.name,
            chunks,
        )
    elif not model.geometry.local:
        chunks = {a: p for a, p in zip(SPATIAL, axes.padded, strict=True) if a in axes.model_axes}
    chunks = dict(chunks or {})
    for a, c in chunks.items():
        if a in axes.model_axes and c % axes.div:
            raise ShapeMismatchError(
                f"chunks[{a!r}]={c} is not a multiple of the model's divisor {axes.div}; use "
                f"{round_up(c, axes.div)}"
            )
    for a, c in list(chunks.items()):
        if a not in axes.model_axes:
            continue
        h, p = axes.halos[a], axes.padded[SPATIAL.index(a)]
        if c < min(h, p):  # dask overlaps only with neighbours ≥ the halo
            chunks[a] = min(round_up(h, axes.div), p)
            logger.warning(
                "chunks[%r]=%d is smaller than the halo %d; using %d", a, c, h, chunks[a]
            )
    return chunks


def _block_sizes(axes: _Axes, chunks: dict[str, int], budget: int, bpv: int) -> list[int]:
    """Block cores along (z, y, x): the caller's, else searched within the budget.

    3D models take the whole stack in z when a minimal y/x block still fits; y and x are
    searched by :func:`~zarrstain.engine.block_search.planar_blocks`; 2D models then take as many
    planes as fit.
    """
    sizes = [0, 0, 0]
    three_d = "z" in axes.model_axes
    if "z" in chunks:
        sizes[0] = chunks["z"]
    elif three_d:
        smallest = (axes.ext(a, max(axes.unit(a), axes.halo(a))) for a in axes.planar)
        fits = axes.padded[0] * math.prod(smallest) * bpv <= budget
        least = max(round_up(axes.halo(0), axes.div), axes.unit(0), axes.div)
        sizes[0] = axes.padded[0] if fits else least
    else:
        sizes[0] = 1  # set below: as many planes as fit
    given = {a: chunks[SPATIAL[a]] for a in axes.planar if SPATIAL[a] in chunks}
    search = [a for a in axes.planar if a not in given]
    sizes[1:] = [given.get(a, 0) for a in (1, 2)]
    if search:  # y and x: the fewest computed voxels that fit, given any fixed axis
        fixed = math.prod(axes.ext(a, s) for a, s in given.items())
        found = planar_blocks(
            [axes.padded[a] for a in search],
            [axes.halo(a) for a in search],
            axes.ext(0, sizes[0]) * fixed,
            [axes.unit(a) for a in search],
            axes.div,
            budget,
            bpv,
        )
        for a, size in zip(search, found, strict=True):
            sizes[a] = size
    if not three_d and "z" not in chunks:
        plane = math.prod(axes.ext(a, sizes[a]) for a in axes.planar)
        sizes[0] = int(min(axes.padded[0], max(1, budget // max(plane * bpv, 1))))
        if axes.align.get("z") and sizes[0] > axes.align["z"]:
            sizes[0] -= sizes[0] % axes.align["z"]
    return sizes
