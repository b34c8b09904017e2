"""Choosing the model a run keeps: the best checkpoint by a validation metric, early stopping.

With ``monitor`` (``"val_pcc"``, higher is better; ``"val_loss"``, lower is better) the model
package holds the weights of the best validation so far (what ``predict`` loads), while the
training state keeps the latest ones to resume from. ``patience``: stop once that many
validations in a row have not improved on the best by more than ``min_delta``
(Lightning's ``EarlyStopping``). Both are functions of the history, so a resumed run chooses
and stops exactly as an uninterrupted one.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MONITORS", "Selection"]

#: metric → whether higher is better
MONITORS = {"val_pcc": True, "val_loss": False}


class Selection:
    """The best validation of a run so far, its weights, and whether to stop.

    Parameters
    ----------
    monitor
        A key of :data:`MONITORS`, or None: the package holds the latest weights.
    patience
        Validations without improvement before stopping (None: never stop early).
    min_delta
        How much better than the best a validation must be to count as an improvement.
    """

    def __init__(
        self, monitor: str | None, patience: int | None = None, min_delta: float = 0.0
    ) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, float(min_delta)
        self.best_step: int | None = None
        self.best_value: float | None = None
        self.weights: dict[str, Any] | None = None  # the best's state dict, on the CPU

    def _better(self, value: float) -> bool:
        if self.best_value is None:
            return True
        if MONITORS[self.monitor]:
            return value > self.best_value + self.min_delta
        return value < self.best_value - self.min_delta

    def update(self, entry: Mapping[str, float], module: Any = None) -> bool:
        """Take a history entry (and the weights it validated); whether it is the new best."""
        if self.monitor is None or self.monitor not in entry:
            return False
        value = float(entry[self.monitor])
        if not self._better(value):
            return False
        self.best_step, self.best_value = int(entry["step"]), value
        if module is not None:
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in
                            module.state_dict().items()}  # fmt: skip
        return True

    def replay(self, history: Sequence[Mapping[str, float]], weights: Any = None) -> None:
        """The best of a resumed run's history; ``weights``: the package's (the best's)."""
        for entry in history:
            self.update(entry)
        if self.best_step is not None and weights is not None:
            self.weights = copy.deepcopy(weights)

    def stop(self, history: Sequence[Mapping[str, float]]) -> bool:
        """Whether ``patience`` validations since the best have not improved on it."""
        if self.patience is None or self.best_step is None:
            return False
        since = [h for h in history if self.monitor in h and h["step"] > self.best_step]
        return len(since) >= self.patience

    def describe(self) -> dict[str, Any]:
        """For the card: the metric, the best step and its value."""
        if self.monitor is None or self.best_step is None:
            return {}
        return {"monitor": self.monitor, "step": self.best_step, "value": self.best_value}
