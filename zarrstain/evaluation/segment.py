"""Objects in a stain: a default segmenter for nuclei and cells that needs no weights.

Evaluation at the object level (:mod:`zarrstain.evaluation.objects`) segments the acquired and
the predicted stain the same way and compares the objects. The default is the classical
pipeline of CellProfiler's *IdentifyPrimaryObjects* and scikit-image's watershed example:
Gaussian smoothing, an Otsu threshold, small objects removed, then a distance-transform
watershed that splits touching objects at their necks. Every size is physical (µm, from the
store's scale), so one setting works across magnifications.

Other segmenters (cellpose, StarDist, ... when the user has them and their weights) plug in
as a :class:`Segmenter` subclass under the entry-point group ``zarrstain.segmenters``, or as any
callable ``f(image, spacing) -> labels`` passed to :func:`zarrstain.evaluate`.

A segmenter is a pure function of the pixels it is given: segmenting a field twice gives the
same labels, so real-against-real evaluation scores exactly 1.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from zarrstain.errors import ParameterError, option
from zarrstain.models.plugins import PluginRegistry

__all__ = ["CELLS", "NUCLEI", "SEGMENTERS", "Segmenter", "ThresholdWatershed", "get_segmenter"]

logger = logging.getLogger(__name__)

#: entry-point group of third-party segmenters
GROUP = "zarrstain.segmenters"


class Segmenter:
    """Turns one field's stain into instance labels (0 background, 1..n objects).

    Subclass it and declare the instance (or class) under ``zarrstain.segmenters`` to make
    ``zarrstain evaluate --objects NAME`` use it.

    Attributes
    ----------
    name
        The name ``--objects`` takes (the entry point's name).
    seeded
        Takes the nuclei's labels as ``seeds`` (a cell segmenter: one cell per nucleus).
    """

    name: str = ""
    seeded: bool = False

    def __call__(
        self, image: np.ndarray, spacing: Sequence[float], seeds: np.ndarray | None = None
    ) -> np.ndarray:
        """Labels of ``image`` ((y, x) or (z, y, x); ``spacing`` per axis in µm), int32."""
        raise NotImplementedError


@dataclass(frozen=True)
class ThresholdWatershed(Segmenter):
    """Smoothing, Otsu threshold, small objects removed, distance-transform watershed.

    Attributes
    ----------
    name
        ``"nuclei"`` or ``"cells"``.
    diameter
        Typical object diameter in µm: sets the smoothing (σ = diameter / 8), the smallest
        object kept (``min_fraction`` of a disk of this diameter) and how far apart two
        objects' centres must be to be split (diameter / 4).
    min_fraction
        Objects below this share of a typical object's area (per plane) are noise.
    seeded
        With ``seeds`` (nuclei labels), one object per seed inside the foreground instead of
        the distance transform's peaks: cells grown from their nuclei.
    """

    name: str = "nuclei"
    diameter: float = 8.0
    min_fraction: float = 0.2
    seeded: bool = False

    def __post_init__(self) -> None:
        if not self.diameter > 0 or not 0 <= self.min_fraction < 1:
            raise ParameterError(
                f"segmenter {self.name!r}: diameter must be > 0 µm and min_fraction in [0, 1), "
                f"not {self.diameter!r} and {self.min_fraction!r}"
            )

    def __call__(
        self, image: np.ndarray, spacing: Sequence[float], seeds: np.ndarray | None = None
    ) -> np.ndarray:
        from skimage.feature import peak_local_max
        from skimage.filters import threshold_otsu
        from skimage.segmentation import watershed

        image = np.asarray(image, dtype=np.float32)
        px = _spacing(spacing, image.ndim)
        flat = [i for i, n in enumerate(image.shape) if n == 1]  # no smoothing along them
        sigma = [0.0 if i in flat else self.diameter / 8 / p for i, p in enumerate(px)]
        smooth = ndi.gaussian_filter(image, sigma)
        if not np.isfinite(smooth).all() or smooth.max() <= smooth.min():
            return np.zeros(image.shape, np.int32)
        foreground = smooth > threshold_otsu(smooth)
        foreground = ndi.binary_fill_holes(foreground)
        regions, _ = ndi.label(foreground)
        sizes = np.bincount(regions.ravel())
        small = sizes < self._min_size(image.shape, px)
        small[0] = True  # the background
        foreground = ~small[regions]
        if not foreground.any():
            return np.zeros(image.shape, np.int32)
        regions[~foreground] = 0
        distance = ndi.distance_transform_edt(foreground, sampling=px)
        if self.seeded and seeds is not None:
            markers = np.where(foreground, seeds, 0).astype(np.int32)
        else:
            radius = self.diameter / 4
            # pixels of the in-plane axes: peak_local_max's spacing is isotropic, in pixels
            min_distance = max(1, int(radius / min(px[-2:])))
            peaks = peak_local_max(
                distance, min_distance=min_distance, labels=regions, exclude_border=False
            )
            markers = np.zeros(image.shape, np.int32)
            markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers, mask=foreground)
        return _renumbered(labels)

    def _min_size(self, shape: tuple[int, ...], px: tuple[float, ...]) -> float:
        area = math.pi * (self.diameter / 2) ** 2 / (px[-1] * px[-2])  # pixels per plane
        planes = 1.0
        if len(shape) == 3 and shape[0] > 1:  # a nucleus spans this many planes (at most all)
            planes = max(1.0, min(shape[0], self.diameter / px[0]) / 2)
        return self.min_fraction * area * planes


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    px = tuple(float(s) for s in spacing)[-ndim:]
    if len(px) != ndim or not all(p > 0 for p in px):
        raise ParameterError(f"spacing {list(spacing)} must give {ndim} sizes > 0 (µm per pixel)")
    return px


def _renumbered(labels: np.ndarray) -> np.ndarray:
    """Labels 1..n in order of first appearance (raster order), int32."""
    ids, inverse = np.unique(labels, return_inverse=True)
    if ids[0] != 0:
        ids, inverse = np.concatenate([[0], ids]), inverse + 1
    return inverse.reshape(labels.shape).astype(np.int32)


#: nuclei (a DNA / Hoechst stain), about 8 µm across
NUCLEI = ThresholdWatershed("nuclei", diameter=8.0)
#: cells (a cytoplasm or membrane stain), about 20 µm across, grown from nuclei when given
CELLS = ThresholdWatershed("cells", diameter=20.0, seeded=True)

#: name → segmenter: zarrstain's own and the installed plug-ins (entry points)
SEGMENTERS: PluginRegistry[Segmenter] = PluginRegistry(GROUP, Segmenter, "segmenter")


class _Callable(Segmenter):
    """A user's function ``f(image, spacing) -> labels`` as a segmenter."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func, self.name = func, getattr(func, "__name__", "custom")

    def __repr__(self) -> str:  # stable across runs: label images made by it are reused
        module = getattr(self.func, "__module__", "")
        return f"segmenter {module}.{getattr(self.func, '__qualname__', self.name)}"

    def __call__(
        self, image: np.ndarray, spacing: Sequence[float], seeds: np.ndarray | None = None
    ) -> np.ndarray:
        labels = np.asarray(self.func(image, tuple(spacing)))
        if labels.shape != image.shape or labels.dtype.kind not in "iub":
            raise ParameterError(
                f"segmenter {self.name!r} returned {labels.dtype} labels of shape "
                f"{labels.shape} for an image of shape {image.shape}; it must return integer "
                "labels of the image's shape"
            )
        return labels.astype(np.int32)


def get_segmenter(objects: str | Segmenter | Callable[..., Any]) -> Segmenter:
    """The segmenter ``objects`` names (``"nuclei"``, ``"cells"``, a plug-in) or wraps.

    Raises
    ------
    ParameterError
        A name no installed segmenter has (the message lists those that are).
    """
    if isinstance(objects, Segmenter):
        return objects
    if callable(objects):
        return _Callable(objects)
    if objects not in SEGMENTERS:
        raise ParameterError(
            f"no segmenter {objects!r}; installed: {', '.join(sorted(SEGMENTERS))} "
            f"({option('objects=', '--objects')}); {SEGMENTERS.hint()}"
        )
    return SEGMENTERS[objects]
