"""Parse and validate the OME-Zarr metadata of one image group (NGFF 0.4 and 0.5).

The checks that users hit most (axes order, scale length, missing levels, dimension names)
are done here first so the error names the field and the expected value; everything else is
validated against the specification's pydantic models from ``ome-zarr-models``.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pydantic
import zarr

from zarrstain.errors import MetadataError, NotOmeZarrError, UnsupportedError

__all__ = [
    "SUPPORTED_VERSIONS",
    "Axis",
    "ImageMeta",
    "Level",
    "canonical_dims",
    "ome_attrs",
    "ome_version",
    "parse_image",
]

logger = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ("0.4", "0.5")
#: zarrstain's canonical dims; every image is presented with exactly these.
DIMS = ("t", "c", "z", "y", "x")
_SPACE_NAMES = ("z", "y", "x")


@dataclass(frozen=True)
class Axis:
    """One axis of a multiscales image."""

    name: str
    type: str | None
    unit: str | None


@dataclass(frozen=True)
class Level:
    """One resolution level: its array path and its transform per axis of the store."""

    path: str
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: str
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    #: the array as opened when parsed (reused to read it without opening it again)
    array: zarr.Array | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class ImageMeta:
    """Validated metadata of one OME-Zarr image group."""

    path: str
    version: str
    axes: tuple[Axis, ...]
    levels: tuple[Level, ...]
    channel_labels: tuple[str, ...] | None
    name: str | None

    @property
    def axis_names(self) -> tuple[str, ...]:
        """Names of the axes in store order, mapped to zarrstain dims (``t c z y x``)."""
        return canonical_dims(self.axes)

    @property
    def labels(self) -> tuple[str, ...]:
        """Channel labels as readers see them: omero labels, else ``"0", "1", ...``."""
        if self.channel_labels:
            return self.channel_labels
        dims = self.axis_names
        n = self.levels[0].shape[dims.index("c")] if "c" in dims else 1
        return tuple(str(i) for i in range(n))

    def units(self) -> dict[str, str]:
        """Unit per zarrstain dim, for the axes that declare one."""
        return {d: a.unit for d, a in zip(self.axis_names, self.axes, strict=True) if a.unit}


def ome_attrs(group: zarr.Group) -> tuple[str | None, dict[str, Any]]:
    """The OME metadata of a group and its NGFF version.

    NGFF 0.5 nests everything under ``attributes["ome"]``; 0.4 keeps it at the top level and
    records the version inside each multiscales/plate/well entry.
    """
    attrs = group.attrs.asdict()
    if "ome" in attrs and isinstance(attrs["ome"], dict):
        ome = attrs["ome"]
        return ome.get("version"), ome
    version = None
    for key in ("multiscales", "plate", "well"):
        value = attrs.get(key)
        entry = value[0] if isinstance(value, list) and value else value
        if isinstance(entry, dict) and entry.get("version"):
            version = str(entry["version"])
            break
    return version, attrs


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    """Warn once per process and store: a store's metadata is parsed more than once per run."""
    if key not in _warned:
        _warned.add(key)
        logger.warning("%s", message)


def ome_version(group: zarr.Group, where: str) -> str:
    """The NGFF version of ``group``, refusing versions zarrstain does not read."""
    version, ome = ome_attrs(group)
    if version is None and group.metadata.zarr_format == 2:
        if "bioformats2raw.layout" in ome:
            return "0.4"
        # 0.4 makes the version optional (the spec's own test suite has valid examples without
        # one). A zarr v2 group is 0.4 or older, and older axes (bare names) are refused later
        # with a precise message.
        key = next((k for k in ("multiscales", "plate", "well") if k in ome), None)
        if key is not None:
            _warn_once(where, f"{where}: {key} metadata without a version; reading it as 0.4")
            return "0.4"
    if version is None:
        raise NotOmeZarrError(
            f"{where} holds no OME-Zarr metadata (no multiscales, plate, well or "
            "bioformats2raw.layout with a version); point to an OME-Zarr image, plate or "
            "bioformats2raw store"
        )
    if version not in SUPPORTED_VERSIONS:
        raise UnsupportedError(
            f"{where} is OME-Zarr {version}, which zarrstain does not read; supported: "
            f"{', '.join(SUPPORTED_VERSIONS)} (convert older stores, e.g. with ome-zarr-py)"
        )
    expected_format = 2 if version == "0.4" else 3
    if group.metadata.zarr_format != expected_format:
        raise MetadataError(
            where,
            "version",
            f"OME-Zarr {version} in a zarr v{group.metadata.zarr_format} group",
            "NGFF 0.4 in zarr v2 and 0.5 in zarr v3",
        )
    return version


