"""Evaluation: metrics of predictions against acquired channels (:mod:`.metrics`), per-scene
reports (:mod:`.evaluate`) and figure panels (:mod:`.report`).
"""
