"""Repeated writes: is a write already done, and may it replace what is there?

A write is recognised as done by its producer's fingerprint (no compute) or, without one, by
comparing the stored data with the new data; adding time points a zarrstain channel lacks is
not replacing it.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import dask
import numpy as np
import xarray as xr
import zarr

from zarrstain.errors import ChannelExistsError, option
from zarrstain.io.channels import to_store_axes
from zarrstain.io.metadata import ImageMeta

__all__ = ["Pending", "WritePlan", "existing_state", "new_time_points", "same_content"]

logger = logging.getLogger(__name__)


@dataclass
class WritePlan:
    """One scene's checked write: where, what, and the record stored with it."""

    scene: str
    gpath: str
    meta: ImageMeta | None  # None: Pending (parsed when its batch is prepared)
    data: xr.DataArray | None  # None: Pending (prepared with its batch)
    labels: list[str]
    fingerprint: str | None
    record: dict[str, Any]
    time: slice | None  # the time points written (None: all)
    #: computes blocks of the predictions on its own (coarse tasks), or None: ``data`` only
    source: Any = None
    #: predictions (numpy or dask, t, c, z, y, x) → the stored dtype; ``data`` is its result
    convert: Any = None

    def with_meta(self, meta: ImageMeta) -> WritePlan:
        """This plan with the target's metadata (parsed when its batch is prepared)."""
        return dataclasses.replace(self, meta=meta)


@dataclass(frozen=True)
class Pending:
    """A prediction checked already and built when its batch is written (``write_predictions``
    with ``prepare``): what deciding whether a write is done needs, without its arrays."""

    labels: tuple[str, ...]
    #: None: not known before it is built (its target held none of its labels when planned;
    #: should it now, the check under the image's lock decides)
    fingerprint: str | None

    @classmethod
    def of(cls, scene: Any) -> Pending:
        """From a planned scene (its output labels and fingerprint)."""
        return cls(tuple(scene.outputs), scene.fingerprint)


def same_content(group: zarr.Group, plan: WritePlan, labels: list[str]) -> bool:
    """Whether the stored channels ``labels`` already hold exactly ``plan``'s data."""
    lvl = plan.meta.levels[0]
    cax = plan.meta.axis_names.index("c")
    stored = dask.array.from_array(group[lvl.path], chunks=lvl.chunks)
    existing = list(plan.meta.labels)
    checks = []
    for i, lab in enumerate(plan.labels):
        old = dask.array.take(stored, [existing.index(lab)], axis=cax)
        new = to_store_axes(plan.data.data[:, i : i + 1], plan.meta.axis_names)
        if old.shape != new.shape or old.dtype != new.dtype:
            return False
        same = old == new
        if np.issubdtype(old.dtype, np.floating):
            same |= dask.array.isnan(old) & dask.array.isnan(new)
        checks.append(same.all())
    return bool(all(dask.compute(*checks)))


def existing_state(group: zarr.Group, plan: WritePlan, overwrite: bool, where: str) -> bool:
    """Whether the write is already done; raises when labels exist and may not be replaced.

    Adding time points that a zarrstain channel does not hold yet (``plan.time``) is not
    replacing.
    """
    present = set(plan.meta.labels)
    clash = [lab for lab in plan.labels if lab in present]
    if not clash:
        return False
    if plan.data is None and not plan.fingerprint:
        return False  # Pending, unknown yet: decided when built (writers check under the lock)
    if len(clash) == len(plan.labels):
        done = (group.attrs.get("zarrstain") or {}).get("channels") or {}
        if plan.fingerprint:
            same = all((done.get(x) or {}).get("fingerprint") == plan.fingerprint for x in clash)
        else:  # with overwrite, comparing would compute the data twice: just write it
            same = not overwrite and same_content(group, plan, clash)
        if same:
            logger.info("%s: channels %s already hold this data; nothing to do", where, clash)
            return True
    if plan.time is not None and not overwrite and new_time_points(group, clash, plan.time):
        return False
    if not overwrite:
        raise ChannelExistsError(
            f"channel {clash[0]!r} already exists in {where}; pass "
            f"{option('overwrite=True', '--overwrite')} to replace it, or choose another "
            f"{option('output label', 'label (--output-label)')}"
        )
    return False


def new_time_points(group: zarr.Group, labels: list[str], time: slice) -> bool:
    """Whether every label is a partial zarrstain channel holding none of ``time``."""
    done = (group.attrs.get("zarrstain") or {}).get("channels") or {}
    wanted = set(range(time.start, time.stop))
    for label in labels:
        runs = (done.get(label) or {}).get("time_points")
        if not runs or wanted & {t for lo, hi in runs for t in range(lo, hi)}:
            return False
    return True
