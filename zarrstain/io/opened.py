"""A store opened once: its root group, its name for messages and its parsed layout.

Opening a store and parsing its layout are metadata requests (many of them for a plate on an
object store). :func:`open_store` does both once; :func:`~zarrstain.open_scenes`,
:func:`~zarrstain.io.read.check_chunks` and :func:`~zarrstain.write_channels` accept the
result wherever they take a store, so a planned run does not repeat them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import zarr

from zarrstain.io.layout import Layout, find_layout
from zarrstain.io.metadata import ImageMeta, parse_image
from zarrstain.io.recent import Recent
from zarrstain.io.store import describe_store, open_root, store_location

__all__ = ["OpenStore", "open_store"]


@dataclass(frozen=True)
class OpenStore:
    """An opened store.

    Attributes
    ----------
    path
        The store as the user gave it (a path, URL, zarr store or group).
    root
        Its root group.
    where
        Its name for messages.
    layout
        Its scenes (image, plate or bioformats2raw collection).
    mode
        ``"r"`` or ``"r+"``.
    """

    path: Any
    root: zarr.Group
    where: str
    layout: Layout
    mode: str
    #: parsed metadata of the images used last (a plate's grows no further: see Recent)
    _metas: Recent[str, ImageMeta] = field(default_factory=Recent, repr=False, compare=False)

    def meta(self, gpath: str) -> ImageMeta:
        """The parsed, validated metadata of the image at ``gpath`` (read once per store).

        In place, writers parse an image again under its lock: this is the state when opened.
        """
        meta = self._metas.get(gpath)
        if meta is None:
            meta = self._metas[gpath] = parse_image(self.group(gpath), self.where_of(gpath))
        return meta

    def group(self, gpath: str) -> zarr.Group:
        """The group at ``gpath`` (the root for ``""``); opened once when read-only.

        Opened for writing, each call opens it again: its attributes are those of now.
        """
        if not gpath:
            return self.root
        if self.mode != "r":
            return self.root[gpath]
        group = self.layout.groups.get(gpath)
        if group is None:
            group = self.layout.groups[gpath] = self.root[gpath]
        return group

    @functools.cached_property
    def location(self) -> str:
        """Where the store is, spelled one way (:func:`~zarrstain.io.store.store_location`)."""
        return store_location(self.path)

    def where_of(self, gpath: str) -> str:
        """The name of the group at ``gpath``, for messages."""
        return f"{self.where}/{gpath}" if gpath else self.where


def open_store(
    path: Any,
    mode: Literal["r", "r+"] = "r",
    storage_options: dict[str, Any] | None = None,
) -> OpenStore:
    """Open ``path`` and parse its layout, or reuse an :class:`OpenStore` opened as needed.

    A store opened ``"r+"`` serves reads too; one opened ``"r"`` is reopened for writing.

    Raises
    ------
    ZarrstainError
        As :func:`~zarrstain.io.store.open_root` and :func:`~zarrstain.io.layout.find_layout`.
    """
    if isinstance(path, OpenStore):
        if mode == "r" or path.mode == mode:
            return path
        path = path.path
    root = open_root(path, mode, storage_options)
    where = describe_store(path)
    return OpenStore(path, root, where, find_layout(root, where), mode)
