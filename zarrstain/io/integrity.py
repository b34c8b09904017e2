"""Damaged stores: chunks that cannot be decoded, and chunks that are missing.

A chunk that fails to decode (truncated file, bad compression) raises a
:class:`~zarrstain.errors.DataError` naming the array and the region, instead of a codec's
message from deep inside dask. A missing chunk is not an error to zarr (it reads as the fill
value, and writers may skip chunks that hold only that value), but for the transmitted-light
input of a model it almost always means an incomplete copy: :func:`missing_chunks` finds them
from a listing of the store, before anything is computed.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import zarr

from zarrstain.errors import DataError, option
from zarrstain.io._zarr_compat import can_list
from zarrstain.io.chunkgrid import keys_in, stored_keys

__all__ = ["ChunkReader", "missing_chunks"]

logger = logging.getLogger(__name__)


class ChunkReader:
    """A zarr array for ``dask.array.from_array`` whose unreadable chunks raise ``DataError``.

    Parameters
    ----------
    array
        The zarr array.
    where
        The array's location, for messages.
    """

    def __init__(self, array: zarr.Array, where: str) -> None:
        self.array, self.where = array, where
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, selection: Any) -> np.ndarray:
        return self.read(selection)

    def read(self, selection: Any, orthogonal: bool = False) -> np.ndarray:
        """``array[selection]`` (``orthogonal``: ``array.oindex[selection]``, for index lists)."""
        try:
            return self.array.oindex[selection] if orthogonal else self.array[selection]
        except MemoryError:
            raise
        except Exception as exc:
            raise DataError(
                f"{self.where}: cannot read the chunk(s) at {_describe(selection)} "
                f"({type(exc).__name__}: {exc}); the store is damaged: restore it from a "
                f"copy, or leave this scene out ({option('scenes=', '--scene')})"
            ) from exc


def _describe(selection: Any) -> str:
    items = selection if isinstance(selection, tuple) else (selection,)
    parts = []
    for s in items:
        if isinstance(s, slice):
            parts.append(f"{s.start or 0}:{s.stop}")
        else:
            parts.append(str(s))
    return "[" + ", ".join(parts) + "]"


def missing_chunks(
    array: zarr.Array, region: tuple[slice, ...], where: str, allow: bool = False
) -> int:
    """Count the chunks of ``region`` that are absent; raise unless ``allow``.

    Raises
    ------
    DataError
        Some are absent and ``allow`` is false.
    """
    if not can_list(array):
        logger.debug("%s: the store cannot list its keys; missing chunks are not checked", where)
        return 0
    try:
        present = stored_keys(array)
    except (OSError, NotImplementedError) as exc:  # e.g. HTTP servers without index pages
        logger.debug("%s: listing failed (%s); missing chunks are not checked", where, exc)
        return 0
    expected = [key for key, _ in keys_in(array, region)]
    missing = [key for key in expected if key not in present]
    if missing and not allow:
        raise DataError(
            f"{where}: {len(missing)} of {len(expected)} input chunks are missing (first: "
            f"{missing[0]!r}); they would read as the fill value {array.fill_value}. Complete "
            "the copy of the store, or pass "
            + option("allow_missing_chunks=True", "--allow-missing-chunks")
            + " if those regions are empty on purpose"
        )
    return len(missing)
