"""A training run's curves: TensorBoard scalars and a PNG, made from its history.

Both are drawn from the history a checkpoint holds and written into the model package with it
(``logs/`` and ``curves.png``), so the curves always match the weights beside them: a run
resumed from a checkpoint rewrites them from that checkpoint's history, and steps logged
after it by a crashed run never appear twice (TensorBoard's usual "overlapping runs" after a
restart).

The event file is written here, without TensorBoard or TensorFlow installed: a TFRecord of
``Event`` protocol buffers (``tensorflow/core/util/event.proto``), one ``simple_value`` scalar
each, the format TensorBoard has read unchanged since 2016. The tests read it back with
TensorBoard's own ``EventAccumulator``.
"""

from __future__ import annotations

import io
import math
import struct
import time
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["EVENTS", "PNG", "SCALARS", "Curves", "curves_png", "event_file", "scalars"]

#: where a package holds them
PNG = "curves.png"
EVENTS = "logs/events.out.tfevents.zarrstain"
#: history key → TensorBoard tag
SCALARS = {
    "loss": "train/loss",
    "d_loss": "train/critic_loss",
    "lr": "train/lr",
    "grad_norm": "train/grad_norm",
    "val_pcc": "val/pcc",
    "val_loss": "val/loss",
}


def scalars(history: Sequence[Mapping[str, float]]) -> dict[str, list[tuple[int, float]]]:
    """Tag → (step, value) of every finite scalar :data:`SCALARS` names in ``history``."""
    out: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        for key, tag in SCALARS.items():
            value = entry.get(key)
            if value is not None and math.isfinite(float(value)):
                out.setdefault(tag, []).append((int(entry["step"]), float(value)))
    return out


# --- TensorBoard's event file ------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = _crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _record(data: bytes) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    length = struct.pack("<Q", len(data))
    return length + _masked(length) + data + _masked(data)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(wall_time: float, step: int, body: bytes) -> bytes:
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + body


def _events(history: Sequence[Mapping[str, float]], wall: float) -> list[bytes]:
    """One TFRecord per scalar of ``history``, in order."""
    out = []
    for tag, points in scalars(history).items():
        for step, value in points:
            value_msg = _field(1, tag.encode()) + b"\x15" + struct.pack("<f", value)
            out.append(_record(_event(wall, step, _field(5, _field(1, value_msg)))))
    return out


def event_file(history: Sequence[Mapping[str, float]], wall_time: float | None = None) -> bytes:
    """The bytes of a TensorBoard event file holding ``history``'s scalars (:data:`SCALARS`)."""
    wall = time.time() if wall_time is None else wall_time
    header = _record(_event(wall, 0, _field(3, b"brain.Event:2")))  # the file's version
    return header + b"".join(_events(history, wall))


class Curves:
    """The files a checkpoint writes for its history: :data:`PNG` and :data:`EVENTS`.

    The events of entries already encoded are kept (a history only grows during a run), so
    each checkpoint encodes only the steps since the last one: the pure-Python CRC-32C of a
    50,000-step run is paid once, not at every checkpoint.
    """

    def __init__(self, steps: int) -> None:
        self.steps = steps
        self._records: list[bytes] = []
        self._encoded = 0

    def files(self, history: Sequence[Mapping[str, float]]) -> dict[str, bytes]:
        """File name in the package → its bytes."""
        if not self._records:
            self._records.append(event_file([]))
        self._records += _events(history[self._encoded :], time.time())
        self._encoded = len(history)
        return {PNG: curves_png(history, self.steps), EVENTS: b"".join(self._records)}


# --- the PNG -----------------------------------------------------------------------------

_PANEL = (560, 220)
_MARGIN = (58, 18, 12, 28)  # left, top, right, bottom
_COLOURS = {"train/loss": (31, 119, 180), "train/critic_loss": (140, 86, 75),
            "val/loss": (255, 127, 14), "val/pcc": (44, 160, 44),
            "train/lr": (148, 103, 189), "train/grad_norm": (127, 127, 127)}  # fmt: skip
