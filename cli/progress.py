"""Progress of long commands: a bar on a terminal, a line now and then in a batch job's log.

A click progress bar redraws one line, which a batch job's log file (no TTY) records as the
label alone until the end: minutes of silence. Without a TTY, :class:`Progress` writes a full
line at every tenth of the work and at least once a minute instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from zarrstain.progress import ProgressEvent

__all__ = ["LiveProgress", "Progress", "StageProgress"]

#: without a TTY, a line at least this often (seconds) ...
INTERVAL = 60.0
#: ... and whenever another tenth of the work is done
STEPS = 10


class Progress:
    """Progress of ``total`` units on stderr, shown from the first update on.

    Parameters
    ----------
    label
        What is counted, e.g. ``"training"`` or ``"predicting blocks"``.
    total
        Units of work.
    unit
        Name of one unit in the log lines (``"step"``, ``"block"``).
    quiet
        Show nothing.
    tty
        Draw a bar (default: whether stderr is a terminal).
    """

    def __init__(
        self,
        label: str,
        total: int,
        unit: str,
        *,
        quiet: bool = False,
        tty: bool | None = None,
    ) -> None:
        self.label, self.total, self.unit, self.quiet = label, max(int(total), 1), unit, quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar: Any = None
        self.done = 0
        self._start = self._last_time = time.monotonic()
        self._last_step = -1

    def to(self, done: int, item: dict | None = None) -> None:
        """Show ``done`` of ``total`` (and ``item``: a loss entry)."""
        self.done = done
        if self.quiet:
            return
        if not self.tty:
            self._line(done, item)
            return
        if self.bar is None:
            self.bar = click.progressbar(
                length=self.total,
                label=self.label,
                file=sys.stderr,
                show_pos=True,
                item_show_func=_entry_text,
            )
        self.bar.current_item = item or None
        self.bar.update(done - self.bar.pos)

    def __call__(self, event: ProgressEvent) -> None:
        """Show an event of the library's ``progress=`` callbacks (its total: known only once
        the work is planned, e.g. a run counted in epochs)."""
        if self.bar is None:
            self.total = max(int(event.total), 1)
        self.to(event.done, dict(event.info))

    def _line(self, done: int, item: dict | None) -> None:
        now = time.monotonic()
        step = done * STEPS // self.total
        if step == self._last_step and now - self._last_time < INTERVAL and done < self.total:
            return
        self._last_step, self._last_time = step, now
        text = _entry_text(item)
        click.echo(
            f"{self.label}: {self.unit} {done}/{self.total} ({100 * done // self.total}%)"
            + (f", {text}" if text else "")
            + f", {now - self._start:.0f} s",
            err=True,
        )

    def finish(self) -> None:
        """End the bar's line."""
        if self.bar is not None:
            self.bar.render_finish()


def _entry_text(entry: dict | None) -> str:
    if not entry:
        return ""
    text = f"loss {entry['loss']:.4f}"
    return text + (f", val r {entry['val_pcc']:.3f}" if "val_pcc" in entry else "")


class StageProgress:
    """A ``progress=`` callback with one :class:`Progress` per event stage.

    Parameters
    ----------
    quiet
        Show nothing.
    stages
        Stage name → (label, unit); a stage's display ends when the next one starts.
    """

    def __init__(self, quiet: bool, stages: dict[str, tuple[str, str]]) -> None:
        self.quiet, self.stages = quiet, stages
        self.shown: dict[str, Progress] = {}

    def __call__(self, event: ProgressEvent) -> None:
        if event.stage not in self.shown:
            self.finish()
            label, unit = self.stages[event.stage]
            self.shown[event.stage] = Progress(label, event.total, unit, quiet=self.quiet)
        self.shown[event.stage](event)

    def finish(self) -> None:
        """End every stage's bar."""
        for shown in self.shown.values():
            shown.finish()


#: without a TTY, a watch progress line at most this often (seconds)
LIVE_INTERVAL = 30.0


class LiveProgress:
    """Time points done, lag, latency and rate of a watch run, on one line of stderr (a
    terminal) or a line every :data:`LIVE_INTERVAL` seconds (a log)."""

    def __init__(self, quiet: bool, tty: bool | None = None) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty() if tty is None else tty
        self._last = 0.0
        self._drawn = False

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        info = event.info
        text = (
            f"watching: {event.done} time point(s) predicted, lag {int(info.get('lag', 0))}, "
            f"latency {info.get('latency', 0.0):.2f} s, {info.get('rate', 0.0):.2f} time points/s"
        )
        if self.tty:
            click.echo("\r" + text.ljust(78), nl=False, err=True)
            self._drawn = True
        elif not self._last or time.monotonic() - self._last >= LIVE_INTERVAL:
            self._last = time.monotonic()
            click.echo(text, err=True)

    def finish(self) -> None:
        """End the line."""
        if self._drawn:
            click.echo("", err=True)
