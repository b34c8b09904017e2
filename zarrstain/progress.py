"""Progress of model blocks on dask's local schedulers (the threaded default and ``sync``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dask.callbacks import Callback

__all__ = ["PREDICT_PREFIX", "BlockProgress"]

#: dask key prefix of the tasks that run the model (see :func:`zarrstain.tiling.run_tiled`)
PREDICT_PREFIX = "zarrstain-predict-"


class BlockProgress(Callback):
    """Calls ``update(1)`` each time a block of the model finishes.

    Parameters
    ----------
    update
        Called with the number of blocks just finished (1), from a scheduler thread.

    Examples
    --------
    >>> with BlockProgress(bar.update):  # doctest: +SKIP
    ...     zarrstain.write_channels(store, prediction)
    """

    def __init__(self, update: Callable[[int], Any]) -> None:
        super().__init__()
        self._update = update
        self.done = 0

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        name = key[0] if isinstance(key, tuple) else key
        if isinstance(name, str) and name.startswith(PREDICT_PREFIX):
            self.done += 1
            self._update(1)
