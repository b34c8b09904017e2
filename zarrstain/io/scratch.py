"""Scratch stores: the intermediate passes of multi-pass models, on disk and resumable.

A pass is written as one zarr array named ``pass-<step>`` whose attribute ``zarrstain_pass``
is set to the pass's dask token only once every chunk is written. A later run with the same
token (same model, inputs, plan, seed) reads the array back instead of recomputing it, so a
long chain resumes after a crash at the last complete pass; an incomplete or different array
is rewritten. Once a pass is stored, the earlier passes are deleted: a resumed run starts from
the latest, so disk use stays one or two states whatever the number of passes. Zarr chunks
are the first block core along each axis: every block then writes zarr chunks no other block
touches (only the last block along an axis can be larger, and it owns the edge chunks), so
blocks write in parallel without locks.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from zarrstain.errors import ParameterError, option
from zarrstain.io.store import is_remote, store_location

__all__ = ["STORED", "persist_pass", "scratch_beside", "stored_pass"]

logger = logging.getLogger(__name__)

KEY = "zarrstain_pass"
#: prefix of a stored pass's dask name
STORED = "scratch-"


def persist_pass(arr: da.Array, scratch: str | os.PathLike, step: int) -> da.Array:
    """Compute ``arr`` (one pass's output) into ``scratch`` unless it is there, and read it back.

    Parameters
    ----------
    arr
        The pass's lazy output, (t, c, z, y, x) float32.
    scratch
        A folder for the scratch zarr store (created if missing).
    step
        The pass number (names the array).

    Returns
    -------
    dask.array.Array
        The stored pass, with ``arr``'s chunks.
    """
    root = zarr.open_group(os.fspath(scratch), mode="a")
    name, token = f"pass-{step}", arr.name
    found = stored_pass(scratch, step, token, arr.chunks)
    if found is not None:
        return found
    chunks = tuple(int(c[0]) for c in arr.chunks)
    target = root.create_array(
        name, shape=arr.shape, chunks=chunks, dtype=arr.dtype, overwrite=True, fill_value=0
    )
    logger.info("pass %d: computing into %s", step, scratch)
    da.store(arr, target, lock=False)
    target.attrs[KEY] = token  # last: marks the pass complete
    for old in list(root.array_keys()):  # the chain continues from this pass
        if old.startswith("pass-") and old != name and int(old[5:]) < step:
            del root[old]
    return da.from_zarr(target, chunks=arr.chunks, name=STORED + token)


def stored_pass(
    scratch: str | os.PathLike, step: int, token: str, chunks: tuple
) -> da.Array | None:
    """Pass ``step`` as stored in ``scratch`` by a run with this ``token``, or None.

    Read back under the name ``"scratch-" + token``, so the passes after it get the same
    tokens in any run (and find their own stored passes).
    """
    path = os.fspath(scratch)
    if not os.path.isdir(path):
        return None
    root = zarr.open_group(path, mode="r")
    name = f"pass-{step}"
    if name not in root or root[name].attrs.get(KEY) != token:
        return None
    logger.info("pass %d: complete in %s, reused", step, scratch)
    return da.from_zarr(root[name], chunks=chunks, name=STORED + token)


def scratch_beside(target: Any) -> Path:
    """The scratch folder of a run writing into ``target``: ``<store>.zarrstain-scratch``.

    Beside the store, not inside it: a zarr group inside would be listed as one of the store's
    children. Remote stores need an explicit local scratch folder.

    Raises
    ------
    ParameterError
        ``target`` is a URL.
    """
    if is_remote(target) or not isinstance(target, str | os.PathLike):
        raise ParameterError(
            f"a multi-pass model keeps its intermediate passes in a local scratch store, and "
            f"{target!r} is not a local path; give one with "
            + option("PredictOptions(scratch=...)", "--scratch DIR")
        )
    location = Path(store_location(target))
    return location.with_name(location.name + ".zarrstain-scratch")
