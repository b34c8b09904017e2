"""Plug-ins found through entry points, loaded only when asked for.

zarrstain is extended the way xarray backends, zarr codecs and napari plug-ins are: a package
declares entry points in its ``pyproject.toml``, and zarrstain finds them in any process (the
CLI, a notebook, a dask worker) with no ``register`` call and no ``--preload``::

    [project.entry-points."zarrstain.architectures"]
    mean-std = "my_package.family:MeanStd"        # an Architecture subclass or instance

    [project.entry-points."zarrstain.formats"]
    mean-std-json = "my_package.family:JsonFormat"  # a ModelFormat subclass or instance

    [project.entry-points."zarrstain.options"]
    mean-std = "my_package.options:OPTIONS"       # a FamilyOptions: its flags, read lightly

The entry point's name is the plug-in's ``name`` (the architecture name model cards store).
zarrstain's own families and formats are declared the same way in its ``pyproject.toml``.

Discovery is lazy: reading the entry-point table costs a few milliseconds and imports nothing;
a plug-in's module is imported the first time its name is looked up, or when every plug-in is
listed (``list(ARCHITECTURES)``). A plug-in that fails to import is skipped with a warning when
listing, and raises :class:`~zarrstain.errors.ModelError` naming its package when asked for by
name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, MutableMapping
from importlib.metadata import EntryPoint, entry_points
from typing import Generic, TypeVar

from zarrstain.errors import ModelError

__all__ = ["ARCHITECTURE_GROUP", "FORMAT_GROUP", "OPTIONS_GROUP", "PluginRegistry"]

logger = logging.getLogger(__name__)

#: entry-point group of model families (:class:`~zarrstain.models.Architecture`)
ARCHITECTURE_GROUP = "zarrstain.architectures"
#: entry-point group of model file formats (:class:`~zarrstain.models.ModelFormat`)
FORMAT_GROUP = "zarrstain.formats"
#: entry-point group of model families' option schemas
#: (:class:`~zarrstain.models.schema.FamilyOptions`, by family name): light modules, read
#: without importing the families, so that ``zarrstain predict --help`` imports no torch
OPTIONS_GROUP = "zarrstain.options"
#: ours win a clash of names, so a stray plug-in cannot shadow a built-in family
_OWN = "zarrstain"

T = TypeVar("T")


class PluginRegistry(MutableMapping[str, T], Generic[T]):
    """Name → plug-in: those registered in code, then the entry points of ``group``.

    Parameters
    ----------
    group
        The entry-point group.
    kind
        The base class every plug-in must be an instance of (a subclass is instantiated).
    what
        What a plug-in is, for messages (``"architecture"``).
    named
        Plug-ins carry a ``name`` that must be their entry point's.
    """

    def __init__(self, group: str, kind: type, what: str, *, named: bool = True) -> None:
        self.group, self.kind, self.what, self.named = group, kind, what, named
        self._items: dict[str, T] = {}
        self._points: dict[str, EntryPoint] | None = None
        self._failed: set[str] = set()

    def entry_points(self) -> dict[str, EntryPoint]:
        """The group's entry points by name, read once per process (:meth:`refresh` rereads)."""
        if self._points is None:
            found: dict[str, EntryPoint] = {}
            for ep in entry_points(group=self.group):
                dist = getattr(ep.dist, "name", "?")
                if ep.name in found and found[ep.name].value != ep.value:
                    kept = found[ep.name]
                    if getattr(kept.dist, "name", "") == _OWN or dist != _OWN:
                        logger.warning(
                            "%s %r is declared by two packages (%s and %s); using %s",
                            self.what, ep.name, getattr(kept.dist, "name", "?"), dist, kept.value,
                        )  # fmt: skip
                        continue
                found[ep.name] = ep
            self._points = found
        return self._points

    def hint(self) -> str:
        """What to do when a name is missing: install a plug-in, or zarrstain itself."""
        if not self.entry_points():  # not even ours: a source tree on sys.path, not installed
            return (
                "no plug-ins are installed, not even zarrstain's own: install zarrstain "
                "(pip install zarrstain, or pip install -e . in a checkout)"
            )
        return f"install the package that provides it (entry-point group {self.group!r})"

    def refresh(self) -> None:
        """Read the entry points again (after installing a plug-in into a running process)."""
        self._points = None
        self._failed.clear()

    def _load(self, name: str) -> T:
        ep = self.entry_points()[name]
        dist = getattr(ep.dist, "name", "an unknown package")
        try:
            obj = ep.load()
            if isinstance(obj, type) and issubclass(obj, self.kind):
                obj = obj()
        except Exception as exc:  # a plug-in's import error must not read as ours
            raise ModelError(
                f"the {self.what} plug-in {name!r} ({ep.value}, from {dist}) failed to load: "
                f"{type(exc).__name__}: {exc}; fix or uninstall {dist}"
            ) from exc
        if not isinstance(obj, self.kind):
            raise ModelError(
                f"the {self.what} plug-in {name!r} ({ep.value}, from {dist}) is "
                f"{obj.__name__ if isinstance(obj, type) else type(obj).__name__}, not an "
                f"instance or subclass of {self.kind.__name__}"
            )
        if self.named and getattr(obj, "name", None) != name:
            raise ModelError(
                f"the {self.what} plug-in {ep.value} (from {dist}) is declared as {name!r} but "
                f"is named {getattr(obj, 'name', None)!r}; the entry point's name must be its name"
            )
        logger.debug("loaded %s plug-in %s from %s", self.what, name, dist)
        return obj

    def __getitem__(self, name: str) -> T:
        if name in self._items:
            return self._items[name]
        if name not in self.entry_points():
            raise KeyError(name)
        self._items[name] = obj = self._load(name)
        return obj

    def __contains__(self, name: object) -> bool:
        return name in self._items or name in self.entry_points()

    def loaded(self) -> dict[str, T]:
        """The plug-ins registered or loaded so far (importing nothing more)."""
        return dict(self._items)

    def load_all(self) -> dict[str, T]:
        """Every plug-in, those that fail to import skipped with a warning (once)."""
        for name in self.entry_points():
            if name in self._items or name in self._failed:
                continue
            try:
                self[name]
            except ModelError as exc:
                self._failed.add(name)
                logger.warning("%s", exc)
        return dict(self._items)

    def __iter__(self) -> Iterator[str]:
        if not self.named:  # names are the entry points' own: listing them imports nothing
            return iter(dict.fromkeys([*self._items, *self.entry_points()]))
        return iter(self.load_all())

    def __len__(self) -> int:
        return len(self.load_all())

    def __setitem__(self, name: str, value: T) -> None:
        self._items[name] = value

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def clear(self) -> None:
        """Forget what was registered or loaded; entry points load again when asked for."""
        self._items.clear()
        self._failed.clear()

    def __repr__(self) -> str:
        return (
            f"PluginRegistry({self.group!r}: {sorted(set(self._items) | set(self.entry_points()))})"
        )
