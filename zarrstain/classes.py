"""Class labels of scenes: which treatment, compound or perturbation each well received.

Class-conditional models (diffusion with a class embedding) need each scene's class. It comes
from a file beside the plate (a table ``well,class`` or ``scene,class``, comma- or
tab-separated with one header row, or a JSON object well → class), from an attribute of the
field's or the well's zarr group (``class_key``), or one label for every scene. Wells are
matched however they are spelled: ``B/3``, ``B3`` and ``B03`` are one well, and a field
``B/3/1`` takes its well's class unless the table names the field itself.

>>> cm = ClassMap({"A/1": "control", "B/2/0": "treated"})
>>> cm.lookup("A/1/1"), cm.lookup("B/02/0"), cm.lookup("C/1/0")
('control', 'treated', None)
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zarrstain.errors import ParameterError, option

__all__ = ["ClassMap", "is_class_map_path", "read_class_map", "scene_class"]

_WELL = re.compile(r"^\s*([A-Za-z]+)\s*/?\s*0*(\d+)\s*(?:/\s*(\d+))?\s*$")


def _canonical(key: str) -> str:
    """``"b03"`` → ``"B/3"``, ``"B/3/1"`` → ``"B/3/1"``; other keys (image scenes) unchanged."""
    m = _WELL.match(str(key))
    if not m:
        return str(key).strip()
    row, col, fld = m.groups()
    return f"{row.upper()}/{int(col)}" + (f"/{int(fld)}" if fld is not None else "")


@dataclass(frozen=True)
class ClassMap:
    """Scene or well → class label.

    Parameters
    ----------
    labels
        Keys are wells (``"A/1"``, ``"A01"``), scenes (``"A/1/0"``, a series path, ``""``
        for a single image) or ``"*"`` (every scene not named).
    source
        Where the labels came from (for messages and provenance).
    """

    labels: Mapping[str, str] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "labels", {_canonical(k): str(v) for k, v in dict(self.labels).items()}
        )

    def lookup(self, scene: str) -> str | None:
        """The class of a scene: its own entry, else its well's, else ``"*"``'s, else None."""
        key = _canonical(scene)
        if key in self.labels:
            return self.labels[key]
        parts = key.split("/")
        if len(parts) == 3 and "/".join(parts[:2]) in self.labels:
            return self.labels["/".join(parts[:2])]
        return self.labels.get("*")

    @property
    def classes(self) -> list[str]:
        """The distinct labels, sorted."""
        return sorted(set(self.labels.values()))


#: suffixes that make a string a class map path, never a class label (even if missing)
TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".json", ".yaml", ".yml")
_FORMATS = "a CSV/TSV table with a header well,class or scene,class, or a JSON object well → class"


def read_class_map(path: str | os.PathLike) -> ClassMap:
    """A class map from a file: a CSV/TSV table or a JSON object.

    The format is read from the content, not the name: a JSON object (``{"A/1": "control",
    "B/2": "treated"}``) or list of ``{"well": ..., "class": ...}`` records; otherwise a
    comma- or tab-separated table with a header row ``well,class`` or ``scene,class``.

    Raises
    ------
    ParameterError
        No such file, a file that is neither format, no ``class`` column, no ``well``/
        ``scene`` column, or an empty map. The message names the file and the formats.
    """
    p = Path(path)
    if not p.is_file():
        raise ParameterError(
            f"class map {str(path)!r} does not exist; give {_FORMATS} "
            f"({option('classes=', '--class-map')})"
        )
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ParameterError(f"class map {p} is not a text file; give {_FORMATS}") from None
    if text.lstrip().startswith(("{", "[")):
        return ClassMap(_json_labels(text, p), source=str(p))
    first = text.splitlines()[0] if text.strip() else ""
    dialect = "excel-tab" if "\t" in first else "excel"
    rows = list(csv.DictReader(text.splitlines(), dialect=dialect))
    header = {h.strip().lower(): h for h in (rows[0].keys() if rows else []) if h}
    key = header.get("scene") or header.get("well")
    if "class" not in header or key is None:
        raise ParameterError(
            f"class map {p} is not {_FORMATS}: its first row {first[:80]!r} has no 'class' "
            "column and 'well' or 'scene' column"
        )
    labels = {r[key].strip(): r[header["class"]].strip() for r in rows if r.get(key)}
    if not labels:
        raise ParameterError(f"class map {p} names no scene or well")
    return ClassMap(labels, source=str(p))


def _json_labels(text: str, p: Path) -> dict[str, str]:
    import json

    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ParameterError(f"class map {p} is not valid JSON ({exc}); give {_FORMATS}") from None
    if isinstance(data, list):  # records, as a table's rows
        try:
            data = {str(r.get("scene", r.get("well"))): r["class"] for r in data}
        except (AttributeError, KeyError):
            raise ParameterError(
                f"class map {p}: a JSON list needs records with 'class' and 'well' or 'scene'"
            ) from None
    if not isinstance(data, dict) or not data:
        raise ParameterError(f"class map {p} names no scene or well; give {_FORMATS}")
    bad = [k for k, v in data.items() if not isinstance(v, str | int) or isinstance(v, bool)]
    if bad:
        raise ParameterError(
            f"class map {p}: the class of {bad[0]!r} is {data[bad[0]]!r}; expected a label"
        )
    return {str(k): str(v) for k, v in data.items()}


def is_class_map_path(value: Any) -> bool:
    """Whether ``value`` names a class map file rather than being a class label.

    A path object, an existing file, or a string with a table's suffix (a missing
    ``classes.json`` is a missing file, never a class called "classes.json").
    """
    if isinstance(value, os.PathLike):
        return True
    return isinstance(value, str) and (
        Path(value).suffix.lower() in TABLE_SUFFIXES or Path(value).is_file()
    )


def _attribute(scene: Any, key: str) -> str | None:
    """``key`` of the scene's zarr group, else of its well (the group above)."""
    import zarr

    store, sid = scene.attrs.get("store"), scene.attrs.get("scene")
    if store is None or sid is None:
        return None
    root = zarr.open_group(store, mode="r")
    paths = [sid, sid.rsplit("/", 1)[0]] if "/" in sid else [sid]
    for path in paths:
        group = root[path] if path else root
        if key in group.attrs:
            return str(group.attrs[key])
    return None


def scene_class(classes: Any, scene: Any, class_key: str | None = None) -> str | None:
    """The class label of a scene (a DataArray from ``open_image``), or None.

    Parameters
    ----------
    classes
        A label (every scene's), a :class:`ClassMap`, a mapping scene/well → label, a path
        of a class map table, or None.
    scene
        The scene; its ``attrs["scene"]`` (and ``attrs["store"]`` for ``class_key``) find it.
    class_key
        An attribute of the field's or well's group holding the class.
    """
    if class_key is not None:
        label = _attribute(scene, class_key)
        if label is not None or classes is None:
            return label
    if classes is None:
        return None
    if is_class_map_path(classes):
        classes = read_class_map(classes)
    elif isinstance(classes, str):
        return classes
    elif isinstance(classes, Mapping):
        classes = ClassMap(classes)
    if not isinstance(classes, ClassMap):
        raise ParameterError(
            f"classes must be a label, a mapping scene/well → label, a ClassMap or a table "
            f"path, not {type(classes).__name__}"
        )
    return classes.lookup(str(scene.attrs.get("scene", "")))
