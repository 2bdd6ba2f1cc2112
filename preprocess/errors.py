"""Exceptions of the preprocess package.

Each message says what was wrong, which value, and what to do about it, on one line (the CLI prints it
after ``hali <command>: error:`` and exits 2). ``adapters.retry.RetriesExhausted`` is not part of the tree:
it only carries a retried call's last error to the adapter, which turns it into one of these::

    PreprocessError(Exception)
    +-- SegmentationError    nucleus segmentation that cannot run on its input
    +-- FeaturizerError      a backbone checkpoint that is unreadable (see weights_file.py) or does not fit ResNet-18
    +-- SegmenterWeightsError  a HoVer-Net checkpoint that is missing or of a layout it cannot load
    +-- PretrainError        labeled-nuclei data for ``hali pretrain`` that is missing or malformed
    +-- SegmenterTrainingError  instance-mask data or options for ``hali train-segmenter`` that are unusable
    +-- QueueError           the Redis of ``hali preprocess --queue`` / ``--status`` is unreachable
"""


class PreprocessError(Exception):
    """Base class: preprocessing a slide cannot go on."""


class SegmentationError(PreprocessError):
    """Nucleus segmentation was given an input it cannot work on."""


class FeaturizerError(PreprocessError):
    """A backbone checkpoint that cannot be loaded into the featurizer."""


class SegmenterWeightsError(PreprocessError):
    """A HoVer-Net checkpoint that is missing, unreadable, or not in a layout the loader accepts."""


class PretrainError(PreprocessError):
    """Labeled-nuclei data for ``hali pretrain`` that is missing, empty or malformed."""


class SegmenterTrainingError(PreprocessError):
    """Instance-mask data or options for ``hali train-segmenter`` that are missing, malformed or inconsistent."""


class QueueError(PreprocessError):
    """The Redis that holds the preprocessing queue and its progress cannot be reached."""
