"""HoVer-Net nucleus segmentation (Graham et al. 2019), used instead of the classical segmenter when the
user gives weights: the architecture (:mod:`.model`), checkpoint loading (:mod:`.weights`), HV-map
post-processing (:mod:`.postprocess`) and the window segmenter (:mod:`.segmenter`)."""

from preprocess.nuclei.hovernet.model import HoVerNet
from preprocess.nuclei.hovernet.segmenter import HoVerNetSegmenter
from preprocess.nuclei.hovernet.weights import load_hovernet

__all__ = ["HoVerNet", "HoVerNetSegmenter", "load_hovernet"]
