"""Exceptions of the preprocess package.

Each message says what was wrong, which value, and what to do about it, on one line (the CLI prints it
after ``hali <command>: error:`` and exits 2). ``preprocess.retry.RetriesExhausted`` is not part of the tree:
it only carries a retried call's last error to the adapter, which turns it into one of these::

    PreprocessError(Exception)
    +-- SlideError           a slide that is missing, empty, truncated, corrupt, unsupported, blank, has no
    |                        mpp, or fails to decode part way (the message names the level-0 region)
    +-- SegmentationError    nucleus segmentation that cannot run on its input
    +-- FeaturizerError      a backbone checkpoint that is unreadable (see weights_file.py) or does not fit ResNet-18
    +-- SegmenterWeightsError  a HoVer-Net checkpoint that is missing or of a layout it cannot load
    +-- LabelStudioError     Label Studio is down, refused the key, rejected a call, or stopped answering
    |                        mid-import after the retries (re-running the same command resumes)
    +-- PretrainError        labeled-nuclei data for ``hali pretrain`` that is missing or malformed
    +-- StorageError         output storage (local folder or S3) that cannot be read or written
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


class StorageError(PreprocessError):
    """Tiles or tables cannot be stored or read: bad S3 credentials, a missing bucket, an unreachable
    endpoint, a folder that is not writable, or an object that is not there."""


class SegmenterTrainingError(PreprocessError):
    """Instance-mask data or options for ``hali train-segmenter`` that are missing, malformed or inconsistent."""
