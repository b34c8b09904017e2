"""Normalization statistics over time for a stream: per frame, the first N, running, or fixed.

``zarrstain predict`` normalizes every (t, c) volume with its own statistics (``"frame"``):
each time point is complete on its own, so a live stream gets exactly what a finished
acquisition gets. Some uses want the normalization tied across time instead; every mode here
is *causal* (time point t depends on time points 0…t only), so ``watch`` never waits for data
that is not acquired yet, and the same function applied to the finished acquisition gives the
same numbers (:func:`time_statistics`):

``frame``
    Each time point its own offset and scale (the default, ``predict``'s). Slow drifts of the
    illumination or of focus are normalized away; so is a real change of the whole field's
    brightness.
``first:N``
    The mean of the per-frame offsets and scales of the first N time points, frozen from
    time point N on (before it, the mean of those acquired so far). Intensities stay
    comparable across the time-lapse: bleaching shows as dimming predictions.
``running``
    The mean over every time point so far (0…t): starts like ``frame`` and settles; nothing
    is frozen, so late changes still move it, slowly.
``fixed:OFFSET,SCALE``
    These values for every time point and input channel (``;`` between channels for one
    pair per channel), e.g. measured once on a calibration acquisition. Nothing is read from
    the stream; the predictions are in the units the values define.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from zarrstain.errors import ParameterError, option

__all__ = ["STATISTICS_MODES", "LiveStatistics", "time_statistics"]

#: the modes, as ``--statistics`` spells them
STATISTICS_MODES = ("frame", "first:N", "running", "fixed:OFFSET,SCALE")


@dataclass(frozen=True)
class LiveStatistics:
    """A parsed statistics mode (see the module docstring).

    Attributes
    ----------
    mode
        ``"frame"``, ``"first"``, ``"running"`` or ``"fixed"``.
    n
        ``first``'s number of time points.
    values
        ``fixed``'s (offset, scale) per input channel (one pair: every channel).
    """

    mode: str = "frame"
    n: int = 0
    values: tuple[tuple[float, float], ...] = ()

    @classmethod
    def parse(cls, spec: str | LiveStatistics | None) -> LiveStatistics:
        """``"frame"``, ``"first:N"``, ``"running"`` or ``"fixed:O,S[;O,S...]"``.

        Raises
        ------
        ParameterError
            Any other text, naming the forms that work.
        """
        if isinstance(spec, LiveStatistics):
            return spec
        text = "frame" if spec is None else str(spec).strip()
        head, _, rest = text.partition(":")
        try:
            if head in ("frame", "running") and not rest:
                return cls(head)
            if head == "first" and rest:
                n = int(rest)
                if n < 1:
                    raise ValueError
                return cls("first", n=n)
            if head == "fixed" and rest:
                pairs = tuple(
                    (float(o), float(s))
                    for o, s in (p.split(",") for p in rest.split(";") if p.strip())
                )
                if not pairs or any(not np.isfinite(p).all() or p[1] <= 0 for p in pairs):
                    raise ValueError
                return cls("fixed", values=pairs)
        except ValueError:
            pass
        raise ParameterError(
            f"statistics {text!r} is not one of {', '.join(STATISTICS_MODES)} (N ≥ 1 time "
            f"points; SCALE > 0; ';' between channels); set {option('statistics=', '--statistics')}"
        )

    @property
    def spec(self) -> str:
        """The mode as text (what provenance records)."""
        if self.mode == "first":
            return f"first:{self.n}"
        if self.mode == "fixed":
            return "fixed:" + ";".join(f"{o:g},{s:g}" for o, s in self.values)
        return self.mode

    @property
    def reads_frames(self) -> bool:
        """Whether the mode needs the per-frame statistics of the stream."""
        return self.mode != "fixed"

    @property
    def history(self) -> bool:
        """Whether time point t needs the statistics of earlier time points too."""
        return self.mode in ("first", "running")


def time_statistics(
    frames: xr.Dataset, spec: str | LiveStatistics, n_channels: int | None = None
) -> xr.Dataset:
    """The statistics of every time point under a mode, from per-frame statistics.

    Parameters
    ----------
    frames
        :func:`zarrstain.normalization_stats` of time points 0…T−1 (``offset``/``scale``
        over (t, c), computed); for ``fixed`` only its coordinates and attributes are used.
    spec
        The mode (:class:`LiveStatistics` or its text).
    n_channels
        Input channels (default: those of ``frames``).

    Returns
    -------
    xarray.Dataset
        Like ``frames``, each time point's offset and scale replaced by the mode's; its attrs
        record the mode under ``time_statistics``. Time point t depends on 0…t only, so a
        prefix of ``frames`` gives the same values for its time points.

    Examples
    --------
    Pass the result to :func:`zarrstain.predict` (``stats=``) to predict a finished
    acquisition as ``zarrstain watch --statistics running`` predicted it live.
    """
    mode = LiveStatistics.parse(spec)
    offset = np.asarray(frames["offset"].values, np.float64)
    scale = np.asarray(frames["scale"].values, np.float64)
    n_t = offset.shape[0]
    if mode.mode == "fixed":
        c = offset.shape[1] if n_channels is None else n_channels
        pairs = mode.values * c if len(mode.values) == 1 else mode.values
        if len(pairs) != c:
            raise ParameterError(
                f"statistics {mode.spec!r} gives {len(mode.values)} (offset, scale) pairs for "
                f"{c} input channels; give one pair, or one per channel separated by ';'"
            )
        values = np.array(pairs, np.float64)
        offset = np.broadcast_to(values[:, 0], offset.shape).copy()
        scale = np.broadcast_to(values[:, 1], scale.shape).copy()
    elif mode.history:
        # the mean over time points 0..min(t, N-1): cumulative sums in time order, so a
        # prefix of the frames gives the same numbers (watch computes it time point by time point)
        count = np.arange(1, n_t + 1, dtype=np.float64)[:, None]
        mean_offset = np.cumsum(offset, axis=0) / count
        mean_scale = np.cumsum(scale, axis=0) / count
        if mode.mode == "first" and n_t > mode.n:
            mean_offset[mode.n :] = mean_offset[mode.n - 1]
            mean_scale[mode.n :] = mean_scale[mode.n - 1]
        offset, scale = mean_offset, mean_scale
    out = frames.copy(data={"offset": offset, "scale": scale})
    out.attrs = {**frames.attrs, "time_statistics": mode.spec}
    return out