def canonical_dims(axes: tuple[Axis, ...] | list[Axis]) -> tuple[str, ...]:
    """zarrstain's dim (``t c z y x``) for each axis, read by its NGFF type first.

    Writers name typed axes as they like: iohub (VisCy's writer) writes ``T, C, Z, Y, X``,
    others ``time``/``channel`` or their own space names. The type says what an axis is;
    the name, compared case-insensitively, says which space axis. Space axes whose names are
    not ``z``/``y``/``x`` are taken by position, as NGFF orders them (``..., z, y, x``).
    Axes without a type (allowed by NGFF) are read by name. Anything else keeps its name and
    is refused by :func:`_check_axes`.
    """
    dims = []
    for a in axes:
        name, kind = a.name.lower(), (a.type or "").lower()
        if kind == "time" or (not kind and name == "t"):
            dims.append("t")
        elif kind == "channel" or (not kind and name == "c"):
            dims.append("c")
        elif kind == "space" or (not kind and name in _SPACE_NAMES):
            dims.append(name if name in _SPACE_NAMES else "?space")
        else:
            dims.append(a.name)
    space = [i for i, d in enumerate(dims) if d == "?space" or d in _SPACE_NAMES]
    if any(dims[i] == "?space" for i in space) and len(space) <= len(_SPACE_NAMES):
        for i, d in zip(space, _SPACE_NAMES[-len(space) :], strict=True):
            dims[i] = d
    return tuple(dims)


def _check_axes(axes_json: Any, where: str) -> tuple[Axis, ...]:
    field = "multiscales[0].axes"
    if not isinstance(axes_json, list) or not 2 <= len(axes_json) <= 5:
        raise MetadataError(where, field, f"{axes_json!r}", "a list of 2 to 5 axes")
    axes = []
    for i, a in enumerate(axes_json):
        if isinstance(a, str):  # NGFF 0.3 style; refuse clearly rather than guess
            raise MetadataError(where, f"{field}[{i}]", f"{a!r} is a bare name", "axis objects")
        if not isinstance(a, dict) or "name" not in a:
            raise MetadataError(where, f"{field}[{i}]", f"{a!r}", "an object with a 'name'")
        axes.append(Axis(str(a["name"]), a.get("type"), a.get("unit")))
    dims = list(canonical_dims(axes))
    names = ", ".join(a.name for a in axes)
    for a, d in zip(axes, dims, strict=True):
        if d not in DIMS:
            raise UnsupportedError(
                f"{where}: axis {a.name!r} (type {a.type!r}) is not supported; zarrstain reads "
                "one time axis, one channel axis and 2 or 3 space axes (any names: typed "
                "'time', 'channel', 'space', or named t, c, z, y, x)"
            )
    if len(set(dims)) != len(dims):
        raise MetadataError(where, field, f"duplicate axes ({names})", "each axis once")
    order = [DIMS.index(d) for d in dims]
    if order != sorted(order) or sum(d in _SPACE_NAMES for d in dims) < 2:
        raise MetadataError(
            where,
            field,
            f"axes in the order ({names})",
            "optional time, optional channel, then 2 or 3 space axes ordered z, y, x",
        )
    return tuple(axes)


def _transforms(transforms: Any, ndim: int, where: str, field: str) -> tuple[list, list]:
    if not isinstance(transforms, list) or not transforms:
        raise MetadataError(where, field, f"{transforms!r}", "a list starting with a scale")
    scale = [1.0] * ndim
    translation = [0.0] * ndim
    for i, t in enumerate(transforms):
        kind = t.get("type") if isinstance(t, dict) else None
        if kind not in ("scale", "translation"):
            raise MetadataError(where, f"{field}[{i}]", f"{t!r}", "a scale or translation")
        values = t.get(kind)
        if not isinstance(values, list) or len(values) != ndim:
            got = len(values) if isinstance(values, list) else values
            raise MetadataError(
                where, f"{field}[{i}].{kind}", f"{got} values for {ndim} axes", f"{ndim} values"
            )
        if kind == "scale":
            scale = [float(v) for v in values]
        else:
            translation = [float(v) for v in values]
    if transforms[0].get("type") != "scale":
        raise MetadataError(where, field, "the first transform is not a scale", "scale first")
    return scale, translation


def _open_level(group: zarr.Group, path: str, where: str, i: int) -> zarr.Array:
    try:
        node = group[path]
    except KeyError:
        node = None
    if not isinstance(node, zarr.Array):
        raise MetadataError(
            where,
            f"multiscales[0].datasets[{i}].path",
            f"level {path!r} is listed but no array exists there",
            "every listed level to be a zarr array",
        )
    return node


