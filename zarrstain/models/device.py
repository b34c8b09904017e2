"""Device names: the one rule for what ``device=`` / ``--device`` accept (no torch here)."""

from __future__ import annotations

import re
from typing import Any

from zarrstain.errors import ParameterError, option

__all__ = ["check_device"]

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_device(device: Any) -> str:
    """``device`` when it names a device zarrstain runs models on: ``auto`` (a GPU when this
    process sees one), ``cpu``, ``cuda`` or ``cuda:N`` (the GPU of index N).

    Raises
    ------
    ParameterError
        Anything else, naming the option.
    """
    if not isinstance(device, str) or not _DEVICE.match(device):
        flag = option("device", "--device")
        raise ParameterError(f"{flag} must be auto, cpu, cuda or cuda:N, not {device!r}")
    return device
