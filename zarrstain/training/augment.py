"""Random flips and 90° rotations in the xy plane, applied identically to input and target."""

from __future__ import annotations

import numpy as np

__all__ = ["augment"]


def augment(
    x: np.ndarray, y: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Flip along y and x with probability 1/2 each; rotate by k·90° in xy when square.

    Arrays are (C, ..., Y, X); z (if any) is never flipped (anisotropic optics).
    """
    if rng.random() < 0.5:
        x, y = x[..., ::-1, :], y[..., ::-1, :]
    if rng.random() < 0.5:
        x, y = x[..., ::-1], y[..., ::-1]
    if x.shape[-1] == x.shape[-2]:
        k = int(rng.integers(4))
        x, y = np.rot90(x, k, axes=(-2, -1)), np.rot90(y, k, axes=(-2, -1))
    return np.ascontiguousarray(x), np.ascontiguousarray(y)
