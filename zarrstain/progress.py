"""Progress of long work: one callback convention, and model blocks counted on any scheduler.

Every long call of the library (:func:`zarrstain.train`, ``PredictionPlan.run``,
:func:`zarrstain.demo.run_demo`) takes ``progress=``, a callable that receives one
:class:`ProgressEvent` (stage, done, total, info) each time a unit of work finishes. One
argument, not several positional ones, so later fields never break a user's callback.

Each model block reports itself when it finishes (:func:`block_done`, called by
:func:`zarrstain.engine.tiling.run_tiled`'s block function) rather than being recognised by its task
key: dask's graph optimization fuses the model layer into its neighbours and renames the keys.
In the calling process the report goes to the active :class:`BlockProgress`; on a
``dask.distributed`` worker it is logged as an event on the ``zarrstain-blocks`` topic, which
:func:`cluster_progress` follows from the client.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "PREDICT_PREFIX",
    "TOPIC",
    "BlockProgress",
    "ProgressCallback",
    "ProgressEvent",
    "block_done",
    "cluster_progress",
]

#: dask key prefix of the tasks that run the model (see :func:`zarrstain.engine.tiling.run_tiled`)
PREDICT_PREFIX = "zarrstain-predict-"
#: the distributed event topic of finished model blocks
TOPIC = "zarrstain-blocks"

_listeners: list[Callable[[int], Any]] = []


@dataclass(frozen=True)
class ProgressEvent:
    """One report of long work, passed to every ``progress=`` callback of the library.

    Attributes
    ----------
    stage
        What is counted: ``"train"`` (optimizer steps), ``"predict"`` (model blocks) or
        ``"evaluate"`` (fields of an object-level evaluation).
    done
        Units finished so far in this stage (cumulative, 1 on the first report).
    total
        Units the stage plans (a resumed prediction may end below it: blocks already
        written are not run again).
    info
        Stage-specific values: for ``"train"`` the step's ``loss`` (and ``val_pcc`` after a
        validation); empty for ``"predict"``.

    Examples
    --------
    >>> def show(event):
    ...     print(f"{event.stage}: {event.done}/{event.total}")
    >>> show(ProgressEvent("predict", 3, 12))
    predict: 3/12
    """

    stage: str
    done: int
    total: int
    info: Mapping[str, float] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """``done / total`` (1.0 for an empty stage)."""
        return self.done / self.total if self.total else 1.0


#: the type of every ``progress=`` parameter
ProgressCallback = Callable[[ProgressEvent], Any]


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
    """Counts the model blocks that finish in this process while active, and reports them.

    Parameters
    ----------
    progress
        Called with a ``"predict"`` :class:`ProgressEvent` per finished block, from a
        scheduler thread (or, fed by :func:`cluster_progress`, the client's event loop).
    total
        The blocks planned (the events' ``total``).
    stage
        The events' stage: ``"predict"`` (model blocks), ``"evaluate"`` (fields evaluated).

    Examples
    --------
    >>> with BlockProgress(print, total=4) as blocks:  # doctest: +SKIP
    ...     zarrstain.write_channels(store, prediction)
    >>> blocks.done  # doctest: +SKIP
    """

    def __init__(
        self, progress: ProgressCallback | None = None, total: int = 0, stage: str = "predict"
    ) -> None:
        self._progress = progress
        self.total = total
        self.stage = stage
        self._lock = threading.Lock()
        self.done = 0

    def add(self, n: int = 1) -> None:
        """Count ``n`` finished blocks and report the new total."""
        with self._lock:
            self.done += n
            done = self.done
        if self._progress is not None:
            self._progress(ProgressEvent(self.stage, done, self.total))

    def __enter__(self) -> BlockProgress:
        _listeners.append(self.add)
        return self

    def __exit__(self, *exc: object) -> None:
        _listeners.remove(self.add)


@contextlib.contextmanager
def cluster_progress(client: Any, update: Callable[[int], Any]) -> Iterator[None]:
    """Call ``update(1)`` for each model block the workers of ``client``'s cluster finish.

    ``update`` is typically :meth:`BlockProgress.add`, which turns counts into events.
    """
    client.subscribe_topic(TOPIC, lambda event: update(1))
    try:
        yield
    finally:
        client.unsubscribe_topic(TOPIC)
