"""spineloss: find the best loss function for 3D segmentation."""

__version__ = "0.1.0"
