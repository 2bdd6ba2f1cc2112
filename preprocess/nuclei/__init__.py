"""Slide -> cells: tissue detection, nucleus segmentation (classical, or HoVer-Net with weights) and its metrics."""
