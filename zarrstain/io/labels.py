"""OME-Zarr labels: instance masks written beside an image (``<image>/labels/<name>``).

A label image is an image group of integer object ids (0 background) with the image's axes,
its channel axis of size 1, and one level per image level (each a nearest-neighbour subsample
of the full resolution: ids are never averaged), plus ``image-label`` metadata; the image's
``labels`` group lists it. ome-zarr-py, napari and QuPath open it as a labels layer.

Crash safety follows the channels' rule, one label image at a time: the arrays are written
under a group that carries only a pending record (no OME metadata, so no reader takes it for a
label image), then the metadata in one write, then the name is added to the ``labels`` list.
A run cut short leaves either an unlisted group, which the next run replaces, or a complete
one, which the next run keeps when it holds the same labels (same fingerprint): an interrupted
evaluation of a plate resumes where it stopped, one field's labels at a time.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import zarr

from zarrstain import __version__
from zarrstain.errors import ChannelExistsError
from zarrstain.io._zarr_compat import create_image
from zarrstain.io.lock import group_lock
from zarrstain.io.metadata import ImageMeta, ome_attrs
from zarrstain.io.pending import KEY, now
from zarrstain.io.pyramid import level_factor

__all__ = ["label_names", "write_labels"]

logger = logging.getLogger(__name__)

#: the dtype of label images (napari, ome-zarr-py and QuPath read it; 4 billion objects)
LABEL_DTYPE = np.dtype("uint32")


def label_names(image: zarr.Group) -> list[str]:
    """The label images listed under ``image``'s ``labels`` group."""
    group = image.get("labels")
    return label_names_of(group) if isinstance(group, zarr.Group) else []


def stored_labels(image: zarr.Group, name: str) -> dict[str, Any] | None:
    """The provenance of the complete label image ``name`` of ``image`` (None: none there)."""
    group = image.get(f"labels/{name}")
    if not isinstance(group, zarr.Group) or "image-label" not in ome_attrs(group)[1]:
        return None
    return dict((group.attrs.get("zarrstain") or {}).get("labels") or {})


def read_labels(image: zarr.Group, meta: ImageMeta, name: str, t: int = 0) -> np.ndarray:
    """Time point ``t`` of the label image ``name`` at full resolution, as (z, y, x)."""
    arr = image[f"labels/{name}/{meta.levels[0].path}"]
    dims = meta.axis_names
    index = tuple(t if d == "t" else 0 if d == "c" else slice(None) for d in dims)
    out = np.asarray(arr[index])
    return out if "z" in dims else out[None]


class LabelWrite:
    """A label image being written, one time point at a time (see the module's steps).

    Use :meth:`begin`, then :meth:`write` each time point, then :meth:`finish`.
    """

    def __init__(self, image: zarr.Group, meta: ImageMeta, name: str, arrays: list) -> None:
        self.image, self.meta, self.name, self.arrays = image, meta, name, arrays
        self.objects = 0

    @classmethod
    def begin(cls, image: zarr.Group, meta: ImageMeta, name: str) -> LabelWrite:
        """Create the label image's arrays under a pending record (an earlier one replaced).

        Raises
        ------
        ChannelExistsError
            A label image ``name`` exists that zarrstain did not write (never replaced).
        """
        if "/" in name or not name.strip():
            raise ValueError(f"label image name {name!r} must be non-empty and hold no '/'")
        dims = meta.axis_names
        with group_lock(image) as locked:
            parent = locked.require_group("labels")
            old = parent.get(name)
            if old is not None:
                if not isinstance(old, zarr.Group) or not old.attrs.get("zarrstain"):
                    raise ChannelExistsError(
                        f"{meta.path or 'image'}/labels/{name} exists and was not written by "
                        "zarrstain; it is never replaced: remove it or name the objects "
                        "differently"
                    )
                del parent[name]
            layouts = [(lvl.path, _one_channel(lvl.shape, dims), _one_channel(lvl.chunks, dims))
                       for lvl in meta.levels]  # fmt: skip
            pending = {"zarrstain": {KEY: {"kind": "labels", "name": name, "started": now()}}}
            _, arrays = create_image(parent, name, pending, layouts, LABEL_DTYPE, dims)
        return cls(image, meta, name, arrays)

    def write(self, t: int, labels: np.ndarray) -> None:
        """Time point ``t``'s (z, y, x) labels, into every level."""
        dims = self.meta.axis_names
        one = lambda shape: tuple(1 if d == "t" else n for d, n in zip(dims, shape, strict=True))  # noqa: E731
        full = _to_image_axes(np.asarray(labels)[None], dims, one(self.meta.levels[0].shape))
        self.objects = max(self.objects, int(full.max(initial=0)))
        index = tuple(slice(t, t + 1) if d == "t" else slice(None) for d in dims)
        for arr in self.arrays:
            arr[index] = _subsample(full, one(arr.shape))

    def finish(self, record: dict[str, Any]) -> None:
        """The metadata (``record`` as provenance), then the name in the ``labels`` list."""
        with group_lock(self.image) as locked:
            parent = locked["labels"]
            group = parent[self.name]
            group.attrs.put(_label_attrs(locked, self.meta, self.name, record))
            _list(parent, self.name, self.meta.version)
        logger.info("%s/labels/%s: written", self.meta.path or "image", self.name)


