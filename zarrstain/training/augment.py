"""Training augmentation: flips and 90° rotations, and intensity and spatial transforms in
physical units.

The default is pytorch_fnet's: random flips in y and x and 90° rotations in xy, applied alike
to input and target; z is never flipped (anisotropic optics). :class:`Augmentation` adds the
transforms VisCy's published models owe their robustness across microscopes to (its
``fit_example.yml``: ``RandAffined``, ``RandAdjustContrastd``, ``RandScaleIntensityd``,
``RandGaussianNoised``, ``RandGaussianSmoothd``), each applied with its own probability:

- ``intensity`` (input only): × (1 + U(−scale, scale)), + U(−shift, shift) (normalized units);
- ``contrast`` (input only): gamma in [lo, hi] on the patch's own range (MONAI's
  ``RandAdjustContrast``);
- ``blur`` (input only): a Gaussian of σ in **micrometres**, ``sigma_um`` in xy and
  ``sigma_z_um`` in z, turned into pixels per axis from each scene's voxel size, so the same
  setting blurs a 20× and a 63× acquisition by the same physical amount;
- ``noise`` (input only): + N(0, σ), σ drawn in [0, std] (MONAI's ``sample_std``);
- ``affine`` (input and target): rotation by up to ``rotate`` degrees in xy, ``shear`` in xy
  and ``zoom`` (xy) / ``zoom_z`` (z), all in **physical** coordinates: a rotation of a scene
  with non-square pixels turns micrometres, not pixels. The window read is as large as the
  transformed patch needs, so no border is invented; a draw that does not fit its region is
  skipped. z is only ever zoomed, never rotated into xy (anisotropic optics).

A range is a number ``a`` (± a, or 1 ± a for zoom) or a pair ``[lo, hi]``. Everything random
comes from the sampler's generator: a run is reproducible and resumes exactly; with only flips
the draws are those of earlier versions.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import ndimage

from zarrstain.errors import ParameterError

__all__ = ["TRANSFORMS", "Augmentation", "augment"]

#: transform → its settings and their defaults
TRANSFORMS: dict[str, dict[str, Any]] = {
    "intensity": {"prob": 0.5, "scale": 0.0, "shift": 0.0},
    "contrast": {"prob": 0.5, "gamma": (1.0, 1.0)},
    "blur": {"prob": 0.5, "sigma_um": (0.0, 0.0), "sigma_z_um": (0.0, 0.0)},
    "noise": {"prob": 0.5, "std": 0.0},
    "affine": {"prob": 0.5, "rotate": 0.0, "shear": 0.0, "zoom": 0.0, "zoom_z": 0.0},
}
_UNIT = {"zoom", "zoom_z"}  # a number a means 1 ± a
_FROM_ZERO = {"std", "sigma_um", "sigma_z_um"}  # a number a means [0, a]


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


def _range(name: str, key: str, value: Any) -> tuple[float, float]:
    if isinstance(value, bool):
        raise ParameterError(f"augment {name}.{key} must be a number or [low, high], not {value}")
    if isinstance(value, int | float):
        a = float(value)
        if a < 0:
            raise ParameterError(f"augment {name}.{key} must be ≥ 0, not {value}")
        if key in _UNIT:
            return (1.0 - a, 1.0 + a)
        return (0.0, a) if key in _FROM_ZERO else (-a, a)
    if (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and value[0] <= value[1]):  # fmt: skip
        return (float(value[0]), float(value[1]))
    raise ParameterError(
        f"augment {name}.{key} must be a number or [low, high] with low ≤ high, not {value!r}"
    )


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What training does to each patch: ``flips`` (pytorch_fnet's) and ``transforms``.

    Build it with :meth:`parse` from ``"flips"`` (the default), ``"none"``, or a mapping of
    transform → settings (:data:`TRANSFORMS`), e.g. ``{"noise": {"std": 0.5}, "blur":
    {"sigma_um": [0.1, 0.5]}, "affine": {"rotate": 180, "zoom": 0.3}}`` (YAML text too).
    """

    flips: bool = True
    transforms: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()

    @classmethod
    def parse(cls, value: Any) -> Augmentation:
        """An :class:`Augmentation` from a name, a mapping or its YAML/JSON text.

        Raises
        ------
        ParameterError
            An unknown transform or setting (naming those allowed), a bad range.
        """
        if isinstance(value, Augmentation):
            return value
        if value is None or value == "flips":
            return cls()
        if value == "none":
            return cls(flips=False)
        if isinstance(value, str):
            import yaml

            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
            if not isinstance(parsed, dict):
                raise ParameterError(
                    f"augment {value!r} is not flips, none or a mapping such as "
                    "'{noise: {std: 0.5}, affine: {rotate: 180}}'"
                )
            value = parsed
        if not isinstance(value, Mapping):
            raise ParameterError(f"augment must be flips, none or a mapping, not {value!r}")
        flips = value.get("flips", True)
        if not isinstance(flips, bool):
            raise ParameterError(f"augment flips must be true or false, not {flips!r}")
        out = []
        for name, settings in value.items():
            if name == "flips":
                continue
            if name not in TRANSFORMS:
                raise ParameterError(
                    f"augment {name!r} is not one of flips, {', '.join(TRANSFORMS)}"
                )
            settings = settings or {}
            if not isinstance(settings, Mapping):
                raise ParameterError(f"augment {name} takes settings, not {settings!r}")
            unknown = sorted(set(settings) - set(TRANSFORMS[name]))
            if unknown:
                raise ParameterError(
                    f"augment {name}.{unknown[0]} is unknown; {name} takes "
                    + ", ".join(TRANSFORMS[name])
                )
            full = {**TRANSFORMS[name], **settings}
            prob = full.pop("prob")
            if isinstance(prob, bool) or not isinstance(prob, int | float) or not 0 <= prob <= 1:
                raise ParameterError(f"augment {name}.prob must be in [0, 1], not {prob!r}")
            if name == "contrast" and "gamma" in settings:
                gamma = settings["gamma"]
                if isinstance(gamma, int | float) and not isinstance(gamma, bool):
                    full["gamma"] = (max(0.0, 1 - gamma), 1 + gamma)
            ranges = {k: _range(name, k, v) for k, v in full.items()}
            if name == "contrast" and ranges["gamma"][0] <= 0:
                raise ParameterError(f"augment contrast.gamma must be above 0, not {ranges}")
            if name == "affine" and min(ranges["zoom"][0], ranges["zoom_z"][0]) <= 0:
                raise ParameterError("augment affine.zoom must keep the scale above 0 (< 1)")
            out.append((name, (("prob", float(prob)), *sorted(ranges.items()))))
        return cls(flips=flips, transforms=tuple(out))

    def settings(self, name: str) -> dict[str, Any] | None:
        """A transform's settings (prob and ranges), or None when it is not used."""
        for kind, values in self.transforms:
            if kind == name:
                return dict(values)
        return None

    def describe(self) -> dict[str, Any]:
        """For the card: flips and each transform's settings."""
        return {"flips": self.flips, **{k: dict(v) for k, v in self.transforms}}

    # --- spatial ---------------------------------------------------------------------------

    def draw_affine(self, rng: np.random.Generator, spatial: int) -> np.ndarray | None:
        """The physical (output → source) matrix of one patch's affine, or None (not drawn)."""
        s = self.settings("affine")
        if s is None or rng.random() >= s["prob"]:
            return None
        theta = math.radians(rng.uniform(*s["rotate"]))
        shear = rng.uniform(*s["shear"])
        zoom = rng.uniform(*s["zoom"])
        zoom_z = rng.uniform(*s["zoom_z"])
        c, sn = math.cos(theta), math.sin(theta)
        xy = np.array([[c, -sn], [sn, c]]) @ np.array([[1.0, shear], [0.0, 1.0]]) / zoom
        if spatial == 2:
            return xy
        m = np.eye(3)
        m[0, 0], m[1:, 1:] = 1.0 / zoom_z, xy
        return m

    # --- input only ------------------------------------------------------------------------

    def apply_input(
        self, x: np.ndarray, rng: np.random.Generator, voxel: tuple[float, ...]
    ) -> np.ndarray:
        """The input-only transforms on one patch (C, [z,] y, x); ``voxel``: its size in µm
        per spatial axis."""
        for name, values in self.transforms:
            s = dict(values)
            if name == "affine" or rng.random() >= s["prob"]:
                continue
            if name == "intensity":
                x = x * (1.0 + rng.uniform(*s["scale"])) + rng.uniform(*s["shift"])
            elif name == "contrast":
                x = _contrast(x, rng.uniform(*s["gamma"]))
            elif name == "noise":
                x = x + rng.normal(0.0, rng.uniform(*s["std"]), x.shape)
            elif name == "blur":
                xy, z = rng.uniform(*s["sigma_um"]), rng.uniform(*s["sigma_z_um"])
                um = (z, xy, xy)[-len(voxel) :]
                sigma = (0.0, *(u / v for u, v in zip(um, voxel, strict=True)))
                x = ndimage.gaussian_filter(x, sigma, mode="reflect")
        return x.astype(np.float32, copy=False)


