"""segft: how well a segmentation model generalizes to a second dataset, and how much fine-tuning helps."""

__version__ = "0.1.0"