def _validate_with_models(group: zarr.Group, version: str, where: str) -> None:
    """Validate the image attributes against the spec's pydantic models (ome-zarr-models)."""
    _, ome = ome_attrs(group)
    payload = {k: v for k, v in ome.items() if k in ("multiscales", "omero", "version")}
    problem = _model_problem(version, json.dumps(payload, sort_keys=True))
    if problem is not None:
        raise MetadataError(where, *problem)


@functools.lru_cache(maxsize=64)
def _model_problem(version: str, payload: str) -> tuple[str, str] | None:
    """(field, message) of the first problem ome-zarr-models finds, or None.

    Remembered per metadata document: a plate's fields usually share theirs, and validating
    costs milliseconds.
    """
    if version == "0.4":
        from ome_zarr_models.v04.image import ImageAttrs
    else:
        from ome_zarr_models.v05.image import ImageAttrs
    try:
        ImageAttrs.model_validate(json.loads(payload))
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        return ".".join(str(p) for p in err["loc"]) or "multiscales", err["msg"]
    return None


def parse_image(group: zarr.Group, where: str) -> ImageMeta:
    """Read and validate the multiscales metadata of an image group (reads metadata only).

    Parameters
    ----------
    group
        The image group.
    where
        ``store/path`` used in error messages.
    """
    version = ome_version(group, where)
    _, ome = ome_attrs(group)
    multiscales = ome.get("multiscales")
    if not isinstance(multiscales, list) or not multiscales:
        raise NotOmeZarrError(f"{where} is not an OME-Zarr image (no multiscales metadata)")
    ms = multiscales[0]
    axes = _check_axes(ms.get("axes"), where)
    ndim = len(axes)
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise MetadataError(where, "multiscales[0].datasets", f"{datasets!r}", "1 or more levels")
    g_scale, g_trans = [1.0] * ndim, [0.0] * ndim
    if ms.get("coordinateTransformations"):
        g_scale, g_trans = _transforms(
            ms["coordinateTransformations"], ndim, where, "multiscales[0].coordinateTransformations"
        )
    levels = []
    for i, ds in enumerate(datasets):
        field = f"multiscales[0].datasets[{i}]"
        if not isinstance(ds, dict) or "path" not in ds:
            raise MetadataError(where, field, f"{ds!r}", "an object with a 'path'")
        scale, trans = _transforms(
            ds.get("coordinateTransformations"), ndim, where, f"{field}.coordinateTransformations"
        )
        arr = _open_level(group, str(ds["path"]), where, i)
        if arr.ndim != ndim:
            raise MetadataError(
                where, f"{ds['path']}", f"array has {arr.ndim} dims for {ndim} axes", f"{ndim}"
            )
        dim_names = getattr(arr.metadata, "dimension_names", None)
        if dim_names is not None and tuple(dim_names) != tuple(a.name for a in axes):
            raise MetadataError(
                where,
                f"{ds['path']}/zarr.json dimension_names",
                f"{list(dim_names)}",
                f"the axes names {[a.name for a in axes]}",
            )
        if levels and any(s > p for s, p in zip(arr.shape, levels[-1].shape, strict=True)):
            raise MetadataError(
                where, field, f"level shape {arr.shape} larger than the previous level", "smaller"
            )
        levels.append(
            Level(
                path=str(ds["path"]),
                shape=tuple(arr.shape),
                chunks=tuple(arr.shards or arr.chunks),
                dtype=str(arr.dtype),
                scale=tuple(s * g for s, g in zip(scale, g_scale, strict=True)),
                translation=tuple(
                    t * g + gt for t, g, gt in zip(trans, g_scale, g_trans, strict=True)
                ),
                array=arr,
            )
        )
    _validate_with_models(group, version, where)
    labels = _channel_labels(ome, axes, levels[0].shape, where)
    return ImageMeta(
        path=group.path,
        version=version,
        axes=axes,
        levels=tuple(levels),
        channel_labels=labels,
        name=ms.get("name"),
    )


def _channel_labels(
    ome: dict[str, Any], axes: tuple[Axis, ...], shape: tuple[int, ...], where: str
) -> tuple[str, ...] | None:
    """Channel labels from omero metadata; ``None`` when absent or inconsistent."""
    channels = (ome.get("omero") or {}).get("channels")
    if not channels:
        return None
    dims = canonical_dims(axes)
    n = shape[dims.index("c")] if "c" in dims else 1
    labels = [str(c.get("label") or i) for i, c in enumerate(channels)]
    if len(labels) != n:
        # A writer stopped between growing the array and listing its channels, or another
        # tool disagrees with itself: keep the labels that are listed, index the rest.
        logger.warning(
            "%s: omero lists %d channels but the image has %d; unlisted channels get index labels",
            where,
            len(labels),
            n,
        )
        labels = labels[:n] + [str(i) for i in range(len(labels), n)]
    return tuple(labels)
