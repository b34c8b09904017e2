"""Progress of model blocks, on dask's local schedulers and on distributed clusters.

Each model block reports itself when it finishes (:func:`block_done`, called by
:func:`zarrstain.tiling.run_tiled`'s block function) rather than being recognised by its task
key: dask's graph optimization fuses the model layer into its neighbours and renames the keys.
In the calling process the report goes to the active :class:`BlockProgress`; on a
``dask.distributed`` worker it is logged as an event on the ``zarrstain-blocks`` topic, which
:func:`cluster_progress` follows from the client.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["PREDICT_PREFIX", "TOPIC", "BlockProgress", "block_done", "cluster_progress"]

#: dask key prefix of the tasks that run the model (see :func:`zarrstain.tiling.run_tiled`)
PREDICT_PREFIX = "zarrstain-predict-"
#: the distributed event topic of finished model blocks
TOPIC = "zarrstain-blocks"

_listeners: list[Callable[[int], Any]] = []


def block_done() -> None:
    """Report one finished model block (to local listeners, or as a worker event)."""
    for listener in list(_listeners):
        listener(1)
    if "distributed" in sys.modules:  # only a worker of a running cluster can log events
        from distributed import get_worker

        try:
            worker = get_worker()
        except ValueError:
            return
        worker.log_event(TOPIC, 1)


class BlockProgress:
    """Calls ``update(1)`` each time a model block finishes in this process, while active.

    Parameters
    ----------
    update
        Called with the number of blocks just finished (1), from a scheduler thread.

    Examples
    --------
    >>> with BlockProgress(bar.update) as blocks:  # doctest: +SKIP
    ...     zarrstain.write_channels(store, prediction)
    >>> blocks.done  # doctest: +SKIP
    """

    def __init__(self, update: Callable[[int], Any] | None = None) -> None:
        self._update = update
        self._lock = threading.Lock()
        self.done = 0

    def _count(self, n: int) -> None:
        with self._lock:
            self.done += n
        if self._update is not None:
            self._update(n)

    def __enter__(self) -> BlockProgress:
        _listeners.append(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        _listeners.remove(self._count)


@contextlib.contextmanager
def cluster_progress(client: Any, update: Callable[[int], Any]) -> Iterator[None]:
    """Call ``update(1)`` for each model block the workers of ``client``'s cluster finish."""
    client.subscribe_topic(TOPIC, lambda event: update(1))
    try:
        yield
    finally:
        client.unsubscribe_topic(TOPIC)
