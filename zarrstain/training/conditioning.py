"""Class labels of training scenes, for class-conditional models."""

from __future__ import annotations

from typing import Any

from zarrstain.classes import scene_class
from zarrstain.errors import ParameterError, option

__all__ = ["scene_classes"]


def scene_classes(config: Any, scenes: dict[str, Any]) -> dict[str, str] | None:
    """Scene id → class label from the config's ``classes`` / ``class_key``; None without.

    Raises
    ------
    ParameterError
        A scene without a class, or a single class (nothing for the model to tell apart).
    """
    if config.classes is None and config.class_key is None:
        return None
    labels = {sid: scene_class(config.classes, im, config.class_key) for sid, im in scenes.items()}
    missing = [sid for sid, label in labels.items() if label is None]
    if missing:
        where = config.classes if config.classes is not None else f"attribute {config.class_key!r}"
        raise ParameterError(
            f"{len(missing)} training scene(s) have no class in {where}: "
            f"{', '.join(missing[:5])}; add them to the class map or leave them out "
            f"({option('scenes=', '--scene')})"
        )
    return labels
