"""``zarrstain.watch``: stain a time-lapse while the microscope writes it.

A loop over polls of the source store (:func:`zarrstain.live.source.scan`): every time point
that is complete (decided from the store, :mod:`zarrstain.io.growth`) and not yet predicted is
predicted with :func:`zarrstain.predict`, exactly as ``zarrstain predict`` tiles it, and
appended to an output store that grows with the source (:mod:`zarrstain.live.output`), or
written in place where the writer allocated the whole acquisition up front
(:mod:`zarrstain.live.follower`).

The queue is the store itself: time points wait on disk, never in memory, and at most
``max_batch`` of one scene are read at once, so a model slower than the acquisition makes the
lag grow (with a warning naming both rates) but never the memory, and nothing is dropped.
When it falls behind, ``watch`` catches up in batches of up to ``max_batch`` time points.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from zarrstain.engine.options import PredictOptions, merge_options
from zarrstain.errors import (
    ParameterError,
    UnsupportedError,
    option,
)
from zarrstain.io.store import StoreLike, describe_store, store_location
from zarrstain.live.follower import Follower, WatchResult
from zarrstain.live.statistics import LiveStatistics
from zarrstain.models import Model, load_model, relabel
from zarrstain.progress import ProgressCallback

__all__ = ["WatchResult", "watch"]


def watch(
    store: StoreLike,
    model: Model | str,
    *,
    out: StoreLike | None = None,
    scenes: str | Sequence[str] | None = None,
    statistics: str | LiveStatistics = "frame",
    until: int | None = None,
    idle_timeout: float | None = None,
    poll: float = 0.25,
    max_batch: int = 8,
    max_lag: int = 8,
    latency_target: float | None = None,
    output_label: str | None = None,
    dtype: Any = None,
    halo: str | int = "auto",
    normalization: str | None = "model",
    input_channels: Sequence[str] | Mapping[str, str] | str | None = None,
    device: str = "auto",
    precision: str = "float32",
    options: Mapping[str, Any] | None = None,
    predict_options: PredictOptions | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
    storage_options: dict[str, Any] | None = None,
) -> WatchResult:
    """Follow a store another process is writing and predict each time point once complete.

    Parameters
    ----------
    store
        The OME-Zarr store being acquired (image or plate, NGFF 0.4 or 0.5; an acquire-zarr
        image before its writer has written the OME metadata too).
    model
        A :class:`~zarrstain.Model` or a path for :func:`~zarrstain.load_model`.
    out
        The output store: it mirrors the source's layout and its time axis grows with the
        predictions (only complete predicted time points are ever visible). Restarting with
        the same ``out`` continues where the last run stopped. None: in place, where the
        store's layout allows it (see Notes).
    scenes
        Scene ids to follow (default: all).
    statistics
        Normalization statistics over time: ``"frame"`` (each time point its own, as
        ``zarrstain predict``), ``"first:N"``, ``"running"`` or ``"fixed:OFFSET,SCALE"``
        (see :mod:`zarrstain.live.statistics`).
    until
        End once every scene has this many time points predicted.
    idle_timeout
        End after this many seconds without a new complete time point (and nothing left to
        predict). None: wait for ever.
    poll
        Seconds between looks at the store when there is nothing to do.
    max_batch
        Most time points of one scene predicted together (catching up after a lag).
    latency_target
        Seconds from a time point complete to its prediction readable: warn when a time point
        takes longer (the model or the machine is too slow for the stain to be live).
    max_lag
        Warn when more time points than this wait to be predicted (the model is slower than
        the acquisition).
    output_label, dtype
        The predicted channel's label (single-output models) and the output dtype (default
        float32 in ``out``; in place, the store's, predictions in the target's units rounded).
    halo, normalization, input_channels, device, precision, options, predict_options
        As in :func:`zarrstain.predict`.
    progress
        Called with a ``"watch"`` :class:`~zarrstain.progress.ProgressEvent` after every
        batch: ``done`` = time points predicted by this run, ``total`` = those plus the ones
        waiting, ``info`` = ``lag`` (time points waiting), ``latency`` (s, the last time
        point's) and ``rate`` (time points per second predicted).
    stop
        A :class:`threading.Event` that ends the run after the batch being written.
    storage_options
        fsspec options for URLs.

    Returns
    -------
    WatchResult

    Raises
    ------
    ZarrstainError
        A bad option, a model that cannot read the scene, an output holding other
        predictions; before anything is written.

    Notes
    -----
    In place, the predicted channel is added beside the acquired ones as ``zarrstain
    predict`` adds it (the provenance's ``time_points`` say which are written). That is safe
    only when the writer never rewrites the arrays' metadata: when it allocated the whole
    acquisition up front (iohub's ``create_zeros``, then each time point written into it),
    so ``until`` must be given and the arrays must already hold that many time points; a
    streaming writer that appends time points rewrites the metadata with its own channel
    count, and would drop the channel: such stores are refused (use ``out``).
    """
    if out is not None and store_location(out) == store_location(store):
        raise ParameterError(
            f"{option('out=', '--out')} is the store being watched; leave it out to write in "
            "place (see zarrstain.watch's notes) or choose a new store"
        )
    if out is None and until is None:
        raise UnsupportedError(
            f"watching {describe_store(store)} in place needs the acquisition's length "
            f"({option('until=N', '--until N')}), which its arrays must already hold; or write "
            f"to a store that grows with it ({option('out=...', '--out')})"
        )
    _check_positive(until=until, max_batch=max_batch, max_lag=max_lag)
    for name, value in (
        ("poll", poll), ("idle_timeout", idle_timeout), ("latency_target", latency_target),
    ):  # fmt: skip
        if value is not None and not value > 0:
            raise ParameterError(f"{name}={value!r} must be a positive number of seconds")
    if not isinstance(model, Model):
        model = load_model(model, output_label=output_label)
    elif output_label is not None:
        model = relabel(model, output_label)
    o = merge_options(
        predict_options, PredictOptions, "predict_options", halo=halo, normalize=normalization,
        input_channels=input_channels, device=device, precision=precision, options=options,
    )  # fmt: skip
    follower = Follower(
        store, model, out, LiveStatistics.parse(statistics), o,
        None if dtype is None else np.dtype(dtype),
        [scenes] if isinstance(scenes, str) else (list(scenes) if scenes else None),
        storage_options, until, latency_target,
    )  # fmt: skip
    return follower.run(idle_timeout, poll, max_batch, max_lag, progress, stop)


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise ParameterError(f"{name}={value!r} must be a positive integer")