def _contrast(x: np.ndarray, gamma: float) -> np.ndarray:
    """MONAI's ``AdjustContrast``: gamma on the patch's own [min, max], per channel."""
    axes = tuple(range(1, x.ndim))
    lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
    span = hi - lo
    return ((x - lo) / (span + 1e-7)) ** gamma * span + lo


def window(matrix: np.ndarray, patch: tuple[int, ...], voxel: tuple[float, ...]) -> tuple:
    """The pixel matrix of a physical affine, and the window (pixels per axis) its source
    needs around a ``patch``: every source coordinate of the patch falls inside it (an axis
    the affine leaves alone needs exactly the patch's size)."""
    d = np.diag(voxel)
    pixel = np.linalg.inv(d) @ matrix @ d
    span = np.abs(pixel) @ (np.asarray(patch, float) - 1)
    return pixel, tuple(max(1, math.ceil(s + 1 - 1e-6)) for s in span)


def warp(a: np.ndarray, pixel: np.ndarray, patch: tuple[int, ...]) -> np.ndarray:
    """Each channel of the window ``a`` (C, *window) resampled onto ``patch`` (linear), the
    patch's centre on the window's."""
    out_c = (np.asarray(patch, float) - 1) / 2
    in_c = (np.asarray(a.shape[1:], float) - 1) / 2
    offset = in_c - pixel @ out_c
    return np.stack([
        ndimage.affine_transform(ch, pixel, offset=offset, output_shape=patch, order=1,
                                 mode="nearest")
        for ch in a
    ]).astype(np.float32)  # fmt: skip
