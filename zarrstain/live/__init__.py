"""Stain a time-lapse while it is acquired: follow a growing store, predict each new time point.

:func:`watch` follows a store another process writes (acquire-zarr, ome-zarr-py, iohub,
zarr-python) and appends the predictions of every complete time point to an output store
that grows with it; :func:`time_statistics` gives the normalization statistics of a mode
(``frame``, ``first:N``, ``running``, ``fixed``) for :func:`zarrstain.predict` on a finished
acquisition, so that it reproduces what ``watch`` wrote live.
"""

from zarrstain.live.statistics import STATISTICS_MODES, LiveStatistics, time_statistics
from zarrstain.live.watch import WatchResult, watch

__all__ = ["STATISTICS_MODES", "LiveStatistics", "WatchResult", "time_statistics", "watch"]
