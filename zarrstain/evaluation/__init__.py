"""Evaluation: metrics of predictions against acquired channels (:mod:`.metrics`), per-scene
reports (:mod:`.evaluate`), objects (:mod:`.segment`, :mod:`.objects`, :mod:`.fields`),
populations (:mod:`.distributions`), assays (:mod:`.assay`, :mod:`.plate`) and figures
(:mod:`.report`, :mod:`.figures`).
"""

from __future__ import annotations

from zarrstain._lazy import attach

_LAZY = {
    "Assay": ".plate",
    "Evaluation": ".evaluate",
    "Segmenter": ".segment",
}  # zarrstain.evaluate is the function; zarrstain.evaluation.evaluate its module

__all__ = list(_LAZY)

__getattr__, __dir__ = attach(__name__, _LAZY, submodules=True)
