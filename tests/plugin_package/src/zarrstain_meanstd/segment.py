"""A segmenter plug-in: connected components above the field's mean + 2 standard deviations."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from zarrstain.evaluation.segment import Segmenter


class Brightest(Segmenter):
    """Objects brighter than the mean + 2 sd (``zarrstain evaluate --objects brightest``)."""

    name = "brightest"

    def __call__(self, image, spacing, seeds=None):
        image = np.asarray(image, dtype=np.float64)
        labels, _ = ndi.label(image > image.mean() + 2 * image.std())
        return labels.astype(np.int32)

    def __repr__(self) -> str:
        return "Brightest()"
