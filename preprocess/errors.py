"""Exceptions of the preprocess package.

Each message says what was wrong, which value, and what to do about it::

    PreprocessError(Exception)
    +-- SlideError           a slide that is missing, corrupt, unsupported, or has no mpp
    +-- SegmentationError    nucleus segmentation that cannot run on its input
    +-- FeaturizerError      a backbone checkpoint that is missing or does not fit ResNet-18
    +-- SegmenterWeightsError  a HoVer-Net checkpoint that is missing or of a layout it cannot load
    +-- LabelStudioError     Label Studio is down, refused the key, or rejected a call
    +-- PretrainError        labeled-nuclei data for ``hali pretrain`` that is missing or malformed
    +-- SegmenterTrainingError  instance-mask data or options for ``hali train-segmenter`` that are unusable
"""


class PreprocessError(Exception):
    """Base class: preprocessing a slide cannot go on."""


class SlideError(PreprocessError):
    """A slide that cannot be read, or lacks metadata that preprocessing needs."""


class SegmentationError(PreprocessError):
    """Nucleus segmentation was given an input it cannot work on."""


class FeaturizerError(PreprocessError):
    """A backbone checkpoint that cannot be loaded into the featurizer."""


class SegmenterWeightsError(PreprocessError):
    """A HoVer-Net checkpoint that is missing, unreadable, or not in a layout the loader accepts."""


class LabelStudioError(PreprocessError):
    """A Label Studio call failed: server down, bad API key, or a rejected request."""


class PretrainError(PreprocessError):
    """Labeled-nuclei data for ``hali pretrain`` that is missing, empty or malformed."""


class SegmenterTrainingError(PreprocessError):
    """Instance-mask data or options for ``hali train-segmenter`` that are missing, malformed or inconsistent."""
