"""Segmentation networks; importing this package registers them with models.registry."""
from models.segmenters import fcn, segnet, unet  # noqa: F401  (imported to register)
