"""The engine: inputs selected and normalized, a model tiled over dask, plans of whole stores,
and their run (predict → tiling → planner → pipeline). It names no model family: families
talk to it through :mod:`zarrstain.models.architecture` and their option schemas.
"""
