"""Text of a prediction plan: what ``zarrstain predict --dry-run`` prints."""

from __future__ import annotations

from typing import Any

from dask.utils import format_bytes

__all__ = ["format_plan"]


def format_plan(description: dict[str, Any]) -> str:
    """A :meth:`PredictionPlan.describe` as text (``zarrstain predict --dry-run``)."""
    d = description
    scenes = d["scenes"]
    todo = sum(s["status"] == "to write" for s in scenes)
    lines = [
        f"store:  {d['store']}" + (f"  →  {d['out']}" if d["out"] else "  (in place)"),
        f"model:  {d['model']['name']} ({d['model']['content_hash'][:12]}), "
        f"normalization {d['normalization']}, " + _locality(d["model"]),
        f"scenes: {len(scenes)} ({todo} to write, {len(scenes) - todo} unchanged); "
        f"blocks to run: {d['blocks_to_run']}",
        "",
    ]
    header = (
        "scene",
        "status",
        "t×z×y×x",
        "inputs → outputs",
        "blocks",
        "block t×z×y×x",
        "halo z,y,x",
        "memory/block",
        "compute",
    )
    rows = [
        (
            s["scene"] or "(image)",
            s["status"],
            "×".join(map(str, s["shape_tzyx"])),
            f"{', '.join(s['inputs'])} → {', '.join(s['outputs'])}",
            str(s["blocks"]),
            "×".join(map(str, s["block_tzyx"])),
            ",".join(map(str, s["halo_zyx"])) + f" ({s['halo_mode']})",
            format_bytes(s["memory_per_block"]),
            f"{s['compute_ratio']:.2f}×",
        )
        for s in scenes
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _locality(model: dict[str, Any]) -> str:
    """ "local" (exact tiling possible) or not, and a sampler's passes and settings."""
    text = "local" if model.get("local", True) else "not local (one whole field per block)"
    sampling = model.get("sampling")
    if sampling:
        settings = ", ".join(f"{k} {v}" for k, v in sampling.items() if v not in (None, False, 0))
        text += f"; {model.get('passes', 1)} passes ({settings})"
    return text
