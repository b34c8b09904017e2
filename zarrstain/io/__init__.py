"""Reading and writing OME-Zarr stores (NGFF 0.4 on zarr v2, 0.5 on zarr v3)."""

from zarrstain.io.read import open_image, open_scenes
from zarrstain.io.write import write_channels

__all__ = ["open_image", "open_scenes", "write_channels"]
