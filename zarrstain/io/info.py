"""Describe a store: its layout and every scene's shape, dtype, chunks, channels and pyramid."""

from __future__ import annotations

from typing import Any

from zarrstain.io.layout import find_layout
from zarrstain.io.metadata import parse_image
from zarrstain.io.store import StoreLike, describe_store, open_root

__all__ = ["describe", "format_description"]


def describe(path: StoreLike, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON-serialisable description of an OME-Zarr store (reads metadata only).

    Returns
    -------
    dict
        ``store``, ``layout`` (image / plate / bioformats2raw), ``ngff_version`` and
        ``scenes``: one entry per scene with ``id``, ``path``, ``axes``, ``shape``, ``dtype``,
        ``chunks``, ``channels``, ``scale``, ``translation``, ``units``, ``levels`` and the
        ``zarrstain`` provenance of channels zarrstain wrote.
    """
    root = open_root(path, "r", storage_options)
    where = describe_store(path)
    layout = find_layout(root, where)
    scenes = []
    for sid, gpath in layout.scenes.items():
        group = root[gpath] if gpath else root
        meta = parse_image(group, f"{where}/{gpath}" if gpath else where)
        full = meta.levels[0]
        scenes.append(
            {
                "id": sid,
                "path": gpath,
                "axes": "".join(meta.axis_names),
                "shape": list(full.shape),
                "dtype": full.dtype,
                "chunks": list(full.chunks),
                "channels": list(meta.channel_labels or []),
                "scale": list(full.scale),
                "translation": list(full.translation),
                "units": meta.units(),
                "levels": [{"path": lv.path, "shape": list(lv.shape)} for lv in meta.levels],
                "zarrstain": group.attrs.get("zarrstain"),
            }
        )
    return {
        "store": where,
        "layout": layout.kind,
        "ngff_version": layout.version,
        "scenes": scenes,
    }


def _fmt_shape(axes: str, shape: list[int]) -> str:
    return " ".join(f"{a}={n}" for a, n in zip(axes, shape, strict=True))


def format_description(info: dict[str, Any]) -> str:
    """Render :func:`describe`'s result as an indented text tree."""
    n = len(info["scenes"])
    lines = [
        f"{info['store']}  (OME-Zarr {info['ngff_version']}, {info['layout']}, "
        f"{n} scene{'s' if n != 1 else ''})"
    ]
    for k, s in enumerate(info["scenes"]):
        last = k == n - 1
        branch, pad = ("└── ", "    ") if last else ("├── ", "│   ")
        name = repr(s["id"]) if s["id"] else "(image)"
        lines.append(f"{branch}{name}  {_fmt_shape(s['axes'], s['shape'])}  {s['dtype']}")
        units = s["units"]
        scale = ", ".join(
            f"{a}={v:g}{(' ' + units[a]) if a in units else ''}"
            for a, v in zip(s["axes"], s["scale"], strict=True)
            if a != "c"
        )
        channels = ", ".join(s["channels"]) if s["channels"] else "(unlabeled)"
        written = sorted(((s.get("zarrstain") or {}).get("channels") or {}).keys())
        lines += [
            f"{pad}channels: {channels}",
            f"{pad}chunks:   {_fmt_shape(s['axes'], s['chunks'])}",
            f"{pad}scale:    {scale}",
            f"{pad}levels:   "
            + "; ".join(f"{lv['path']} {'x'.join(map(str, lv['shape']))}" for lv in s["levels"]),
        ]
        if written:
            lines.append(f"{pad}written by zarrstain: {', '.join(written)}")
    return "\n".join(lines)
