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

import dask
import numpy as np
import xarray as xr

from ..errors import ChannelError, ParameterError, ShapeMismatchError, option
from ..normalize import normalization_stats
from .augment import augment
from .blocks import BlockCache

__all__ = ["PatchSampler", "Region", "split_regions"]

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
    ) -> None:
        if not regions:
            raise ParameterError("no regions to sample patches from")
        self.inputs, self.targets = list(inputs), list(targets)
        self.patch = tuple(int(p) for p in patch)
        self.spatial = len(self.patch)
        if self.spatial not in (2, 3):
            raise ParameterError(f"patch must be (z, y, x) or (y, x), not {tuple(patch)}")
        self.flips = flips
        self.rng = np.random.default_rng(seed)
        self.regions = list(regions)
        self.scenes = {r.scene: scenes[r.scene] for r in self.regions}
        for sid, image in self.scenes.items():
            labels = [str(c) for c in image.coords["c"].values]
            for label in self.inputs + self.targets:
                if label not in labels:
                    raise ChannelError(
                        f"channel {label!r} is not in scene {sid!r}; available: {labels}"
                    )
        sizes = []
        for region in self.regions:  # also checks that the patch fits every region
            t_n, z_n, y_n, x0, x1 = self._extent(region)
            sizes.append(t_n * z_n * y_n * (x1 - x0))
        self._weights = np.asarray(sizes, float) / sum(sizes)  # uniform over voxels
        stats = {
            sid: (
                normalization_stats(image.sel(c=self.inputs), normalization),
                normalization_stats(image.sel(c=self.targets), normalization),
            )
            for sid, image in self.scenes.items()
        }
        (computed,) = dask.compute(stats)
        self.stats = {
            sid: tuple(
                (s["offset"].values, np.where(s["scale"].values > 0, s["scale"].values, 1.0))
                for s in pair
            )
            for sid, pair in computed.items()
        }
        self.normalization = normalization
        self.cache = BlockCache(cache_bytes)
        self._channels = {  # positions of the input and target channels in each scene
            sid: [
                image.get_index("c").get_indexer(labels) for labels in (self.inputs, self.targets)
            ]
            for sid, image in self.scenes.items()
        }

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
        offsets = np.concatenate([self.stats[s][1][0] for s in self.scenes], axis=0)
        scales = np.concatenate([self.stats[s][1][1] for s in self.scenes], axis=0)
        return [
            (float(o), float(s))
            for o, s in zip(offsets.mean(axis=0), scales.mean(axis=0), strict=True)
        ]

    def _origin(self) -> tuple[Region, int, tuple[int, ...]]:
        region = self.regions[self.rng.choice(len(self.regions), p=self._weights)]
        t_n, z_n, y_n, x0, x1 = self._extent(region)
        t = int(self.rng.integers(t_n))
        pz, py, px = (1, *self.patch) if self.spatial == 2 else self.patch
        z = int(self.rng.integers(z_n - pz + 1))
        y = int(self.rng.integers(y_n - py + 1))
        x = x0 + int(self.rng.integers(x1 - x0 - px + 1))
        return region, t, (z, y, x)

    def sample(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` random pairs: float32 arrays (n, C_in, *patch) and (n, C_out, *patch)."""
        pz, py, px = (1, *self.patch) if self.spatial == 2 else self.patch
        picks, windows = [], []
        for _ in range(n):
            region, t, (z, y, x) = self._origin()
            space = (slice(z, z + pz), slice(y, y + py), slice(x, x + px))
            data = self.scenes[region.scene].data
            for channels in self._channels[region.scene]:
                windows.append((region.scene, data, (t, channels, *space)))
            picks.append((region.scene, t))
        arrays = self.cache.read(windows)
        xs, ys = [], []
        for k, (sid, t) in enumerate(picks):
            (oi, si), (ot, st) = self.stats[sid]
            xi = (arrays[2 * k] - oi[t][:, None, None, None]) / si[t][:, None, None, None]
            yt = (arrays[2 * k + 1] - ot[t][:, None, None, None]) / st[t][:, None, None, None]
            if self.spatial == 2:
                xi, yt = xi[:, 0], yt[:, 0]
            if self.flips:
                xi, yt = augment(xi, yt, self.rng)
            xs.append(xi)
            ys.append(yt)
        return np.stack(xs).astype(np.float32), np.stack(ys).astype(np.float32)
