"""Uncertainty: conformal calibration of interval heads (:mod:`.calibrate`, :mod:`.conformal`)
and coverage curves (:mod:`.coverage`).
"""
