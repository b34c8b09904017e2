"""Model files made by other tools, read by :func:`zarrstain.load_model`: TorchScript and
bioimage.io packages (each a :class:`~zarrstain.models.ModelFormat` plug-in).
"""
