"""A microscope stand-in: replay a finished acquisition into a new store, time point by time point.

For trying :func:`zarrstain.watch` without a microscope, and for testing and benchmarking it
(``tests/live/stream_writer.py`` runs it in another process). It writes as zarr-python,
ome-zarr-py and iohub writers do: every group with its OME metadata first (the wells, then the
plate or image metadata), every level array with no time points, then each time point appended
to every level of every image (the arrays grow, then their chunks are written); or, as iohub's
``create_zeros``, every array allocated with all its time points first, then filled.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zarr

from zarrstain.io.opened import OpenStore, open_store

__all__ = ["replay"]

logger = logging.getLogger(__name__)


def _prepare(
    ref: OpenStore, live: zarr.Group, preallocate: bool
) -> dict[str, list[tuple[Any, Any]]]:
    """Every group with its metadata, every level array with 0 time points (or all of them,
    ``preallocate``); (source, target) level pairs per image."""
    arrays: dict[str, list[tuple[Any, Any]]] = {}
    v3 = ref.root.metadata.zarr_format == 3
    for path in ref.layout.scenes.values():
        src = ref.group(path)
        parts = path.split("/") if path else []
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            live.require_group(parent).attrs.put(ref.root[parent].attrs.asdict())
        dst = live.require_group(path) if path else live
        dst.attrs.put(src.attrs.asdict())
        arrays[path] = []
        for level in ref.meta(path).levels:
            a = src[level.path]
            kwargs = {"dimension_names": a.metadata.dimension_names} if v3 else {}
            shape = a.shape if preallocate else (0, *a.shape[1:])
            b = dst.create_array(level.path, shape=shape, chunks=a.chunks,
                                 dtype=a.dtype, fill_value=a.fill_value, **kwargs)  # fmt: skip
            arrays[path].append((a, b))
    live.attrs.put(ref.root.attrs.asdict())  # the plate (or image) metadata last, as writers do
    return arrays


def replay(
    reference: str | Path,
    live: str | Path,
    *,
    interval: float = 1.0,
    stall_at: int | None = None,
    preallocate: bool = False,
    on_written: Callable[[int, float], Any] | None = None,
) -> None:
    """Write the time-lapse ``reference`` into a new store ``live``, one time point per interval.

    Parameters
    ----------
    reference
        A finished OME-Zarr image or plate whose arrays have time on their first axis.
    live
        The new store (replaced if it exists).
    interval
        Seconds between time points (the acquisition's frame interval: time point t is
        written from ``(t + 1) * interval`` seconds after the start).
    stall_at
        Write the time points before this one, then only the first channel of it, and return
        (a writer that stops mid time point); None: write them all.
    preallocate
        Create the arrays with every time point (as iohub's ``create_zeros``) and fill them,
        instead of appending: the arrays' metadata are then never rewritten.
    on_written
        Called with ``(t, time.time())`` once every chunk of time point ``t`` is written.
    """
    ref = open_store(reference, "r")
    target = zarr.open_group(live, mode="w", zarr_format=ref.root.metadata.zarr_format)
    arrays = _prepare(ref, target, preallocate)
    n_t = next(iter(arrays.values()))[0][0].shape[0]
    start = time.monotonic()
    for t in range(n_t):
        # a fixed frame period, as a microscope's: writing a time point does not delay the next
        time.sleep(max(start + (t + 1) * interval - time.monotonic(), 0.0))
        for levels in arrays.values():
            for src, dst in levels:
                if not preallocate:
                    dst.resize((t + 1, *dst.shape[1:]))
                if stall_at == t:
                    dst[t, :1] = src[t, :1]
                else:
                    dst[t] = src[t]
        if stall_at == t:
            logger.info("replay: stopped in the middle of time point %d", t)
            return
        if on_written is not None:
            on_written(t, time.time())