def write_labels(
    image: zarr.Group,
    meta: ImageMeta,
    name: str,
    labels: np.ndarray,
    record: dict[str, Any],
) -> None:
    """Write (t, z, y, x) ``labels`` as the label image ``name`` of ``image``, with pyramid.

    ``record`` is stored as its provenance (``attrs["zarrstain"]["labels"]``). A label image
    zarrstain wrote before under that name is replaced; one it did not write is refused
    (:class:`~zarrstain.errors.ChannelExistsError`).
    """
    write = LabelWrite.begin(image, meta, name)
    for t, frame in enumerate(np.asarray(labels)):
        write.write(t, frame)
    write.finish(record)


def _c(dims: tuple[str, ...]) -> int:
    return dims.index("c") if "c" in dims else -1


def _one_channel(sizes: tuple[int, ...], dims: tuple[str, ...]) -> tuple[int, ...]:
    """A shape or chunk shape with the channel axis (if any) of size 1."""
    return tuple(1 if d == "c" else n for d, n in zip(dims, sizes, strict=True))


def _to_image_axes(labels: np.ndarray, dims: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
    """(t, z, y, x) labels in the image's axes (channel axis of size 1)."""
    if labels.ndim != 4:
        raise ValueError(f"labels must be (t, z, y, x), not of shape {labels.shape}")
    named = dict(zip("tzyx", range(4), strict=True))
    drop = tuple(i for d, i in named.items() if d not in dims)
    if any(labels.shape[i] != 1 for i in drop):
        raise ValueError(f"labels of shape {labels.shape} for an image with axes {''.join(dims)}")
    out = labels.reshape([n for i, n in enumerate(labels.shape) if i not in drop])
    present = [d for d in "tzyx" if d in dims]
    out = out.transpose([present.index(d) for d in dims if d != "c"])
    if "c" in dims:
        out = np.expand_dims(out, _c(dims))
    expected = tuple(1 if d == "c" else n for d, n in zip(dims, shape, strict=True))
    if out.shape != expected:
        raise ValueError(f"labels of shape {out.shape} for an image of shape {expected}")
    return out.astype(LABEL_DTYPE)


def _subsample(full: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour level of ``full``: every f-th voxel, f the level's integer factor
    (:func:`~zarrstain.io.pyramid.level_factor`, the image's own levels' rule)."""
    factors = level_factor(full.shape, shape)
    return full[tuple(slice(0, m * f, f) for m, f in zip(shape, factors, strict=True))]


def _label_attrs(
    image: zarr.Group, meta: ImageMeta, name: str, record: dict[str, Any]
) -> dict[str, Any]:
    """The label image's metadata: the image's multiscales renamed, and ``image-label``."""
    version, ome = ome_attrs(image)
    ms = copy.deepcopy((ome.get("multiscales") or [{}])[0])
    ms["name"] = name
    ms.pop("type", None)  # the image's downsampling method does not apply: nearest neighbour
    ms["metadata"] = {"method": "nearest-neighbour subsample (zarrstain)"}
    provenance = {"labels": {**record, "zarrstain_version": __version__, "time": now()}}
    if meta.version == "0.5":
        label = {"source": {"image": "../../"}}
        ome_out = {"version": version or meta.version, "multiscales": [ms], "image-label": label}
        return {"ome": ome_out, "zarrstain": provenance}
    label = {"source": {"image": "../../"}, "version": meta.version}
    return {"multiscales": [ms], "image-label": label, "zarrstain": provenance}


def _list(parent: zarr.Group, name: str, version: str) -> None:
    """Add ``name`` to the ``labels`` group's list (once)."""
    names = label_names_of(parent)
    if name in names:
        return
    names.append(name)
    attrs = parent.attrs.asdict()  # whatever else another tool keeps there stays
    if version == "0.5":
        attrs["ome"] = {**(attrs.get("ome") or {}), "version": "0.5", "labels": names}
    else:
        attrs["labels"] = names
    parent.attrs.put(attrs)


def label_names_of(labels_group: zarr.Group) -> list[str]:
    """The names a ``labels`` group lists."""
    return list(ome_attrs(labels_group)[1].get("labels") or [])
