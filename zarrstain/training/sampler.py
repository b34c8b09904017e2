"""Paired random patches (input channels → target channels) from OME-Zarr scenes.

Patches are read straight from the scenes' dask arrays, so only the chunks a patch touches are
read; decoded chunks are kept within a memory budget (:class:`~.blocks.BlockCache`), so a
training set that fits it is decoded once rather than once per patch.

Inputs and targets are normalized exactly as :func:`zarrstain.predict` normalizes inputs:
with global statistics per scene, time point and channel (computed once, up front), never per
patch. Everything random comes from one ``numpy.random.Generator`` seeded by ``seed``.

Validation is held out either by scene (``val_scenes``) or by region (``val_fraction`` of each
scene along x, taken from the right: "train on the left half, evaluate on the right").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import xarray as xr

from zarrstain.engine.normalize import normalization_stats
from zarrstain.errors import ChannelError, ParameterError, ShapeMismatchError, option
from zarrstain.training.augment import Augmentation, augment, warp, window
from zarrstain.training.blocks import BlockCache

__all__ = ["PatchSampler", "Region", "bins_range", "split_regions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Region:
    """Where patches may come from: one scene, an x range (the whole scene by default)."""

    scene: str
    x: slice = field(default_factory=lambda: slice(None))


def split_regions(
    scenes: dict[str, xr.DataArray],
    *,
    val_scenes: Sequence[str] | None = None,
    val_fraction: float | None = None,
) -> tuple[list[Region], list[Region]]:
    """Training and validation regions: by scene, or by the right ``val_fraction`` of each scene.

    Without either option nothing is held out (validation regions are empty).
    """
    if val_scenes and val_fraction:
        raise ParameterError("hold out by scene (val_scenes) or by region (val_fraction), not both")
    if val_scenes:
        unknown = [s for s in val_scenes if s not in scenes]
        if unknown:
            raise ParameterError(f"validation scene {unknown[0]!r} is not among {list(scenes)}")
        train = [Region(s) for s in scenes if s not in val_scenes]
        if not train:
            raise ParameterError("every scene is held out for validation; keep some for training")
        return train, [Region(s) for s in val_scenes]
    if val_fraction:
        if not 0 < val_fraction < 1:
            raise ParameterError(f"val_fraction must be between 0 and 1, not {val_fraction}")
        train, val = [], []
        for sid, image in scenes.items():
            cut = round(image.sizes["x"] * (1 - val_fraction))
            train.append(Region(sid, slice(0, cut)))
            val.append(Region(sid, slice(cut, image.sizes["x"])))
        return train, val
    return [Region(s) for s in scenes], []


class PatchSampler:
    """Random normalized (input, target) patches from regions of scenes.

    Parameters
    ----------
    scenes
        Scene id → (t, c, z, y, x) DataArray (e.g. from :func:`zarrstain.open_scenes`).
    regions
        Where patches may come from.
    inputs, targets
        Channel labels.
    patch
        Patch size: (z, y, x) for 3D models, (y, x) for 2D models (one z-plane each).
    normalization
        ``"center"``, ``"zscore"`` or ``"percentile"``, for inputs and targets alike.
    seed
        Seeds every random choice.
    flips
        Random flips along y and x and 90° rotations in xy (when the patch is square).
    cache_bytes
        Memory for decoded chunks (least recently used out first); ``0`` reads every patch
        from the store. The default, 1 GiB, holds e.g. 16 channels of 180 megapixels of uint16.
    augmentation
        :class:`~zarrstain.training.augment.Augmentation` (or what its ``parse`` reads):
        intensity, contrast, blur, noise and affine transforms in physical units, beside the
        flips (``flips=False`` turns every augmentation off).
    """

    def __init__(
        self,
        scenes: dict[str, xr.DataArray],
        regions: Sequence[Region],
        inputs: Sequence[str],
        targets: Sequence[str],
        patch: Sequence[int],
        *,
        normalization: str = "center",
        seed: int = 0,
        flips: bool = True,
        cache_bytes: int = 2**30,
        augmentation: Augmentation | Any = None,
    ) -> None:
        if not regions:
            raise ParameterError("no regions to sample patches from")
        self.inputs, self.targets = list(inputs), list(targets)
        self.patch = tuple(int(p) for p in patch)
        self.spatial = len(self.patch)
        if self.spatial not in (2, 3):
            raise ParameterError(f"patch must be (z, y, x) or (y, x), not {tuple(patch)}")
        # flips=False: no augmentation at all (validation patches)
        self.augmentation = Augmentation.parse(augmentation) if flips else None
        self.flips = flips and self.augmentation.flips
        self.seed = int(seed)
        self.rng = np.random.default_rng(seed)
        self.regions = list(regions)
        self.scenes = {r.scene: scenes[r.scene] for r in self.regions}
        self.scene_ids = list(self.scenes)  # what :meth:`batch` numbers a patch's scene by
        # each scene's voxel size (µm) along the patch's axes: augmentation in physical units
        self.voxel = {
            sid: tuple(float((image.attrs.get("scale") or {}).get(a, 1.0))
                       for a in ("z", "y", "x")[-self.spatial :])
            for sid, image in self.scenes.items()
        }  # fmt: skip
        # Inputs must be in every scene; a target may be missing from some (In silico
        # labeling trains one network on wells stained for different subsets): it is masked
        # out of the loss for their patches, and must be in at least one scene.
        self.present: dict[str, np.ndarray] = {}
        for sid, image in self.scenes.items():
            labels = [str(c) for c in image.coords["c"].values]
            for label in self.inputs:
                if label not in labels:
                    raise ChannelError(
                        f"input channel {label!r} is not in scene {sid!r}; available: {labels}"
                    )
            self.present[sid] = np.array([t in labels for t in self.targets])
            if not self.present[sid].any():
                raise ChannelError(
                    f"scene {sid!r} holds none of the target channels {self.targets}; "
                    f"available: {labels}; leave it out ({option('scenes=', '--scene')})"
                )
        for i, label in enumerate(self.targets):
            if not any(p[i] for p in self.present.values()):
                raise ChannelError(
                    f"target channel {label!r} is in none of the scenes "
                    f"{', '.join(self.scenes)}; available in {next(iter(self.scenes))!r}: "
                    f"{[str(c) for c in next(iter(self.scenes.values())).coords['c'].values]}"
                )
        sizes = []
        for region in self.regions:  # also checks that the patch fits every region
            t_n, z_n, y_n, x0, x1 = self._extent(region)
            sizes.append(t_n * z_n * y_n * (x1 - x0))
        self._weights = np.asarray(sizes, float) / sum(sizes)  # uniform over voxels
        stats = {
            sid: (
                normalization_stats(image.sel(c=self.inputs), normalization),
                normalization_stats(image.sel(c=self._held(sid)), normalization),
            )
            for sid, image in self.scenes.items()
        }
        (computed,) = dask.compute(stats)
        self.stats = {}
        for sid, (si, st) in computed.items():
            pair = [(s["offset"].values, np.where(s["scale"].values > 0, s["scale"].values, 1.0))
                    for s in (si, st)]  # fmt: skip
            self.stats[sid] = (pair[0], self._spread(sid, *pair[1]))
        self.normalization = normalization
        self.cache = BlockCache(cache_bytes)
        self._channels = {  # positions of the input and (held) target channels in each scene
            sid: [
                image.get_index("c").get_indexer(labels)
                for labels in (self.inputs, self._held(sid))
            ]
            for sid, image in self.scenes.items()
        }

    def _held(self, sid: str) -> list[str]:
        """The targets scene ``sid`` holds."""
        return [t for t, here in zip(self.targets, self.present[sid], strict=True) if here]

    def _spread(self, sid: str, offset: np.ndarray, scale: np.ndarray):
        """(t, targets) statistics with offset 0, scale 1 for the targets a scene lacks."""
        here = self.present[sid]
        full_o = np.zeros((offset.shape[0], len(self.targets)))
        full_s = np.ones((offset.shape[0], len(self.targets)))
        full_o[:, here], full_s[:, here] = offset, scale
        return full_o, full_s

    def _extent(self, region: Region) -> tuple[int, int, int, int, int]:
        """(t, z, y, x0, x1) a patch origin may take in ``region``."""
        image = self.scenes[region.scene]
        x0, x1, _ = region.x.indices(image.sizes["x"])
        size = {"z": image.sizes["z"], "y": image.sizes["y"], "x": x1 - x0}
        need = dict(zip(("z", "y", "x")[-self.spatial :], self.patch, strict=True))
        for axis, n in need.items():
            if size[axis] < n:
                raise ShapeMismatchError(
                    f"patch {axis}={n} does not fit region {region.scene!r} ({axis}={size[axis]}); "
                    f"choose a smaller {option('patch', '--patch')}"
                )
        return image.sizes["t"], size["z"], size["y"], x0, x1

    def target_intensity(self) -> list[tuple[float, float]]:
        """Mean (offset, scale) of each target channel over the sampled scenes and times.

        A model trained on these targets predicts ``(target - offset) / scale``; this maps its
        predictions back to the target channel's units.
        """
        out = []
        for i in range(len(self.targets)):  # over the scenes that hold the target
            held = [s for s in self.scenes if self.present[s][i]]
            offsets = np.concatenate([self.stats[s][1][0][:, i] for s in held])
            scales = np.concatenate([self.stats[s][1][1][:, i] for s in held])
            out.append((float(offsets.mean()), float(scales.mean())))
        return out

    def targets_seen(self) -> dict[str, int]:
        """Per target, the number of sampled scenes that hold it."""
        return {
            t: int(sum(p[i] for p in self.present.values())) for i, t in enumerate(self.targets)
        }

    def _origin(
        self, matrix: np.ndarray | None = None, rng: np.random.Generator | None = None
    ) -> tuple[Region, int, tuple[int, ...], tuple[int, ...], np.ndarray | None]:
        """A random region, time point and window: its origin, its size, and the pixel matrix
        of the affine ``matrix`` (physical) resampling it onto the patch; a window that does
        not fit the region falls back to the patch (matrix None)."""
        rng = self.rng if rng is None else rng
        region = self.regions[rng.choice(len(self.regions), p=self._weights)]
        t_n, z_n, y_n, x0, x1 = self._extent(region)
        t = int(rng.integers(t_n))
        size, pixel = self.patch, None
        if matrix is not None:
            pixel, wanted = window(matrix, self.patch, self.voxel[region.scene])
            room = (z_n, y_n, x1 - x0)[-self.spatial :]
            if all(s <= n for s, n in zip(wanted, room, strict=True)):
                size = wanted
            else:
                pixel = None
        pz, py, px = (1, *size) if self.spatial == 2 else size
        z = int(rng.integers(z_n - pz + 1))
        y = int(rng.integers(y_n - py + 1))
        x = x0 + int(rng.integers(x1 - x0 - px + 1))
        return region, t, (z, y, x), size, pixel

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random pairs: float32 arrays (n, C_in, *patch) and (n, C_out, *patch).

        Targets a patch's scene lacks are zero (see :meth:`sample_with_mask`).
        """
        x, y, _ = self.sample_with_mask(n)
        return x, y

    def batch(
        self, step: int, n: int, first: int = 0
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The patches ``first … first + n − 1`` of training step ``step``, and their scenes.

        Patch ``i`` of step ``k`` comes from its own generator, seeded by (seed, k, i): a
        batch is a function of the seed and the step alone, whichever process draws it (the
        main one, a ``DataLoader`` worker, one rank of several drawing its slice of a global
        batch), and a resumed run draws what an uninterrupted one would.

        Returns
        -------
        inputs, targets, mask, scenes
            As :meth:`sample_with_mask`, and each patch's index in :attr:`scene_ids`.
        """
        rngs = [np.random.default_rng([self.seed, step, i]) for i in range(first, first + n)]
        x, y, mask = self.sample_with_mask(n, rngs)
        scenes = np.array([self.scene_ids.index(s) for s in self.last_scenes], np.int64)
        return x, y, mask, scenes

    def sample_with_mask(
        self, n: int, rngs: Sequence[np.random.Generator] | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """As :meth:`sample`, and the (n, C_out) bool mask of the targets each patch has.

        ``rngs``: one generator per patch (:meth:`batch`); by default every draw comes from
        the sampler's own :attr:`rng`, in turn.
        """
        rngs = list(rngs) if rngs is not None else [self.rng] * n
        picks, windows = [], []
        aug = self.augmentation
        for rng in rngs:
            # an affine reads a larger (or smaller) window than the patch: drawn first
            matrix = aug.draw_affine(rng, self.spatial) if aug is not None else None
            region, t, (z, y, x), size, pixel = self._origin(matrix, rng)
            pz, py, px = (1, *size) if self.spatial == 2 else size
            space = (slice(z, z + pz), slice(y, y + py), slice(x, x + px))
            data = self.scenes[region.scene].data
            for channels in self._channels[region.scene]:
                windows.append((region.scene, data, (t, channels, *space)))
            picks.append((region.scene, t, pixel))
        arrays = self.cache.read(windows)
        xs, ys = [], []
        for k, ((sid, t, pixel), rng) in enumerate(zip(picks, rngs, strict=True)):
            (oi, si), (ot, st) = self.stats[sid]
            xi = (arrays[2 * k] - oi[t][:, None, None, None]) / si[t][:, None, None, None]
            here = self.present[sid]
            yt = np.zeros((len(self.targets), *arrays[2 * k + 1].shape[1:]), np.float32)
            yt[here] = (arrays[2 * k + 1] - ot[t][here, None, None, None]) / st[t][
                here, None, None, None
            ]
            if self.spatial == 2:
                xi, yt = xi[:, 0], yt[:, 0]
            if pixel is not None:  # the window resampled onto the patch, input and target
                xi, yt = warp(xi, pixel, self.patch), warp(yt, pixel, self.patch)
            if self.flips:
                xi, yt = augment(xi, yt, rng)
            if aug is not None and aug.transforms:
                xi = aug.apply_input(xi, rng, self.voxel[sid])
            xs.append(xi)
            ys.append(yt)
        mask = np.stack([self.present[sid] for sid, _, _ in picks])
        self.last_scenes = [sid for sid, _, _ in picks]  # each patch's scene (its class)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32), mask


def bins_range(sampler: PatchSampler, n: int = 64) -> tuple[float, float]:
    """A bins head's normalized target range, from ``n`` patches of ``sampler``.

    The 0.05th to 99.95th percentile of the normalized targets, widened by a tenth of that
    span on each side, so the bins cover the intensities seen with room for brighter cells.
    The sampler's random state is restored: training draws the same patches as without it.
    """
    state = sampler.rng.bit_generator.state
    try:
        _, y, mask = sampler.sample_with_mask(n)
    finally:
        sampler.rng.bit_generator.state = state
    values = np.concatenate([y[mask[:, i], i].ravel() for i in range(y.shape[1])])
    lo, hi = np.percentile(values, [0.05, 99.95])
    pad = 0.1 * max(hi - lo, 1e-3)
    return round(float(lo - pad), 4), round(float(hi + pad), 4)
