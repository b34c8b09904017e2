"""The state of a store another process is writing: its scenes and their complete time points.

Read afresh at every poll (shapes grow). Two kinds of stream are followed:

- a store whose OME metadata exist while it is written (zarr-python, ome-zarr-py and iohub
  writers, which write the metadata first and append time points): opened as any store;
- an image whose writer adds its OME metadata only when it closes the stream (acquire-zarr
  0.10): its levels ``0``, ``1``, … are found as arrays, its axes from their
  ``dimension_names``, its scales provisionally 1 (the output's metadata are corrected to the
  source's when they appear). The metadata appearing is the writer's signal that the
  acquisition is over (:attr:`Snapshot.closed`).
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Any

import zarr

from zarrstain.errors import NotOmeZarrError, UnsupportedError
from zarrstain.io.channels import INCOMPLETE_SUFFIX
from zarrstain.io.growth import complete_time_points
from zarrstain.io.layout import select_scenes
from zarrstain.io.metadata import Axis, ImageMeta, Level, canonical_dims, ome_attrs
from zarrstain.io.opened import OpenStore, open_store
from zarrstain.io.store import describe_store

__all__ = ["SceneState", "Snapshot", "scan"]

logger = logging.getLogger(__name__)

_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


@dataclass(frozen=True)
class SceneState:
    """One scene as the writer has written it so far.

    Attributes
    ----------
    scene, gpath
        Its id and group path.
    group, meta
        Its group (a stand-in with no attributes for a provisional image) and metadata.
    ome
        ``(NGFF version, OME attributes)`` of its group, as the output image copies them.
    declared
        Time points the arrays' shape holds.
    complete
        Time points written in full (:func:`zarrstain.io.growth.complete_time_points`).
    """

    scene: str
    gpath: str
    group: Any
    meta: ImageMeta
    ome: tuple[str, dict[str, Any]]
    declared: int
    complete: int


@dataclass(frozen=True)
class Snapshot:
    """The store at one poll.

    Attributes
    ----------
    scenes
        Scene id → state, for the scenes followed.
    opened
        The store as opened (None for a provisional image).
    provisional
        The image's OME metadata are not written yet (acquire-zarr writes them on close).
    """

    scenes: dict[str, SceneState]
    opened: OpenStore | None
    provisional: bool


def scan(
    path: Any,
    scenes: list[str] | None = None,
    *,
    final: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> Snapshot:
    """Read the store's scenes and how many time points of each are complete.

    Parameters
    ----------
    path
        The store being written.
    scenes
        Scene ids to follow (default: all).
    final
        The acquisition is over: time points of a last multi-time-point chunk count.
    storage_options
        fsspec options for URLs.

    Raises
    ------
    ZarrstainError
        Nothing is there yet, the store is not OME-Zarr, or a scene has no time axis.
    """
    try:
        src = open_store(path, "r", storage_options)
    except NotOmeZarrError:
        meta_ome = _provisional(path, storage_options)
        if meta_ome is None:
            raise
        meta, ome, arr = meta_ome
        if scenes not in (None, [""]):
            raise UnsupportedError(
                f"{describe_store(path)}: its writer has not written its OME metadata yet "
                "(acquire-zarr writes them when it closes), so it has no scenes to choose from; "
                "leave the scene selection out"
            ) from None
        state = _state("", "", types.SimpleNamespace(path="", attrs={}), meta, ome, arr, final)
        return Snapshot({"": state}, None, True)
    states = {}
    for sid in select_scenes(src.layout, scenes, src.where):
        gpath = src.layout.scenes[sid]
        group, meta = src.group(gpath), src.meta(gpath)
        level = meta.levels[0]
        arr = level.array if level.array is not None else group[level.path]
        states[sid] = _state(sid, gpath, group, meta, ome_attrs(group), arr, final)
    return Snapshot(states, src, False)


def _state(
    sid: str, gpath: str, group: Any, meta: ImageMeta, ome: Any, arr: zarr.Array, final: bool
) -> SceneState:
    dims = meta.axis_names
    if not dims or dims[0] != "t":
        where = f"scene {sid!r}" if sid else "the image"
        raise UnsupportedError(
            f"{where} has axes {''.join(dims)}, with no time axis first: there is no time-lapse "
            "to follow; predict it with zarrstain predict"
        )
    complete = complete_time_points(arr, final=final, extent=_acquired(group, meta))
    return SceneState(sid, gpath, group, meta, ome, int(arr.shape[0]), complete)


def _acquired(group: Any, meta: ImageMeta) -> list[int | None] | None:
    """Per axis, the extent of the acquired data: channels zarrstain wrote (listed in its
    provenance, after the acquired ones) are left out, or ``watch`` in place would wait for
    its own predictions of the time points it has not predicted yet."""
    dims = meta.axis_names
    written = set((group.attrs.get("zarrstain") or {}).get("channels") or {})
    if "c" not in dims or not written:
        return None
    labels = [lab.removesuffix(INCOMPLETE_SUFFIX) for lab in meta.labels]
    acquired = [i for i, lab in enumerate(labels) if lab not in written]
    extent: list[int | None] = [None] * len(dims)
    extent[dims.index("c")] = max(acquired, default=-1) + 1
    return extent


def _provisional(
    path: Any, storage_options: dict[str, Any] | None
) -> tuple[ImageMeta, tuple[str, dict[str, Any]], zarr.Array] | None:
    """An image whose levels exist as arrays ``0``, ``1``, … before its group metadata do."""
    levels: list[zarr.Array] = []
    while True:
        try:
            extra = {"storage_options": storage_options} if storage_options else {}
            arr = zarr.open_array(store=path, path=str(len(levels)), mode="r", **extra)
        except (FileNotFoundError, KeyError, ValueError):  # no array (metadata) there (yet)
            break
        levels.append(arr)
    if not levels:
        return None
    names = getattr(levels[0].metadata, "dimension_names", None)
    if not names or any(n not in _TYPES for n in names):
        return None
    axes = tuple(Axis(n, _TYPES[n], None) for n in names)
    shape0 = levels[0].shape
    ome_levels, datasets = [], []
    for k, arr in enumerate(levels):
        scale = tuple(
            1.0 if _TYPES[n] != "space" else float(s0) / float(s)
            for n, s0, s in zip(names, shape0, arr.shape, strict=True)
        )
        zero = (0.0,) * len(names)
        ome_levels.append(
            Level(str(k), tuple(arr.shape), tuple(arr.chunks), str(arr.dtype), scale, zero, arr)
        )
        datasets.append(
            {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}
        )
    version = "0.5" if levels[0].metadata.zarr_format == 3 else "0.4"
    ms: dict[str, Any] = {
        "axes": [{"name": a.name, "type": a.type} for a in axes],
        "datasets": datasets,
        "name": "stream",
    }
    if version == "0.4":
        ms["version"] = version
    canonical_dims(axes)  # (checks the names)
    meta = ImageMeta("", version, axes, tuple(ome_levels), None, None)
    return meta, (version, {"multiscales": [ms]}), levels[0]
