"""Time ranges of a prediction: ``--time T0:T1`` parsed and checked against each scene."""

from __future__ import annotations

from zarrstain.errors import ParameterError, option

__all__ = ["parse_time", "time_range"]


def parse_time(spec: str | slice | int | None, n_t: int, scene: str | None = None) -> slice | None:
    """``"T0:T1"`` (either end optional, stop exclusive), ``"T"`` or a slice → a slice of a scene.

    Parameters
    ----------
    spec
        The time points asked for; None for all.
    n_t
        The scene's number of time points. An open stop (``"1:"``) is the scene's end; a stop
        beyond it is cut to it, so one ``--time`` serves the scenes of a plate however long
        each is (:func:`plan_prediction` warns about the scenes cut).
    scene
        The scene id, for messages.

    Raises
    ------
    ParameterError
        A malformed or empty range, or one that starts after the scene's last time point.
    """
    if spec is None:
        return None
    start, stop = time_range(spec)
    name = "the image" if not scene else f"scene {scene!r}"
    if start >= n_t:
        raise ParameterError(
            f"time {_range_text(start, stop)} is outside 0:{n_t}: {name} has {n_t} time "
            f"point(s); choose {option('time=', '--time')} within 0:{n_t}"
            + (f" or leave the scene out ({option('scenes=', '--scene')})" if scene else "")
        )
    return slice(start, n_t if stop is None else min(stop, n_t))


def time_range(spec: str | slice | int) -> tuple[int, int | None]:
    """``spec`` as (start, stop or None for open), checked for syntax and emptiness."""
    if isinstance(spec, int):
        spec = slice(spec, spec + 1)
    if isinstance(spec, str):
        parts = spec.strip().split(":")
        try:
            if len(parts) == 1:
                spec = slice(int(parts[0]), int(parts[0]) + 1)
            elif len(parts) == 2:
                spec = slice(int(parts[0]) if parts[0] else 0, int(parts[1]) if parts[1] else None)
            else:
                raise ValueError
        except ValueError:
            raise ParameterError(
                f"time {spec!r} is not T or T0:T1 (e.g. 0:5, stop exclusive; 3: for 3 to the end)"
            ) from None
    if spec.step not in (None, 1):
        raise ParameterError(f"time {spec!r} has a step; use a contiguous range T0:T1")
    start = 0 if spec.start is None else int(spec.start)
    stop = None if spec.stop is None else int(spec.stop)
    if start < 0 or (stop is not None and stop < 0):
        raise ParameterError(
            f"time {_range_text(start, stop)} has a negative index; time points count from 0"
        )
    if stop is not None and start >= stop:
        raise ParameterError(
            f"time {_range_text(start, stop)} is empty: the start must be less than the stop, "
            f"which is exclusive ({start}:{start + 1} is time point {start} alone)"
        )
    return start, stop


def _range_text(start: int, stop: int | None) -> str:
    return f"{start}:{'' if stop is None else stop}"
