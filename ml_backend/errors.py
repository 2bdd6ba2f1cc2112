"""Exceptions of the ml_backend package::

    BackendError(Exception)
    +-- WebhookError        a webhook body that is not what Label Studio sends (HTTP 400/422)
    +-- UnknownCellError    a cell id that no preprocessed slide holds (HTTP 422)
    +-- NotPreprocessedError  a task whose slide has no cell table in HALI_DATA_DIR (HTTP 409)
    +-- ModelStoreError     a model version file that is missing, corrupt or would be overwritten (HTTP 503;
                            defined in ml_backend/model/store.py)
"""


class BackendError(Exception):
    """Base class of the backend's own errors."""


class WebhookError(BackendError):
    """A webhook body that does not follow Label Studio's payload."""


class UnknownCellError(BackendError, KeyError):
    """A cell id that is in no cell table."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class NotPreprocessedError(BackendError):
    """A task refers to a slide that `hali preprocess` has not written into this data dir."""