_SMOOTHED = ("train/loss", "train/critic_loss")  # noisy per step; the others are not
#: panels: title, tags, logarithmic y
_PANELS = (
    ("loss", ("train/loss", "train/critic_loss", "val/loss"), True),
    ("validation Pearson r", ("val/pcc",), False),
    ("learning rate", ("train/lr",), True),
    ("gradient norm (before clipping)", ("train/grad_norm",), True),
)


def _smooth(values: np.ndarray, weight: float = 0.9) -> np.ndarray:
    """TensorBoard's smoothing: an exponential moving average, debiased."""
    out, avg = np.empty_like(values), 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out[i] = avg / (1 - weight ** (i + 1))
    return out


def _panel(title: str, series: dict[str, list[tuple[int, float]]], log: bool, steps: int):
    w, h = _PANEL
    left, top, right, bottom = _MARGIN
    image = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(image)
    values = np.concatenate([np.array([v for _, v in p], float) for p in series.values()])
    log = log and bool((values > 0).all())
    ys = np.log10(values) if log else values
    lo, hi = float(ys.min()), float(ys.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    x0, x1, y0, y1 = left, w - right, h - bottom, top

    def px(step: float, value: float) -> tuple[float, float]:
        v = math.log10(value) if log else value
        return (x0 + (x1 - x0) * step / max(steps, 1), y0 - (y0 - y1) * (v - lo) / (hi - lo))

    draw.rectangle((x0, y1, x1, y0), outline=(160, 160, 160))
    for frac in (0.0, 0.5, 1.0):
        v = lo + (hi - lo) * frac
        label = f"{10**v:.3g}" if log else f"{v:.3g}"
        y = y0 - (y0 - y1) * frac
        draw.text((2, y - 6), label, fill="black")
    draw.text((x0, y0 + 6), "0", fill="black")
    draw.text((x1 - 40, y0 + 6), f"{steps} steps", fill="black")
    draw.text((x0, 2), title + (" (log)" if log else ""), fill="black")
    for i, (tag, points) in enumerate(series.items()):
        colour = _COLOURS.get(tag, (0, 0, 0))
        st = np.array([s for s, _ in points], float)
        va = np.array([v for _, v in points], float)
        if len(points) > 20 and tag in _SMOOTHED:  # raw in pale, smoothed on top
            pale = tuple(int(c + (255 - c) * 0.7) for c in colour)
            draw.line([px(s, v) for s, v in zip(st, va, strict=True)], fill=pale, width=1)
            va = _smooth(va)
            if log:
                va = np.maximum(va, 1e-30)
        line = [px(s, v) for s, v in zip(st, va, strict=True)]
        if len(line) == 1:
            x, y = line[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        else:
            draw.line(line, fill=colour, width=2)
        draw.text((x1 - 150, y1 + 2 + 12 * i), tag, fill=colour)
    return image


def curves_png(history: Sequence[Mapping[str, float]], steps: int | None = None) -> bytes:
    """A PNG of ``history``: loss (training, critic, validation), validation r, learning rate
    and gradient norm, each in its panel when the run recorded it; ``steps``: the x axis's end
    (the run's length; default the last step)."""
    found = scalars(history)
    steps = steps or (int(history[-1]["step"]) if history else 1)
    panels = []
    for title, tags, log in _PANELS:
        series = {t: found[t] for t in tags if t in found}
        if series:
            panels.append(_panel(title, series, log, steps))
    if not panels:
        panels = [Image.new("RGB", _PANEL, "white")]
    cols = 2 if len(panels) > 1 else 1
    rows = -(-len(panels) // cols)
    sheet = Image.new("RGB", (_PANEL[0] * cols, _PANEL[1] * rows), "white")
    for i, panel in enumerate(panels):
        sheet.paste(panel, ((i % cols) * _PANEL[0], (i // cols) * _PANEL[1]))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    return buffer.getvalue()
