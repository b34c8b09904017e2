"""Find the images (scenes) of a store: a single image, an HCS plate or a bioformats2raw collection.

Scene ids: ``""`` for a single image, ``"A/1/0"`` (row/column/field path) for plate fields,
the series path (``"0"``, ``"1"``...) for bioformats2raw collections. Only metadata is read.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import pydantic
import zarr

from zarrstain.errors import MetadataError, NotOmeZarrError, SceneNotFoundError
from zarrstain.io._zarr_compat import map_io
from zarrstain.io.metadata import ome_attrs, ome_version
from zarrstain.io.recent import Recent

__all__ = ["Layout", "find_layout", "select_scenes"]

logger = logging.getLogger(__name__)

LayoutKind = Literal["image", "plate", "bioformats2raw"]


@dataclass(frozen=True)
class Layout:
    """Where the images of a store are.

    Attributes
    ----------
    kind
        ``"image"``, ``"plate"`` or ``"bioformats2raw"``.
    version
        NGFF version of the root (``"0.4"`` or ``"0.5"``).
    scenes
        Scene id → path of the image group inside the store, in store order.
    root_attrs
        The root group's attributes (plate metadata is copied from here for new stores).
    groups
        The image (and well) groups the crawl opened, by path (reused: on an object store each
        open is a round trip); the most recently used :data:`~zarrstain.io.recent.HELD`.
    """

    kind: LayoutKind
    version: str
    scenes: dict[str, str]
    root_attrs: dict[str, Any]
    groups: dict[str, zarr.Group] = field(default_factory=Recent, repr=False, compare=False)


def _child_group(group: zarr.Group, path: str) -> zarr.Group | None:
    try:
        node = group[path]
    except KeyError:
        return None
    return node if isinstance(node, zarr.Group) else None


def _validate_model(model: Any, payload: dict[str, Any], where: str, key: str) -> None:
    try:
        model.model_validate(payload)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or key
        raise MetadataError(where, field, err["msg"]) from None


def _plate_scenes(
    root: zarr.Group, version: str, where: str, groups: dict[str, zarr.Group]
) -> dict[str, str]:
    _, ome = ome_attrs(root)
    if version == "0.4":
        from ome_zarr_models.v04.plate import Plate
        from ome_zarr_models.v04.well_types import WellMeta
    else:
        from ome_zarr_models.v05.plate import Plate
        from ome_zarr_models.v05.well_types import WellMeta
    plate = ome["plate"]
    _validate_model(Plate, plate, where, "plate")

    def well_fields(item: tuple[int, dict[str, Any]]) -> list[str]:
        i, well = item
        well_path = well["path"]
        group = _child_group(root, well_path)
        if group is None:
            raise MetadataError(
                where,
                f"plate.wells[{i}].path",
                f"well {well_path!r} is listed but no group exists there",
                "every listed well to exist",
            )
        well_where = f"{where}/{well_path}"
        _, well_ome = ome_attrs(group)
        if "well" not in well_ome:
            raise MetadataError(well_where, "well", "no well metadata", "a 'well' entry")
        _validate_model(WellMeta, well_ome["well"], well_where, "well")
        found = {well_path: group}  # kept for copying well metadata
        for j, image in enumerate(well_ome["well"]["images"]):
            image_group = _child_group(group, image["path"])
            if image_group is None:
                raise MetadataError(
                    well_where,
                    f"well.images[{j}].path",
                    f"field {image['path']!r} is listed but no group exists there",
                    "every listed field to exist",
                )
            found[f"{well_path}/{image['path']}"] = image_group
        groups.update(found)  # (the most recent kept: a plate's do not pile up here)
        return [path for path in found if path != well_path]

    # wells are crawled concurrently: each is a few round trips to an object store
    wells = list(enumerate(plate["wells"]))
    return {path: path for found in map_io(well_fields, wells) for path in found}


def _bf2raw_scenes(root: zarr.Group, where: str) -> dict[str, str]:
    ome_group = _child_group(root, "OME")
    series: list[str] | None = None
    if ome_group is not None:
        _, ome_meta = ome_attrs(ome_group)
        if isinstance(ome_meta.get("series"), list):
            series = [str(s) for s in ome_meta["series"]]
    if series is None:
        # Without an OME/series list, the layout says series are 0, 1, 2... with no gaps.
        series = []
        while _child_group(root, str(len(series))) is not None:
            series.append(str(len(series)))
    for s in series:
        if _child_group(root, s) is None:
            raise MetadataError(
                where, "OME.series", f"series {s!r} is listed but no group exists", "every series"
            )
    if not series:
        raise MetadataError(where, "bioformats2raw.layout", "no series found", "series 0, 1, ...")
    return {s: s for s in series}


def find_layout(root: zarr.Group, where: str) -> Layout:
    """Work out the layout of the store whose root group is ``root`` (metadata only)."""
    version = ome_version(root, where)
    _, ome = ome_attrs(root)
    groups: dict[str, zarr.Group] = Recent()
    if "plate" in ome:
        kind: LayoutKind = "plate"
        scenes = _plate_scenes(root, version, where, groups)
    elif "bioformats2raw.layout" in ome:
        kind = "bioformats2raw"
        scenes = _bf2raw_scenes(root, where)
    elif "multiscales" in ome:
        kind, scenes = "image", {"": ""}
    else:
        raise NotOmeZarrError(
            f"{where} has OME-Zarr {version} metadata but neither an image (multiscales), a "
            "plate nor a bioformats2raw layout at its root; point to the root of an image or plate"
        )
    logger.debug("%s: %s layout with %d scenes", where, kind, len(scenes))
    return Layout(kind, version, scenes, root.attrs.asdict(), groups)


def select_scenes(layout: Layout, scenes: str | list[str] | None, where: str) -> list[str]:
    """Validate requested scene ids against the layout (all scenes when ``scenes`` is None)."""
    if scenes is None:
        return list(layout.scenes)
    wanted = [scenes] if isinstance(scenes, str) else list(scenes)
    for s in wanted:
        if s not in layout.scenes:
            raise SceneNotFoundError(
                f"scene {s!r} is not in {where}; available: {_preview(list(layout.scenes))}"
            )
    return wanted


def _preview(ids: list[str], n: int = 8) -> str:
    shown = ", ".join(repr(i) for i in ids[:n])
    return shown + (f" ... ({len(ids)} in all)" if len(ids) > n else "")
